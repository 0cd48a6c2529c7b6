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
# Runs other than the default scenario's (the reconnect storm, history on vs off) write their own
# sub-section inside the loadtest markers: `make bench` keeps what is between START and END
# verbatim, and the default run keeps the sub-sections when it rewrites its own part.
SUB = re.compile(r"<!-- loadtest-([a-z0-9-]+):start -->.*?<!-- loadtest-\1:end -->\n?", re.S)


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of sub-section ``name`` (e.g. ``storm-1node``)."""
    return f"<!-- loadtest-{name}:start -->", f"<!-- loadtest-{name}:end -->"


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
        "storm": summary.get("storm"),
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
    if scenario == "storm":
        rounds = settings.get("storm_rounds")
        parts.append(f"storm rooms of {settings.get('storm_room_size')} users plus a publisher "
                     f"chatting at {settings.get('storm_rate')} msg/s, "
                     f"{settings.get('storm_lead')} s live before the drop, "
                     f"{settings.get('storm_outage')} s away, {settings.get('storm_tail')} s "
                     f"live after the resume, {rounds or 'repeated'} round(s)"
                     + (f", resumed on the {settings.get('storm_resume_on')} node"
                        if len(settings.get("storm_hosts") or ()) > 1 else ""))
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


PLACEHOLDER = (f"{START}\n## Load test (Locust)\n\nNo run of the default scenario recorded yet "
               f"(`make loadtest`).\n\n{END}\n")


def replace_section(path: Path, section: str, name: str | None = None) -> None:
    """Puts ``section`` between the markers of ``path``, leaving the rest of the file alone.

    Without ``name``, ``section`` is the default run's and replaces everything between START and
    END except the sub-sections, which it keeps (after its own text). With ``name``, ``section``
    is sub-section ``name`` (it carries ``markers(name)``) and replaces that sub-section only,
    or is added at the end of the loadtest section (made first when there is none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    start, end = text.find(START), text.find(END)
    if not (start != -1 and end > start):
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + (
            section if name is None else PLACEHOLDER)
        if name is None:
            path.write_text(text)
            return
        start, end = text.find(START), text.find(END)
    old = text[start:end]
    if name is None:
        kept = "".join(m.group(0) for m in SUB.finditer(old))
        body = section.rstrip("\n")
        assert body.endswith(END)
        body = body[: -len(END)].rstrip("\n") + "\n\n" + kept if kept else body[: -len(END)]
        new = body.rstrip("\n") + "\n"
    else:
        first, last = markers(name)
        block = section.strip("\n") + "\n"
        i, j = old.find(first), old.find(last)
        if i != -1 and j > i:
            rest = old[j + len(last):].lstrip("\n")
            new = old[:i] + block + ("\n" + rest if rest.strip() else rest)
        else:
            new = old.rstrip("\n") + "\n\n" + block
    path.write_text(text[:start] + new + text[end:])


def annotate_html(path: Path, prefix: str,
                  extra_rows: list[tuple[str, str]] | None = None) -> None:
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
    storm = h.get("storm")
    if storm:
        for r in storm.get("rounds", []):
            rows.append((f"Storm round {r['round']}: clients, all resumed",
                         f"{_num(r['clients'])}, {_ms_text(r['all_resumed_ms'])} ms"))
            rows.append((f"Storm round {r['round']}: recovered, missing, duplicates, lossless",
                         f"{_num(r['recovered'])}, {_num(r['missing'])}, "
                         f"{_num(r['duplicates'])}, {'yes' if r['lossless'] else 'no'}"))
    rows += extra_rows or []
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


# ---- the reconnect storm's and the history comparison's sub-sections ----------------------------


def _ms_text(value: Any) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def storm_rows(storm: dict[str, Any]) -> list[str]:
    """The storm rounds as a markdown table (header included)."""
    lines = [
        "| round | clients | reconnect (ms) | all resumed (ms) | live p50 / p99 (ms) | "
        "`recovered: true` | not recovered | no `history` | missing | duplicates | mismatched | "
        "live again | replayed per client | server CPU (ms) | CPU per resume (µs) | "
        "server counted recovered | lossless |",
        "|" + "---|" * 17,
    ]
    for r in storm.get("rounds", []):
        lines.append(
            f"| {r['round']} | {_num(r['clients'])} | {_ms_text(r['reconnect_ms'])} | "
            f"{_ms_text(r['all_resumed_ms'])} | {_ms_text(r['live_p50_ms'])} / "
            f"{_ms_text(r['live_p99_ms'])} | {_num(r['recovered'])} | "
            f"{_num(r['not_recovered'])} | {_num(r['no_history'])} | {_num(r['missing'])} | "
            f"{_num(r['duplicates'])} | {_num(r['mismatched'])} | {_num(r['live_again'])} | "
            f"{_num(r['replayed_per_client'])} | {_num(r['server_cpu_ms'])} | "
            f"{_num(r['cpu_per_resume_us'])} | {_num(r.get('server_counted_resumes_recovered'))}"
            f" | {'**yes**' if r['lossless'] else '**no**'} |")
    return lines


def storm_markdown(prefix: str, context: dict[str, str], name: str) -> str:
    """Sub-section ``name`` of results/README.md for a storm run (files starting with
    ``prefix``)."""
    h = headline(prefix)
    summary = read_summary(prefix)
    storm: dict[str, Any] = summary.get("storm") or {}
    settings = summary.get("settings", {})
    nodes = storm.get("nodes", 1)
    rel = context.get("relative_prefix", prefix)
    first, last = markers(name)
    moved = sum(r.get("resumed_on_other_node", 0) for r in storm.get("rounds", []))
    where = ("on one node" if nodes == 1 else
             f"on {nodes} nodes linked by Redis, user i on node i mod {nodes} and every room's "
             f"members on all of them; each storm moves every user on to the "
             f"{'next' if storm.get('resume_on') == 'other' else 'same'} node "
             f"({_num(moved)} resumes made on another node than the dropped connection's)")
    lines = [
        first,
        f"### Reconnect storm (Locust), {'one node' if nodes == 1 else f'{nodes} nodes'}",
        "",
        f"`{context.get('command', '')}`, run on {context.get('date', '?')} on "
        f"{context.get('machine', 'this machine')}: {_num(storm.get('users_joined'))} users in "
        f"rooms of {storm.get('room_size')}, each room with one publisher chatting at "
        f"{storm.get('rate')} msg/s, {where}. Every user's connection dropped (an RST) at one "
        f"instant, {storm.get('outage_s')} s away, all reconnected, then all sent their `join` "
        f"with `since` at one instant. {context.get('server', '')} "
        f"{context.get('load', '')}".rstrip(),
        "",
        *storm_rows(storm),
        "",
        "*reconnect*: from the reconnect order to the last connection made (connect + "
        "handshake); *all resumed*: from the instant every `join` with `since` went out to the "
        "last welcome read (*live p50 / p99*: per client); *missing*, *duplicates*: chats "
        "(replayed and live) whose `seq` skipped or repeated, from the first join to the end "
        "of the round; *mismatched*: chats whose `seq` is not their publisher's number; "
        "*live again*: clients with live chats after their welcome; server CPU: on-CPU time "
        f"of the server processes{' and redis-server' if nodes > 1 else ''} from that instant "
        "to the last welcome. Times include the load generator's own delays (one Python "
        "process).",
        "",
        f"Lossless: **{'yes' if storm.get('lossless') else 'no'}**. Failures: "
        f"{_num(h['failures'])} of {_num(h['requests'])} requests.",
        "",
    ]
    if h["failure_causes"]:
        lines += ["Failures by cause:", ""] + [f"- {c}" for c in h["failure_causes"]] + [""]
    if settings:
        lines += [parameters("storm", settings), ""]
    lines += [
        f"Reports: [`{rel}.html`]({rel}.html), `{rel}_stats.csv`, `{rel}_failures.csv`, "
        f"`{rel}_timeline.csv` and `{rel}_summary.json` (`storm`: every round's figures). How "
        "to run and read them: [docs/loadtest.md](../docs/loadtest.md#the-reconnect-storm).",
        last,
    ]
    return "\n".join(lines) + "\n"


def _x(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _fixed(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def history_markdown(result: dict[str, Any], context: dict[str, str],
                     name: str = "history") -> str:
    """Sub-section ``name`` of results/README.md for ``--compare-history`` (compare.compare's
    result, plus each leg's ``relative_prefix``)."""
    first, last = markers(name)
    legs = result.get("legs", [])
    ratio, met = result.get("ratio"), result.get("met")
    pairs = ", ".join(_x(p.get("ratio")) for p in result.get("pairs", []))
    lines = [
        first,
        "### History on vs off (Locust)",
        "",
        f"`{context.get('command', '')}`, run on {context.get('date', '?')} on "
        f"{context.get('machine', 'this machine')}: {context.get('shape', '')}. "
        f"{context.get('server', '')} {context.get('load', '')}".rstrip(),
        "",
        "| pair | history | window (s) | deliveries/s | server CPU | CPU µs/delivery | "
        "deliveries/write | CPU µs/write | bytes sent/delivery | stored messages | "
        "counted bytes/stored message | RSS at the end | fan-out p50 / p99 (ms) | lost | "
        "failures |",
        "|" + "---|" * 15,
    ]
    for leg in legs:
        util = leg.get("server_cpu_util")
        lines.append(
            f"| {leg['pair']} | {leg['label']} | {_num(leg.get('window_s'))} | "
            f"{_num(leg.get('deliveries_per_s'))} | "
            f"{'n/a' if util is None else f'{util:.0%}'} | "
            f"{_fixed(leg.get('cpu_per_delivery_us'))} | "
            f"{_fixed(leg.get('deliveries_per_write'))} | {_fixed(leg.get('cpu_per_write_us'))} | "
            f"{_num(leg.get('bytes_per_delivery'))} | {_num(leg.get('history_messages'))} | "
            f"{_num(leg.get('bytes_per_stored_message'), ' B')} | "
            f"{_mib(leg.get('rss_final_kb'))} | {_num(leg.get('receipt_p50_ms'))} / "
            f"{_num(leg.get('receipt_p99_ms'))} | {_num(leg.get('lost_messages'))} | "
            f"{_num(leg.get('failures'))} |")
    bytes_per = result.get("bytes_per_stored_message")
    lines += [
        "",
        f"CPU per delivery, history on / off: **{_x(ratio)}** (median of "
        f"{len(result.get('pairs', []))} pair(s): {pairs or 'n/a'}; medians "
        f"{_num(result.get('on_cpu_per_delivery_us'))} vs "
        f"{_num(result.get('off_cpu_per_delivery_us'))} µs), target at most "
        f"{result.get('target', 1.1)}x: **{'met' if met else 'missed' if met is False else 'n/a'}"
        "**. Per socket write (not moved by how many frames a write carried): "
        f"{_x(result.get('write_ratio'))} (pairs: "
        + (", ".join(_x(p.get("write_ratio")) for p in result.get("pairs", [])) or "n/a")
        + ").",
        "",
        f"Memory per stored message, history on: **{_num(bytes_per, ' B')}** "
        "(`roomcast_history_bytes` / `roomcast_history_messages` at the end of the leg: what the "
        "server counts against `--history-max-bytes`, the frame as sent plus its entry overhead "
        "and each room's stream overhead spread over its messages), over "
        f"{_num(result.get('history_messages'))} stored messages. The RSS slope per stored "
        "message is `make bench SCENARIO=histmem`'s.",
        "",
        "*window*: from a few seconds after every user was in its room to the last sample that "
        "still had them all (the joins and the stop are left out); *server CPU*: its on-CPU "
        "time (schedstat) over the window, as a share of one CPU; *deliveries*: "
        "`roomcast_deliveries_total`, *writes*: `roomcast_writes_total` (more than one delivery "
        "per write: frames that waited for a slow reader, or two chats of a room in one tick "
        "from a publisher catching up, went out together, which makes a delivery cheaper: the "
        "load generator's pace shows there); *fan-out*: the harness's exact per-receipt latency "
        "over the whole leg, joins included. Single pairs on this shared machine differ by up "
        "to 20%: the median of the pairs is the figure.",
        "",
        "Reports, per leg: " + ", ".join(
            f"[`{leg['relative_prefix']}.html`]({leg['relative_prefix']}.html)"
            for leg in legs if leg.get("relative_prefix"))
        + f"; all figures in `{context.get('relative_compare', 'history_compare.json')}`. How to "
        "run and read them: [docs/loadtest.md](../docs/loadtest.md#history-on-vs-off).",
        last,
    ]
    return "\n".join(lines) + "\n"
