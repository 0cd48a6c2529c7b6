"""Memory per stored message of room history, two ways, for the bench's results.

* ``in_process``: ``python -m bench.history_memory`` (a History filled the way the broker
  fills it; tracemalloc and a fresh process's RSS), run as a subprocess, its JSON kept whole.
* ``roomcast`` and ``roomcast-nohistory``: a running server. R connections each join a room of
  their own, then each sends M chats in ``steps`` equal batches through its socket (waiting
  for every echo); the server tree's RSS after the joins and after each batch. Bytes per stored
  message = the slope of a least-squares line through the batches (the first batch's point
  included, the point before it not: that step also pays for first-use allocations). With
  history off the same traffic stores nothing, so its slope is what the traffic itself leaves
  behind; the history server also reports what it counts against ``--history-max-bytes``
  (``roomcast_history_bytes`` on /metrics).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import traceback
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.promstats import scrape
from bench.scenarios import Context, _assign, _connect, _join, _rooms
from bench.servers import NOHISTORY, OURS, ROOT, RunningServer, _pinned, start_server, stop_noting

# the same text as bench.history_memory's, so that both measure the same frames
TEXT = "lorem ipsum dolor sit amet " * 200


def histmem(
    ctx: Context,
    server_cpus: list[int],
    *,
    rooms: int,
    per_room: int,
    text_length: int = 60,
    steps: int = 4,
    settle: float = 0.5,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"in_process": in_process(rooms, per_room, text_length,
                                                               server_cpus)}
    for kind in (OURS, NOHISTORY):
        t0 = time.monotonic()
        server = None
        fig: dict[str, Any]
        try:
            # the history server keeps every chat of the fill: its ring holds per_room, and
            # its memory cap is far above what they take (so nothing is evicted)
            cap = rooms * (per_room * 4096 + 65536)
            extra = (("--history-size", str(per_room), "--history-max-bytes", str(cap))
                     if kind == OURS else ())
            server = start_server(kind, cpus=server_cpus, extra=extra)
            fig = fill(server, ctx, rooms=rooms, per_room=per_room, text=TEXT[:text_length],
                       steps=steps, settle=settle)
            fig["server_command"] = shlex.join(server.command)
        except Exception:
            fig = {"error": traceback.format_exc(limit=3)}
            if server is not None:
                fig["server_output_tail"] = server.text()[-1000:]
        finally:
            if server is not None:
                stop_noting(fig, "server", server)
        fig["elapsed_s"] = time.monotonic() - t0
        out[kind] = fig
    return out


def in_process_command(rooms: int, per_room: int, text_length: int) -> list[str]:
    return [sys.executable, "-m", "bench.history_memory", "--rooms", str(rooms),
            "--per-room", str(per_room), "--text-length", str(text_length)]


def in_process(rooms: int, per_room: int, text_length: int, cpus: list[int]) -> dict[str, Any]:
    cmd = in_process_command(rooms, per_room, text_length)
    shown = shlex.join([".venv/bin/python", *cmd[1:]])
    try:
        done = subprocess.run(_pinned(cmd, cpus), cwd=ROOT, capture_output=True, text=True,
                              timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{shown}: {exc!r}", "command": shown}
    if done.returncode != 0:
        return {"error": f"{shown} exited with {done.returncode}: {done.stderr[-800:]}",
                "command": shown}
    fig: dict[str, Any] = {"command": shown, "problems": []}
    fig |= json.loads(done.stdout)
    return fig


def _gauge(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        if family.name == name and family.samples:
            return float(family.samples[0].value)
    return None


def fill(server: RunningServer, ctx: Context, *, rooms: int, per_room: int, text: str,
         steps: int, settle: float) -> dict[str, Any]:
    import numpy as np  # noqa: PLC0415

    groups = _rooms("h", rooms, 1)
    conns = [g[0] for g in groups]
    with _assign(conns, ctx, groups) as pool:
        fig: dict[str, Any] = _connect(pool, server, conns)
        fig |= _join(pool, len(conns))
        time.sleep(settle)
        points: list[tuple[int, int]] = [(0, _rss(server))]
        pool.call("reset_counters")
        per = [[c.cid for c in conns if c.worker == w] for w in range(len(pool))]
        sent = 0
        for step in range(steps):
            count = per_room * (step + 1) // steps - per_room * step // steps
            pool.call("fill", [{"cids": p, "count": count, "text": text} for p in per],
                      timeout=300)
            sent += count
            want = sent * len(conns)
            ok, s = pool.wait_for(lambda s, t=want: s["chats"] >= t, timeout=120,
                                  stall=10.0, key="chats")
            if not ok:
                fig["fill_stalled_at"] = s["chats"]
                break
            time.sleep(settle)
            points.append((sent * len(conns), _rss(server)))
        s = pool.stats()
        text_metrics = scrape(server.metrics_url) if server.metrics_url else ""
        stored = _gauge(text_metrics, "roomcast_history_messages")
        counted = _gauge(text_metrics, "roomcast_history_bytes")
        xs = np.array([p[0] for p in points[1:]], dtype=float)
        ys = np.array([p[1] for p in points[1:]], dtype=float)
        slope = float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2 else None
        chats = points[-1][0]
        fig |= {
            "rooms": rooms,
            "per_room": per_room,
            "chats": chats,
            "echoes": s["chats"],
            "losses": chats - s["chats"],
            # what one chat's frame is on the wire (and in the history): the echoes' bytes
            "frame_bytes": s["bytes"] / s["frames"] if s["frames"] else None,
            "rss_points": points,
            "rss_per_message_bytes": slope,
            "rss_growth_per_message_bytes": ((points[-1][1] - points[0][1]) / chats
                                             if chats else None),
            "history_messages": stored,
            "history_bytes_counted": counted,
            "counted_per_message_bytes": counted / stored if counted and stored else None,
        }
        st = pool.stats()
        fig |= {"disconnected": st["disconnected"], "close_codes": st["close_codes"],
                "errors": st["errors"]}
        problems = []
        if fig.get("connect_failed"):
            problems.append(f"{fig['connect_failed']} connections failed")
        if not fig.get("join_ok"):
            problems.append(f"only {fig.get('confirmed')} join confirmations arrived")
        if fig["losses"]:
            problems.append(f"{fig['losses']} echoes missing")
        if st["disconnected"] or st["errors"]:
            problems.append(f"{st['disconnected']} disconnected, {st['errors']} errors")
        if server.kind.name == OURS and stored != chats:
            problems.append(f"the server stores {stored} messages, {chats} were sent")
        fig["problems"] = problems
        return fig


def _rss(server: RunningServer) -> int:
    samples = []
    for _ in range(3):
        samples.append(server.rss_bytes())
        time.sleep(0.05)
    return sorted(samples)[1]
