"""Turning a run's files (Locust CSVs + the harness's summary JSON) into the README summary.

No gevent and no Locust here: run.py and the tests import this module.
"""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path
from typing import Any

START = "<!-- loadtest:start -->"
END = "<!-- loadtest:end -->"


def read_stats(prefix: str) -> list[dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_failures(prefix: str) -> list[dict[str, str]]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_summary(prefix: str) -> dict[str, Any]:
    path = Path(f"{prefix}_summary.json")
    return json.loads(path.read_text()) if path.exists() else {}


def stat(rows: list[dict[str, str]], kind: str, name: str) -> dict[str, str] | None:
    return next((r for r in rows if r["Type"] == kind and r["Name"] == name), None)


def _num(value: Any, unit: str = "") -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}{unit}"
    return f"{int(float(value)):,}{unit}"


def _mib(kb: Any) -> str:
    return "n/a" if kb is None else f"{kb / 1024:,.0f} MiB"


def compact_sizes(sizes: list[int]) -> str:
    """``[1000, 5, 5, 5]`` -> ``"1000,5*3"`` (the --room-sizes syntax)."""
    parts: list[str] = []
    i = 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        parts.append(str(sizes[i]) if j - i == 1 else f"{sizes[i]}*{j - i}")
        i = j
    return ",".join(parts)


def failure_lines(failures: list[dict[str, str]]) -> list[str]:
    lines = []
    for row in sorted(failures, key=lambda r: -int(r["Occurrences"])):
        lines.append(f"{int(row['Occurrences']):,} x {row['Method']} {row['Name']}: {row['Error']}")
    return lines


def headline(prefix: str) -> dict[str, Any]:
    """The figures the README shows, as plain values (also used by the smoke test)."""
    rows, failures, summary = read_stats(prefix), read_failures(prefix), read_summary(prefix)
    total = stat(rows, "", "Aggregated") or {}
    fanout = summary.get("fanout", {})
    server = summary.get("server", {})
    resume = summary.get("resume") or {}
    return {
        "requests": int(total.get("Request Count", 0) or 0),
        "failures": int(total.get("Failure Count", 0) or 0),
        "failure_causes": failure_lines(failures),
        "held_peak": summary.get("held_peak"),
        "users_peak": summary.get("users_peak"),
        "server_connections_peak": server.get("connections_peak"),
        "server_connections_label": (
            "open WebSocket connections (/metrics)" if server.get("source") == "metrics"
            else "established connections"
        ),
        "server_rss_peak_kb": server.get("rss_peak_kb"),
        "receipts": fanout.get("receipts"),
        "receipt_p50_ms": fanout.get("receipt_p50_ms"),
        "receipt_p99_ms": fanout.get("receipt_p99_ms"),
        "messages": fanout.get("messages"),
        "last_member_p50_ms": fanout.get("last_member_p50_ms"),
        "last_member_p99_ms": fanout.get("last_member_p99_ms"),
        "lost_messages": fanout.get("lost_messages"),
        "resumes": resume.get("resumes", 0),
        "resumes_recovered": resume.get("recovered"),
        "resume_gaps": resume.get("gaps"),
        "resume_missing": resume.get("missing"),
        "resume_duplicates": resume.get("duplicates"),
        "resume_p50_ms": (stat(rows, "RESUME", "resume") or {}).get("50%"),
        "resume_p99_ms": (stat(rows, "RESUME", "resume") or {}).get("99%"),
        "connect_p50_ms": (stat(rows, "WS", "connect") or {}).get("50%"),
        "join_p50_ms": (stat(rows, "WS", "join") or {}).get("50%"),
    }


def parameters(scenario: str, settings: dict[str, Any]) -> str:
    """The parameters of the scenario's user classes, in one sentence."""
    parts = []
    if scenario in ("swarm", "all"):
        parts.append(f"room sizes `{compact_sizes(settings.get('room_sizes', []))}` (chat "
                     f"swarm), {settings.get('chat_fraction')} of swarm users chatting every "
                     f"{settings.get('chat_interval')} s on average, sessions of "
                     f"{settings.get('session_seconds')} s on average")
    if scenario in ("fanout", "all"):
        parts.append(f"fan-out rooms of {settings.get('fanout_room_size')} at "
                     f"{settings.get('fanout_rate')} msg/s")
    if scenario in ("capacity", "all"):
        parts.append(f"idle rooms of {settings.get('capacity_room_size')}")
    if scenario == "resume":
        parts.append(f"resume rooms of {settings.get('resume_room_size')} whose first member "
                     f"chats at {settings.get('resume_rate')} msg/s, the others dropping their "
                     f"connection every {settings.get('resume_interval')} s on average and "
                     f"resuming after {settings.get('resume_offline')} s on average")
    parts.append(f"{settings.get('message_bytes')}-byte messages")
    return "Parameters: " + ", ".join(parts) + "."


def markdown(prefix: str, context: dict[str, str]) -> str:
    """The results/README.md section for the run whose files start with ``prefix``."""
    h = headline(prefix)
    summary = read_summary(prefix)
    settings = summary.get("settings", {})
    rel = context.get("relative_prefix", prefix)
    causes = h["failure_causes"]
    lines = [
        START,
        "## Load test (Locust)",
        "",
        f"A headless Locust swarm, `{context.get('command', 'make loadtest')}`, run on "
        f"{context.get('date', '?')} on {context.get('machine', 'this machine')}: "
        f"scenario `{summary.get('scenario', '?')}`, {context.get('shape', '')}. "
        f"{context.get('server', '')} {context.get('load', '')}".rstrip(),
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| Connections held (joined), peak | {_num(h['held_peak'])} of "
        f"{_num(h['users_peak'])} users |",
        f"| Server: {h['server_connections_label']}, peak | "
        f"{_num(h['server_connections_peak'])} |",
        f"| Server: RSS, peak | {_mib(h['server_rss_peak_kb'])} |",
        f"| Fan-out latency per receipt, p50 / p99 | {_num(h['receipt_p50_ms'], ' ms')} / "
        f"{_num(h['receipt_p99_ms'], ' ms')} ({_num(h['receipts'])} receipts) |",
        f"| Fan-out latency to the last member, p50 / p99 | "
        f"{_num(h['last_member_p50_ms'], ' ms')} / {_num(h['last_member_p99_ms'], ' ms')} "
        f"({_num(h['messages'])} messages, {_num(h['lost_messages'])} lost) |",
        f"| Connect / join, p50 | {_num(h['connect_p50_ms'], ' ms')} / "
        f"{_num(h['join_p50_ms'], ' ms')} |",
    ]
    if h["resumes"]:
        lines.append(f"| Resumes with `since` (join to welcome p50 / p99) | {_num(h['resumes'])}: "
                     f"{_num(h['resumes_recovered'])} recovered, {_num(h['resume_gaps'])} gaps "
                     f"({_num(h['resume_missing'])} messages), {_num(h['resume_duplicates'])} "
                     f"duplicates ({_num(h['resume_p50_ms'], ' ms')} / "
                     f"{_num(h['resume_p99_ms'], ' ms')}) |")
    lines += [
        f"| Failures | {_num(h['failures'])} of {_num(h['requests'])} requests |",
        "",
    ]
    if causes:
        lines += ["Failures by cause:", ""] + [f"- {c}" for c in causes] + [""]
    if settings:
        lines += [parameters(summary.get("scenario", "all"), settings), ""]
    lines += [
        f"Reports: [`{rel}.html`]({rel}.html) (Locust's HTML report), `{rel}_stats.csv`, "
        f"`{rel}_stats_history.csv`, `{rel}_failures.csv`, `{rel}_exceptions.csv`, "
        f"`{rel}_timeline.csv` (held connections and the server's RSS, fds, connections and CPU "
        "time every 2 s) and "
        f"`{rel}_summary.json` (exact fan-out percentiles). How to run and read them: "
        "[docs/loadtest.md](../docs/loadtest.md).",
        END,
    ]
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    """Puts ``section`` between the markers of ``path``, leaving the rest of the file alone."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(section)
        return
    text = path.read_text()
    start, end = text.find(START), text.find(END)
    if start != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def annotate_html(path: Path, prefix: str) -> None:
    """Adds a small static table of the harness's own figures to the top of Locust's HTML report
    (Locust's report has no extension point for them)."""
    if not path.exists():
        return
    h = headline(prefix)
    rows = [
        ("Connections held, peak", _num(h["held_peak"])),
        (f"Server {h['server_connections_label']}, peak", _num(h["server_connections_peak"])),
        ("Server RSS, peak", _mib(h["server_rss_peak_kb"])),
        ("Fan-out per receipt p50 / p99",
         f"{_num(h['receipt_p50_ms'], ' ms')} / {_num(h['receipt_p99_ms'], ' ms')}"),
        ("Fan-out last member p50 / p99",
         f"{_num(h['last_member_p50_ms'], ' ms')} / {_num(h['last_member_p99_ms'], ' ms')}"),
        ("Messages lost", _num(h["lost_messages"])),
    ]
    cells = "".join(
        f"<tr><th style='text-align:left;padding:2px 12px'>{html.escape(k)}</th>"
        f"<td style='padding:2px 12px'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    block = (
        "<!-- roomcast-summary --><div id='roomcast-summary' style='font-family:sans-serif;"
        "padding:12px 24px;border-bottom:1px solid #ccc'><b>roomcast harness figures</b> "
        "(exact, from the harness; Locust's per-receipt rows below are a bounded sample)"
        f"<table>{cells}</table></div><!-- /roomcast-summary -->"
    )
    text = path.read_text(encoding="utf-8")
    while "<!-- roomcast-summary -->" in text:  # a previous annotation: replace it
        head, _, rest = text.partition("<!-- roomcast-summary -->")
        _, _, tail = rest.partition("<!-- /roomcast-summary -->")
        text = head + tail
    # The report inlines its JavaScript, which contains "<body" in strings: use the real tag,
    # the first one after </head>.
    head_end = text.rfind("</head>")
    match = re.compile(r"<body[^>]*>").search(text, max(head_end, 0))
    if head_end == -1 or match is None:
        return
    text = text[: match.end()] + block + text[match.end():]
    path.write_text(text, encoding="utf-8")
