"""Smoke run of the Locust harness (loadtest/) against a real server, plus its pure helpers.

Locust runs in a subprocess: it monkey-patches the standard library with gevent at import time,
which must not leak into pytest.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
import websocket

from loadtest import report, serverstats
from loadtest.fanout import FanoutTotals, FanoutTracker, Histogram, parse_stamp, stamp
from loadtest.resume import ResumeTotals, SeqTracker
from loadtest.rooms import RoomDirectory, SeatPlan
from loadtest.settings import parse_room_sizes, parse_source_addresses
from tests.support import running_server

ROOT = Path(__file__).resolve().parent.parent
USERS = 12


def _stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


@pytest.mark.timeout(90)
def test_smoke_swarm_has_no_failures_and_records_fanout(tmp_path: Path) -> None:
    prefix = tmp_path / "smoke"
    # 4-second sessions switch rooms far faster than people do: a user that happened to switch
    # five times in the run would pass the default join limit (10 per 10 s).
    server_args = ("--rate-limit", "0", "--join-rate-limit", "0", "--log-level", "warning")
    with running_server(*server_args) as server:
        cmd = [
            sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
            "--headless", "--users", str(USERS), "--spawn-rate", str(USERS), "--run-time", "8s",
            "--stop-timeout", "5", "--host", server.ws_url, "--csv", str(prefix), "--only-summary",
            "--html", f"{prefix}.html",
            "--room-sizes", "3,5", "--fanout-room-size", "4", "--fanout-rate", "5",
            "--capacity-room-size", "3", "--chat-fraction", "0.5", "--chat-interval", "1",
            "--session-seconds", "4",
        ]
        env = {**os.environ, "SCENARIO": "all", "PYTHONWARNINGS": "ignore"}
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    stats = _stats(prefix)
    total = stats[("", "Aggregated")]
    assert int(total["Failure Count"]) == 0, output[-4000:]
    assert int(stats[("WS", "connect")]["Request Count"]) >= USERS
    assert int(stats[("WS", "join")]["Request Count"]) >= USERS
    assert int(stats[("WS", "send")]["Request Count"]) > 0
    receipts = stats[("FANOUT", "per-receipt")]
    last_member = stats[("FANOUT", "last member")]
    assert int(receipts["Request Count"]) > 0
    assert int(last_member["Request Count"]) > 0
    assert float(receipts["Max Response Time"]) < 10_000

    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    # swarm users leave and come back at random, so not every user need be joined at one moment
    assert USERS - 4 <= summary["held_peak"] <= USERS
    assert summary["fanout"]["receipts"] >= int(receipts["Request Count"])
    assert summary["fanout"]["lost_messages"] == 0
    assert summary["server"]["source"] == "proc"  # a local server: sampled from /proc
    assert summary["server"]["pid"] == server.proc.pid
    assert summary["server"]["rss_peak_kb"] > 0
    assert summary["server"]["connections_peak"] >= 1

    section = report.markdown(str(prefix), {"relative_prefix": "smoke"})
    assert section.startswith(report.START) and section.rstrip().endswith(report.END)
    assert "Failures | 0 of" in section

    html_report = Path(f"{prefix}.html")
    report.annotate_html(html_report, str(prefix))
    page = html_report.read_text(encoding="utf-8")
    # the figures go into the document body, not into the report's inlined JavaScript
    assert page.count("<!-- roomcast-summary -->") == 1
    assert page.index("<!-- roomcast-summary -->") > page.rindex("</head>")


def test_histogram_percentiles_are_within_resolution() -> None:
    hist = Histogram()
    for ms in range(1, 1001):
        hist.add(float(ms))
    assert hist.total == 1000
    assert hist.percentile(0.5) == 500.0
    assert hist.percentile(0.99) == 990.0
    assert hist.percentile(1.0) == 1000.0
    assert Histogram().percentile(0.5) is None
    totals = FanoutTotals()
    totals.add_delta({"receipts": hist.to_wire(), "messages": 3})
    assert totals.receipts.total == 1000 and totals.messages == 3


def test_tracker_reports_last_member_once_and_samples_receipts() -> None:
    fired: list[tuple[str, float, Exception | None]] = []
    now = [100.0]
    tracker = FanoutTracker(
        lambda name, ms, _len, exc: fired.append((name, ms, exc)), budget=2, timeout=5.0,
        clock=lambda: now[0],
    )
    text = stamp("m1", 100.0, 64)
    assert len(text) == 64 and parse_stamp(text) == ("m1", 100.0)
    tracker.published("m1", "room", 100.0, {1, 2, 3}, len(text))
    tracker.received("m1", 100.0, 1, 64, 100.010)
    tracker.received("m1", 100.0, 2, 64, 100.030)
    tracker.member_gone(3, "room")  # left before it got the message: no longer awaited
    assert [(n, round(ms)) for n, ms, _ in fired] == [("last member", 30)]
    tracker.published("m2", "room", 100.0, {1, 2}, len(text))
    tracker.received("m2", 100.0, 1, 64, 100.005)
    now[0] = 106.0
    tracker.flush()
    names = [n for n, _, _ in fired]
    assert names.count("per-receipt") == 2  # 3 receipts, budget 2
    lost = [exc for n, _, exc in fired if exc is not None]
    assert len(lost) == 1 and "1 of 2 members" in str(lost[0])
    assert tracker.pending == 0 and tracker.lost_messages == 1


def test_seat_plan_fills_rooms_in_order_and_reuses_seats() -> None:
    plan = SeatPlan("p", parse_room_sizes("2,1"))
    seats = [plan.take() for _ in range(4)]
    assert [(s.room, s.position) for s in seats] == [
        ("p-s2-r0-0", 1), ("p-s2-r0-0", 2), ("p-s1-r0-1", 1), ("p-s2-r1-0", 1),
    ]
    plan.release(seats[1])
    assert plan.take().room == "p-s2-r0-0"
    directory = RoomDirectory()
    directory.joined("r", 1, 10.0)
    directory.joined("r", 2, 20.0)
    assert directory.members_since("r", 15.0) == {1}


def test_settings_parsing() -> None:
    assert parse_room_sizes("1000, 5*3") == (1000, 5, 5, 5)
    with pytest.raises(ValueError):
        parse_room_sizes("0")
    assert parse_source_addresses("auto", "127.0.0.1")[:2] == ["127.0.0.1", "127.0.0.2"]
    assert parse_source_addresses("auto", "10.1.2.3") == []
    assert parse_source_addresses("127.0.0.2-127.0.0.4", "x") == [
        "127.0.0.2", "127.0.0.3", "127.0.0.4",
    ]


def test_readme_section_replaced_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    report.replace_section(readme, f"{report.START}\none\n{report.END}\n")
    readme.write_text("# Results\n\nbench table\n\n" + readme.read_text() + "\nafter\n")
    report.replace_section(readme, f"{report.START}\ntwo\n{report.END}\n")
    text = readme.read_text()
    assert text == f"# Results\n\nbench table\n\n{report.START}\ntwo\n{report.END}\n\nafter\n"


SAMPLE_EXPOSITION = """\
# HELP roomcast_connections_accepted_total TCP connections accepted
# TYPE roomcast_connections_accepted_total counter
roomcast_connections_accepted_total 7.0
# HELP roomcast_connections open WebSocket connections
# TYPE roomcast_connections gauge
roomcast_connections 3.0
roomcast_rooms 1.0
roomcast_members{shard="a"} 2.0
roomcast_members{shard="b",note="x } y"} 1.0 1700000000000
roomcast_event_loop_lag_seconds_bucket{le="+Inf"} 12.0
process_resident_memory_bytes 3.467264e+07
process_cpu_seconds_total 0.19
process_open_fds NaN
process_max_fds 20000.0
"""


def test_metrics_exposition_parsing() -> None:
    values = serverstats.parse_exposition(
        SAMPLE_EXPOSITION, {"roomcast_connections", "roomcast_members", "process_open_fds"}
    )
    # a longer name with the same prefix is not the metric; label sets are summed; NaN is dropped
    assert values == {"roomcast_connections": 3.0, "roomcast_members": 3.0}
    row = serverstats.stats_from_metrics(SAMPLE_EXPOSITION)
    assert row == {
        "server_rss_kb": 33860, "server_fds": None, "server_connections": 3,
        "server_cpu_s": 0.19, "server_members": 3, "server_rooms": 1,
    }
    assert serverstats.metrics_url("ws://10.0.0.5:8080/chat?x=1") == "http://10.0.0.5:8080/metrics"
    assert serverstats.metrics_url("wss://u:p@chat.example:443/") == (
        "https://chat.example:443/metrics"
    )
    assert serverstats.metrics_url("ws://[::1]:9000") == "http://[::1]:9000/metrics"
    with pytest.raises(ValueError):
        serverstats.metrics_url("http://127.0.0.1:8080/")


@pytest.mark.timeout(30)
def test_server_stats_from_metrics_and_proc_agree() -> None:
    with running_server("--log-level", "warning") as server:
        auto = serverstats.choose("auto", server.ws_url, None)
        forced = serverstats.choose("metrics", server.ws_url, None)
        assert isinstance(auto, serverstats.ProcSampler) and auto.pid == server.proc.pid
        assert isinstance(forced, serverstats.MetricsSampler)
        assert forced.url == f"{server.http_url}/metrics"
        clients = []
        try:
            for i in range(3):
                ws = websocket.create_connection(server.ws_url, timeout=5)
                clients.append(ws)
                ws.send(json.dumps({"type": "join", "room": "stats", "username": f"u{i}"}))
                while "users" not in json.loads(ws.recv()):  # the joiner's own notice
                    pass
            scraped, local = forced.sample(), auto.sample()
        finally:
            for ws in clients:
                ws.close()
    assert scraped["server_connections"] == 3
    assert scraped["server_members"] == 3 and scraped["server_rooms"] == 1
    assert local["server_connections"] == 3  # established TCP connections on the port
    assert scraped["server_rss_kb"] > 1024 and local["server_rss_kb"] > 1024
    assert abs(scraped["server_rss_kb"] - local["server_rss_kb"]) < 32 * 1024
    assert scraped["server_fds"] >= 4 and local["server_fds"] >= 4
    assert scraped["server_cpu_s"] is not None and local["server_cpu_s"] is not None
    assert forced.failures == 0


def test_metrics_sampler_reports_nothing_when_unreachable() -> None:
    with running_server("--log-level", "warning") as server:
        url = f"{server.http_url}/metrics"
    sampler = serverstats.MetricsSampler(url, timeout=2)  # the server has exited: refused
    assert sampler.sample() == serverstats.empty()
    assert sampler.failures == 1
    assert isinstance(serverstats.choose("proc", "ws://10.255.255.1:1/", None),
                      type(serverstats.NoSampler()))


@pytest.mark.timeout(60)
def test_locust_run_reads_server_stats_from_metrics(tmp_path: Path) -> None:
    """The run monitor, forced to the /metrics path, as for a server on another machine."""
    prefix = tmp_path / "metrics"
    with running_server("--log-level", "warning") as server:
        cmd = [
            sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
            # 10 s: several 2 s samples after the joins, even on a loaded machine
            "--headless", "--users", "4", "--spawn-rate", "4", "--run-time", "10s",
            "--stop-timeout", "3", "--host", server.ws_url, "--csv", str(prefix),
            "--only-summary", "--capacity-room-size", "2", "--server-stats", "metrics",
        ]
        env = {**os.environ, "SCENARIO": "capacity", "PYTHONWARNINGS": "ignore"}
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=45, check=False
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    stats = summary["server"]
    assert stats["source"] == "metrics" and stats["pid"] is None
    assert stats["metrics_url"] == f"{server.http_url}/metrics"
    assert stats["connections_peak"] == 4
    assert stats["members_peak"] == 4 and stats["rooms_peak"] == 2
    assert stats["rss_peak_kb"] > 1024 and stats["fds_peak"] >= 5
    with open(f"{prefix}_timeline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(row["server_connections"] == "4" for row in rows)
    assert "open WebSocket connections (/metrics)" in report.markdown(str(prefix), {})


# ---- resume: users whose connection drops, back with `since`; gaps and duplicates fail


def _resume_swarm(server_url: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
        "--headless", "--users", "10", "--spawn-rate", "10", "--run-time", "8s",
        "--stop-timeout", "3", "--host", server_url, "--csv", str(prefix), "--only-summary",
        # rooms of 5: one publisher at 5 msg/s, four members that drop every ~1.5 s and stay
        # away ~0.8 s, so that each resume has a few messages to recover
        "--resume-room-size", "5", "--resume-rate", "5", "--resume-interval", "1.5",
        "--resume-offline", "0.8",
    ]
    env = {**os.environ, "SCENARIO": "resume", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.timeout(90)
def test_resume_swarm_recovers_every_resume_with_no_gap(tmp_path: Path) -> None:
    prefix = tmp_path / "resume"
    with running_server("--rate-limit", "0", "--log-level", "warning") as server:
        done = _resume_swarm(server.ws_url, prefix)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    stats = _stats(prefix)
    assert int(stats[("", "Aggregated")]["Failure Count"]) == 0, output[-4000:]
    resumes = int(stats[("RESUME", "resume")]["Request Count"])
    assert resumes > 0
    assert ("RESUME", "gap") not in stats and ("RESUME", "duplicate") not in stats
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())["resume"]
    # (a resume that completes while Locust stops its users reaches the summary but may miss
    # Locust's own stats)
    assert summary["resumes"] == summary["recovered"] >= resumes
    assert summary["gaps"] == summary["duplicates"] == summary["no_history"] == 0
    assert summary["replayed"] > 0  # they did miss messages while away, and got them back
    section = report.markdown(str(prefix), {})
    total = summary["resumes"]
    assert f"| Resumes with `since` (join to welcome p50 / p99) | {total:,}: {total:,} " \
        "recovered, 0 gaps (0 messages), 0 duplicates" in section
    assert "Parameters: resume rooms of 5 whose first member chats at 5.0 msg/s" in section
    assert "(chat swarm)" not in section


@pytest.mark.timeout(90)
def test_resume_swarm_fails_when_the_server_cannot_resume(tmp_path: Path) -> None:
    prefix = tmp_path / "nohistory"
    with running_server("--rate-limit", "0", "--log-level", "warning",
                        "--history-size", "0") as server:
        done = _resume_swarm(server.ws_url, prefix)
    assert done.returncode == 1, (done.stdout + done.stderr)[-4000:]
    row = _stats(prefix)[("RESUME", "resume")]
    assert int(row["Request Count"]) == int(row["Failure Count"]) > 0
    failures = report.read_failures(str(prefix))
    assert {f["Error"] for f in failures} == {
        "ResumeFailed('not recovered: history disabled')"}
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())["resume"]
    assert summary["recovered"] == 0
    assert summary["reasons"] == {"history disabled": summary["resumes"]}


def test_seq_tracker_counts_gaps_duplicates_and_checks_the_resume_seam() -> None:
    problems: list[tuple[str, int]] = []
    totals = ResumeTotals()

    def report_problem(kind: str, messages: int, _detail: str) -> None:
        problems.append((kind, messages))
        totals.problem(kind, messages)

    seqs = SeqTracker(report_problem)
    assert seqs.since() is None  # no position before the first welcome
    seqs.plain_join()
    seqs.welcome("e1", 4)
    for seq in (5, 6, 6, 9):  # a duplicate, then 7 and 8 skipped
        seqs.chat(seq)
    assert problems == [("duplicate", 1), ("gap", 2)]
    assert seqs.since() == {"epoch": "e1", "seq": 9}
    seqs.history({"recovered": True, "messages": [{"seq": 10}, {"seq": 11}]})
    seqs.welcome("e1", 13)  # live would start past the replay's end: 12, 13 lost
    assert problems[-1] == ("gap", 2) and seqs.seq == 13
    assert seqs.resume is not None and (seqs.resume.recovered, seqs.resume.replayed) == (True, 2)
    totals.outcome(seqs.resume)
    # a resume that is not recovered: its hole is the resume's failure, not a gap
    seqs.since()
    seqs.history({"recovered": False, "reason": "epoch changed", "messages": [{"seq": 1}]})
    seqs.welcome("e2", 1)
    seqs.chat(2)
    assert len(problems) == 3 and seqs.seq == 2
    assert seqs.resume is not None
    totals.outcome(seqs.resume)
    # no history answer at all (a server that ignores `since`)
    seqs.since()
    seqs.welcome(None, None)
    # welcome() has unset the position (mypy keeps seqs.seq narrowed to int from above)
    assert (seqs.resume is not None and seqs.resume.history is False
            and cast(int | None, seqs.seq) is None)
    totals.outcome(seqs.resume)
    seqs.chat(40)  # no position: nothing to check
    assert len(problems) == 3
    assert totals.take() == {"resumes": 3, "recovered": 1, "not_recovered": 1, "no_history": 1,
                             "replayed": 3, "gaps": 2, "missing": 4, "duplicates": 1,
                             "reasons": {"epoch changed": 1}}
    assert totals.to_dict()["resumes"] == 0  # taken: counting starts again


def test_a_misspelt_scenario_is_one_line_before_locust_starts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
         "--headless", "--users", "1", "--run-time", "1s", "--host", "ws://127.0.0.1:9"],
        cwd=ROOT, env={**os.environ, "SCENARIO": "fanuot"}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "locust: SCENARIO must be one of capacity, fanout, swarm, resume, storm, all, "
        "not 'fanuot'"
    ], done.stderr[-2000:]
