"""py-spy flamegraph of our server under load, and the hottest frames read back from the SVG."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

_RECT = re.compile(
    r'<g><title>(?P<title>[^<]*)</title><rect x="(?P<x>[\d.]+)%" y="(?P<y>[\d.]+)" '
    r'width="(?P<w>[\d.]+)%"'
)
_SAMPLES = re.compile(r"^(?P<name>.*) \((?P<n>[\d,]+) samples?, (?P<pct>[\d.]+)%\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


class Recorder:
    """Runs ``py-spy record`` against a pid in the background (pinned to the driver CPUs)."""

    def __init__(
        self, pid: int, out: Path, duration: int, cpus: list[int], *, rate: int = 250
    ):
        self.out = out
        exe = py_spy()
        self.command: list[str] = [
            exe or "py-spy", "record", "-o", str(out), "--pid", str(pid),
            "--duration", str(duration), "--rate", str(rate), "--format", "flamegraph",
        ]
        from bench.servers import nice_prefix  # noqa: PLC0415

        if cpus and len(cpus) < (os.cpu_count() or 1) and shutil.which("taskset"):
            self.command = ["taskset", "-c", ",".join(map(str, cpus)), *self.command]
        self.command = [*nice_prefix(), *self.command]
        self.error: str | None = None if exe else "py-spy is not installed"
        self.output = ""
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.error:
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            proc = subprocess.run(self.command, capture_output=True, text=True, timeout=300,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.error = f"py-spy could not run: {exc}"
            return
        self.output = (proc.stdout + proc.stderr)[-2000:]
        if proc.returncode != 0 or not self.out.exists():
            self.error = f"py-spy exited with {proc.returncode}: {self.output.strip()[-500:]}"

    def wait(self, timeout: float = 120.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.error = "py-spy did not finish in time"


def hot_frames(svg: Path, top: int = 12) -> dict[str, Any]:
    """Self and total share of samples per frame, from a py-spy (inferno) flamegraph SVG."""
    text = svg.read_text(errors="replace")
    rects = []
    for m in _RECT.finditer(text):
        t = _SAMPLES.match(m["title"].replace("&quot;", '"').replace("&amp;", "&")
                           .replace("&lt;", "<").replace("&gt;", ">"))
        if not t:
            continue
        rects.append((float(m["y"]), float(m["x"]), float(m["w"]), t["name"],
                      int(t["n"].replace(",", ""))))
    if not rects:
        return {"total_samples": 0, "self": [], "total": []}
    # children of a frame sit one row away (y differs by the row height) inside its x-range
    ys = sorted({r[0] for r in rects})
    row = min((b - a for a, b in itertools.pairwise(ys)), default=16.0)
    by_row: dict[float, list[tuple[float, float, str, int]]] = defaultdict(list)
    for y, x, w, name, n in rects:
        by_row[round(y / row)].append((x, w, name, n))
    self_n: dict[str, int] = defaultdict(int)
    total_n: dict[str, int] = defaultdict(int)
    grand = 0
    direction = -1 if "inverted" not in text[:2000] else 1  # py-spy grows stacks upwards
    for level, frames in by_row.items():
        kids = by_row.get(level + direction, [])
        for x, w, name, n in frames:
            inner = sum(k[3] for k in kids if k[0] >= x - 1e-6 and k[0] + k[1] <= x + w + 1e-6)
            self_n[name] += max(0, n - inner)
            total_n[name] += n
        grand = max(grand, sum(f[3] for f in frames))
    root_total = max(total_n.values())
    grand = max(grand, root_total)

    def rank(d: dict[str, int]) -> list[dict[str, Any]]:
        items = sorted(d.items(), key=lambda kv: kv[1], reverse=True)[:top]
        return [{"frame": k, "samples": v, "pct": 100.0 * v / grand} for k, v in items]

    return {"total_samples": grand, "self": rank(self_n), "total": rank(total_n)}
