"""What history costs, measured with the Locust harness: the reconnect storm (one node, two
nodes on a real redis-server) and history on vs off (docs/loadtest.md).

The end-to-end tests run ``python -m loadtest.run`` exactly as documented, with ``--quick``, a
real server, a real redis-server and real Locust, each in a subprocess (Locust monkey-patches
the standard library with gevent, which must not leak into pytest), and read the figures it
wrote (the history comparison with a smaller quick shape, ``TEST_SHAPE``). The rest checks the
pure pieces: merging the processes' storm replies, the steady window of the history comparison,
the README's sub-sections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest import compare, report, storm
from loadtest.fanout import Histogram
from loadtest.resume import SeqTracker, text_mark
from loadtest.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


# --compare-history --quick for the suite: run.main as `python -m loadtest.run` runs it, with
# compare.QUICK_SHAPE made smaller in the subprocess. 40 users in 4 rooms of 10 at 50 msg/s make
# the quick run's 2,000 deliveries/s and fill each room's 100 history entries in 2 s; legs of 6 s
# sampled every 0.5 s take ~15 s for the pair (the documented --quick, 14 s legs: ~30 s). Legs of
# 4 s left a steady window of 1.2 s on a clean clone's busy CI run, under the three intervals
# the test asks for: the users' joins had eaten the rest.
TEST_SHAPE = compare.Shape(users=40, spawn_rate=100.0, run_time="6s", room_size=10, rate=50,
                           settle=1.0, interval=0.5)


def _run(tmp_path: Path, *args: str, timeout: float = 75, shape: compare.Shape | None = None,
         ) -> tuple[subprocess.CompletedProcess[str], str]:
    entry = ["-m", "loadtest.run"] if shape is None else [
        "-c", f"import sys; from loadtest import compare, run; compare.QUICK_SHAPE = compare."
        f"{shape!r}; sys.exit(run.main(sys.argv[1:]))"]
    cmd = [sys.executable, *entry, "--quick", "--out", str(tmp_path),
           "--readme", str(tmp_path / "README.md"), *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return done, (done.stdout + done.stderr)[-6000:]


def _summary(tmp_path: Path, prefix: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / f"{prefix}_summary.json").read_text())
    return data


def _check_lossless_round(r: dict[str, Any], clients: int) -> None:
    assert r["clients"] == r["reconnected"] == r["resumes_sent"] == clients
    assert r["welcomed"] == r["recovered"] == r["live_again"] == clients
    assert r["not_recovered"] == r["no_history"] == r["join_failed"] == 0
    assert r["gaps"] == r["missing"] == r["duplicates"] == r["mismatched"] == 0
    # they were away while their rooms chatted on: every one got messages back
    assert r["replayed"] >= clients and r["replayed_per_client"] >= 1
    assert 0 < r["all_resumed_ms"] < 20_000 and 0 < r["reconnect_ms"] < 20_000
    assert r["live_p50_ms"] <= r["live_p99_ms"] <= r["live_max_ms"] <= r["all_resumed_ms"] + 1
    assert r["server_cpu_ms"] > 0 and r["cpu_per_resume_us"] > 0
    # the servers' own count agrees
    assert r["server_counted_resumes"] == r["server_counted_resumes_recovered"] == clients
    assert r["complete"] and r["lossless"]


@pytest.mark.timeout(90)
def test_quick_storm_on_one_node_is_lossless(tmp_path: Path) -> None:
    done, output = _run(tmp_path, "--scenario", "storm")
    assert done.returncode == 0, output
    summary = _summary(tmp_path, "storm-1node")
    s = summary["storm"]
    assert s["nodes"] == 1 and s["users_joined"] == 100 and s["finished"] and s["lossless"]
    assert len(s["cpu_pids"]) == 1
    (r,) = s["rounds"]
    _check_lossless_round(r, 100)
    assert r["resumed_on_other_node"] == 0
    assert summary["resume"]["resumes"] == summary["resume"]["recovered"] == 100
    # Locust's own view: one STORM event each, no failure at all
    stats = report.read_stats(str(tmp_path / "storm-1node"))
    rows = {(row["Type"], row["Name"]): row for row in stats}
    assert rows[("STORM", "all resumed")]["Request Count"] == "1"
    assert rows[("STORM", "reconnect")]["Failure Count"] == "0"
    assert int(rows[("RESUME", "resume")]["Request Count"]) == 100
    assert rows[("", "Aggregated")]["Failure Count"] == "0"
    # the summary: its own sub-section of the loadtest section, and the HTML report's figures
    readme = (tmp_path / "README.md").read_text()
    first, last = report.markers("storm-1node")
    section = readme[readme.index(first):readme.index(last)]
    assert "### Reconnect storm (Locust), one node" in section and "Lossless: **yes**" in section
    assert readme.index(report.START) < readme.index(first) < readme.index(report.END)
    page = (tmp_path / "storm-1node.html").read_text(encoding="utf-8")
    assert "Storm round 1: clients, all resumed" in page


@pytest.mark.timeout(90)
def test_quick_storm_on_two_nodes_resumes_every_client_on_the_other_node(tmp_path: Path) -> None:
    done, output = _run(tmp_path, "--scenario", "storm", "--nodes", "2")
    assert done.returncode == 0, output
    assert "redis-server exited with 0" in done.stdout and "node B exited with 0" in done.stdout
    s = _summary(tmp_path, "storm-2nodes")["storm"]
    assert s["nodes"] == 2 and len(s["hosts"]) == 2 and s["lossless"]
    assert len(s["cpu_pids"]) == 3  # both nodes and redis-server
    (r,) = s["rounds"]
    _check_lossless_round(r, 100)
    assert r["resumed_on_other_node"] == 100
    readme = (tmp_path / "README.md").read_text()
    assert "### Reconnect storm (Locust), 2 nodes" in readme


@pytest.mark.timeout(90)
def test_quick_storm_fails_when_the_server_cannot_resume(tmp_path: Path) -> None:
    """The storm is a check, not only a stopwatch: without history nobody is recovered."""
    done, output = _run(tmp_path, "--scenario", "storm", "--server-arg=--history-size=0")
    assert done.returncode == 1, output
    s = _summary(tmp_path, "storm-1node")["storm"]
    (r,) = s["rounds"]
    assert r["welcomed"] == 100 and r["recovered"] == 0
    assert r["reasons"] == {"history disabled": 100}
    assert not r["lossless"] and not s["lossless"]
    causes = {f["Name"]: f["Error"] for f in report.read_failures(str(tmp_path / "storm-1node"))}
    assert causes["all resumed"] == (
        "StormNotLossless('100 of 100 not recovered (history disabled: 100)')")
    assert causes["resume"] == "ResumeFailed('not recovered: history disabled')"
    assert "Lossless: **no**" in (tmp_path / "README.md").read_text()


@pytest.mark.timeout(60)
def test_quick_history_comparison_computes_the_ratio_and_memory(tmp_path: Path) -> None:
    shape = TEST_SHAPE
    done, output = _run(tmp_path, "--compare-history", shape=shape)
    assert done.returncode == 0, output
    result = json.loads((tmp_path / "history_compare.json").read_text())
    legs = {leg["label"]: leg for leg in result["legs"]}
    assert set(legs) == {"off", "on"} and result["context"]["command"].startswith(
        "python -m loadtest.run --quick")
    assert result["users"] == shape.users and result["settle_s"] == shape.settle
    assert result["locust_args"] == shape.locust_args()
    rooms = shape.users // shape.room_size
    for leg in legs.values():
        assert leg["locust_exit"] == 0 and leg["failures"] == 0 and leg["lost_messages"] == 0
        # most of the leg's steady part, at least three of the probe's intervals
        assert leg["window_s"] >= 3 * shape.interval
        # 4 rooms of 10 at 50 msg/s: 2,000 deliveries/s
        assert 1500 <= leg["deliveries_per_s"] <= 2500
        assert 0 < leg["cpu_per_delivery_us"] < 1000
        assert 100 < leg["bytes_per_delivery"] < 400
    assert "--history-size 0" in legs["off"]["server_command"]
    assert "--history-size" not in legs["on"]["server_command"]
    assert not legs["off"]["history_messages"]  # nothing stored
    assert legs["on"]["history_messages"] == rooms * 100 == 400  # x --history-size 100
    # counted bytes: the frame, plus 48 B per entry and a room's 1,200 B over its messages
    per = legs["on"]["bytes_per_stored_message"]
    assert legs["on"]["bytes_per_delivery"] < per < legs["on"]["bytes_per_delivery"] + 100
    (pair,) = result["pairs"]
    assert pair["ratio"] == pytest.approx(pair["on_us"] / pair["off_us"], abs=0.001)
    assert result["ratio"] == pair["ratio"] > 0 and isinstance(result["met"], bool)
    assert result["bytes_per_stored_message"] == per
    readme = (tmp_path / "README.md").read_text()
    first, last = report.markers("history")
    section = readme[readme.index(first):readme.index(last)]
    shown = f"{per:,.1f}".removesuffix(".0")  # a whole number of bytes is written as one
    assert f"**{result['ratio']:.2f}x**" in section and f"**{shown} B**" in section
    assert "history-on-1.html" in section and (tmp_path / "history-on-1.html").exists()


# ---- the pure pieces


def test_storm_merges_the_processes_replies_into_one_round() -> None:
    a, b = Histogram(), Histogram()
    for ms in (10.0, 20.0):
        a.add(ms)
    b.add(300.0)
    resumed = storm.merge([
        {"sent": 2, "welcomed": 2, "recovered": 2, "replayed": 10, "moved": 2,
         "last_welcome_at": 100.02, "last_history_at": 100.01, "live_ms": a.to_wire(),
         "reasons": {}},
        {"sent": 1, "welcomed": 1, "recovered": 0, "not_recovered": 1, "replayed": 3,
         "moved": 1, "last_welcome_at": 100.3, "last_history_at": None, "live_ms": b.to_wire(),
         "reasons": {"too old": 1}},
    ])
    fig = storm.round_figures(
        1, dropped=storm.merge([{"clients": 2}, {"clients": 1}]),
        connected=storm.merge([{"ok": 2, "last_at": 99.5}, {"ok": 1, "last_at": 99.8}]),
        resumed=resumed,
        live=storm.merge([{"live_again": 2, "gaps": 0}, {"live_again": 1, "gaps": 0}]),
        reconnect_at=99.0, resume_at=100.0, server_cpu_s=0.003,
        counted_before={"resumes": 5, "resumes_recovered": 5},
        counted_after={"resumes": 8, "resumes_recovered": 7},
    )
    assert fig["clients"] == fig["reconnected"] == fig["welcomed"] == 3
    assert fig["reconnect_ms"] == 800.0 and fig["all_resumed_ms"] == 300.0
    assert fig["all_history_ms"] == 10.0  # the latest of the times that came
    assert fig["live_p50_ms"] == 20.0 and fig["live_max_ms"] == 300.0
    assert fig["reasons"] == {"too old": 1} and fig["replayed_per_client"] == 4.3
    assert fig["cpu_per_resume_us"] == 1000.0 and fig["resumed_on_other_node"] == 3
    assert fig["server_counted_resumes"] == 3 and fig["server_counted_resumes_recovered"] == 2
    assert fig["complete"] and not fig["lossless"]
    assert storm.problems(fig) == ["1 of 3 not recovered (too old: 1)"]
    fixed = {**fig, "recovered": 3}
    assert storm.lossless(fixed) and storm.problems(fixed) == []
    fixed["lossless"] = True
    assert not storm.lossless({**fixed, "mismatched": 1})
    assert storm.problems({**fixed, "gaps": 2, "live_again": 2}) == [
        "1 of 3 got no live chat after the resume", "2 gaps"]
    assert storm.summary([fixed], nodes=1)["lossless"]
    assert not storm.summary([], nodes=1)["lossless"]


def test_seq_tracker_marks_check_each_chat_against_its_publishers_number() -> None:
    problems: list[tuple[str, int]] = []
    seqs = SeqTracker(lambda kind, n, _detail: problems.append((kind, n)), marks=True)
    seqs.plain_join()
    seqs.welcome("e", 2)
    seqs.chat(3, mark=3)
    seqs.chat(4, mark=5)  # seq 4 carries the publisher's 5th chat
    assert problems == [("mismatch", 1)] and seqs.mismatched == 1
    assert seqs.live_since_welcome == 2
    seqs.since()
    seqs.history({"recovered": True, "messages": [{"seq": 5, "text": "#5 x"},
                                                  {"seq": 6, "text": "#7 x"}]})
    seqs.welcome("e", 6)
    assert problems == [("mismatch", 1), ("mismatch", 1)] and seqs.live_since_welcome == 0
    assert text_mark("#12 xxx") == 12 and text_mark("lt1 m 1.0") is None
    assert text_mark("#x") is None and text_mark(None) is None
    plain = SeqTracker(lambda *_: problems.append(("?", 0)))
    plain.plain_join()
    plain.welcome("e", 0)
    plain.chat(1, mark=9)  # without marks nothing is checked but the seq
    assert len(problems) == 2


def test_the_receiver_reads_the_publishers_number_from_a_real_chat_frame() -> None:
    from loadtest.wsconn import MARK  # noqa: PLC0415  (imports gevent: only this test)
    from server.protocol import ChatMessage, encode  # noqa: PLC0415

    frame = encode(ChatMessage("ab-1", "#42 " + "x" * 100, 1700000000000, 42))
    match = MARK.search(frame)
    assert match is not None and int(match[1]) == 42
    assert MARK.search(encode(ChatMessage("#1 ", "lt1 1 2.0 x", 1, 3))) is None


def test_storm_settings_are_checked() -> None:
    settings = Settings.from_options(None)
    assert (settings.storm_room_size, settings.storm_rate, settings.storm_rounds) == (100, 10.0, 1)
    assert settings.storm_hosts == () and settings.storm_resume_on == "other"

    class Options:
        storm_hosts = "ws://127.0.0.1:1, ws://127.0.0.1:2"
        storm_cpu_pids = "12,34"

    parsed = Settings.from_options(Options())  # type: ignore[arg-type]
    assert parsed.storm_hosts == ("ws://127.0.0.1:1", "ws://127.0.0.1:2")
    assert parsed.storm_cpu_pids == (12, 34)

    class Bad:
        storm_resume_on = "elsewhere"

    with pytest.raises(ValueError, match="storm-resume-on"):
        Settings.from_options(Bad())  # type: ignore[arg-type]


def _rows(n: int, members: int, cpu_step: float, deliveries_step: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        rows.append({"t": 2.0 * i, "members": members if 1 <= i < n - 1 else members // 2,
                     "cpu_s": cpu_step * i, "deliveries": deliveries_step * i,
                     "chats": 10 * i, "bytes_sent": 200 * deliveries_step * i, "rss_kb": 1000,
                     "history_messages": 400, "history_bytes": 107_000, "history_rooms": 4})
    return rows


def test_the_history_comparison_measures_the_steady_window_and_the_median_ratio() -> None:
    # members full from t=2 to t=16; settle 3 s: the window is t=6 .. t=16
    rows = _rows(10, 100, cpu_step=0.02, deliveries_step=4000)
    window = compare.steady_window(rows, 100, settle=3.0)
    assert window is not None and (window[0]["t"], window[1]["t"]) == (6.0, 16.0)
    leg = compare.leg_figures(rows, 100, settle=3.0)
    assert leg["window_s"] == 10.0 and leg["deliveries"] == 20_000
    assert leg["cpu_per_delivery_us"] == 5.0 and leg["server_cpu_util"] == 0.01
    assert leg["bytes_per_delivery"] == 200.0 and leg["bytes_per_stored_message"] == 267.5
    assert "error" in compare.leg_figures(rows[:3], 100, settle=3.0)
    assert compare.order(3) == [(1, "off"), (1, "on"), (2, "on"), (2, "off"), (3, "off"),
                                (3, "on")]
    legs = [
        {"pair": 1, "label": "off", "cpu_per_delivery_us": 4.0},
        {"pair": 1, "label": "on", "cpu_per_delivery_us": 4.2, "bytes_per_stored_message": 270,
         "history_messages": 400},
        {"pair": 2, "label": "on", "cpu_per_delivery_us": 5.0, "bytes_per_stored_message": 260,
         "history_messages": 400},
        {"pair": 2, "label": "off", "cpu_per_delivery_us": 4.0},
    ]
    result = compare.compare(legs)
    assert [p["ratio"] for p in result["pairs"]] == [1.05, 1.25]
    assert result["ratio"] == 1.15 and result["met"] is False
    assert result["bytes_per_stored_message"] == 265
    assert compare.compare(legs[:1])["ratio"] is None


def test_the_default_run_keeps_the_other_runs_subsections(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    first, last = report.markers("storm-2nodes")
    # a sub-section before any default run: the loadtest section is made around it
    report.replace_section(readme, f"{first}\nstorm one\n{last}\n", "storm-2nodes")
    text = readme.read_text()
    assert text.startswith(report.START) and text.rstrip().endswith(report.END)
    readme.write_text("# Results\n\n" + text + "\nafter\n")
    report.replace_section(readme, f"{report.START}\n## Load test\nmain\n{report.END}\n")
    text = readme.read_text()
    assert text.startswith("# Results\n\n") and text.endswith("\nafter\n")
    assert "No run of the default scenario" not in text and "storm one" in text
    assert text.index("main") < text.index(first) < text.index(report.END)
    h1, h2 = report.markers("history")
    report.replace_section(readme, f"{h1}\nhistory\n{h2}\n", "history")
    report.replace_section(readme, f"{first}\nstorm two\n{last}\n", "storm-2nodes")
    text = readme.read_text()
    assert "storm one" not in text and text.count(first) == 1
    assert text.index("storm two") < text.index("history") < text.index(report.END)
    report.replace_section(readme, f"{report.START}\n## Load test\nmain again\n{report.END}\n")
    text = readme.read_text()
    assert "main again" in text and "storm two" in text and "history" in text
    assert text.count(report.START) == text.count(report.END) == 1
