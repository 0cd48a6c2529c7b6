"""The run monitor: the run's bookkeeping on the master of a distributed run or the single
local process, and the harness's own reports.

Every 2 s it sums the processes' held connections, fan-out histograms and resume totals (each
worker sends its own with Locust's report to the master; a local process's are read directly,
loadtest/process.py), samples the server (loadtest/serverstats.py) into the timeline, and at the
end writes ``<csv prefix>_summary.json`` (peaks, exact fan-out percentiles, resume and storm
figures, the parameters) and ``<csv prefix>_timeline.csv``. With ``SCENARIO=storm`` it holds the
storm's conductor (loadtest/stormconductor.py), whose figures go into the summary.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment
from locust.runners import MasterRunner

from loadtest import process, serverstats
from loadtest.fanout import FanoutTotals
from loadtest.resume import ResumeTotals
from loadtest.settings import Settings
from loadtest.stormconductor import StormConductor

log = logging.getLogger("roomcast.loadtest")

SAMPLE_INTERVAL = 2.0


class RunMonitor:
    """Sums the processes' gauges and fan-out histograms, samples the server, writes the summary."""

    def __init__(self, environment: Environment, settings: Settings, scenario: str) -> None:
        self.environment = environment
        self.settings = settings
        self.scenario = scenario
        self.totals = FanoutTotals()
        self.resumes = ResumeTotals()
        self.worker_held: dict[str, int] = {}
        self.timeline: list[dict[str, Any]] = []
        self.started = time.time()
        self.server = serverstats.choose(
            settings.server_stats, environment.host or "", settings.server_pid or None,
            settings.metrics_url,
        )
        log.info("roomcast: server stats from %s",
                 self.server.source and (self.server.url or f"/proc/{self.server.pid}"))
        self.conductor = StormConductor(environment, settings) if scenario == "storm" else None
        self._sampler = gevent.spawn(self._sample_loop)

    def local_held(self) -> int:
        state = process.current()
        return state.held if state is not None else 0

    def held(self) -> int:
        if isinstance(self.environment.runner, MasterRunner):
            return sum(self.worker_held.values())
        return self.local_held()

    def on_worker_report(self, client_id: str, data: dict[str, Any]) -> None:
        report = data.get("roomcast")
        if isinstance(report, dict):
            self.worker_held[client_id] = int(report.get("held", 0))
            fanout = report.get("fanout")
            if isinstance(fanout, dict):
                self.totals.add_delta(fanout)
            resumes = report.get("resume")
            if isinstance(resumes, dict):
                self.resumes.add(resumes)

    def collect_local(self) -> None:
        state = process.current()
        if state is not None and not isinstance(self.environment.runner, MasterRunner):
            self.totals.add_delta(state.tracker.take_delta())
            self.resumes.add(state.resumes.take())

    def sample(self) -> dict[str, Any]:
        runner = self.environment.runner
        row: dict[str, Any] = {
            "elapsed_s": round(time.time() - self.started, 1),
            "users": runner.user_count if runner is not None else 0,
            "held": self.held(),
            **self.server.sample(),
        }
        self.timeline.append(row)
        return row

    def cpu_used(self) -> float | None:
        """Server CPU seconds between the first and the last sample that have the figure."""
        values = [r["server_cpu_s"] for r in self.timeline if r["server_cpu_s"] is not None]
        return round(values[-1] - values[0], 2) if len(values) > 1 else None

    def _sample_loop(self) -> None:
        while True:
            self.collect_local()
            self.sample()
            gevent.sleep(SAMPLE_INTERVAL)

    def summary(self) -> dict[str, Any]:
        self.collect_local()
        last = self.sample()

        def peak(key: str) -> Any:
            values = [r[key] for r in self.timeline if r[key] is not None]
            return max(values) if values else None

        held_peak = peak("held")
        state = process.current()
        if state is not None and not isinstance(self.environment.runner, MasterRunner):
            held_peak = max(held_peak or 0, state.held_peak)
        return {
            "scenario": self.scenario,
            "host": self.environment.host,
            "duration_s": round(time.time() - self.started, 1),
            "users_peak": peak("users"),
            "held_peak": held_peak,
            "held_final": last["held"],
            "server": {
                "source": self.server.source,
                "pid": self.server.pid,
                "metrics_url": self.server.url,
                "rss_peak_kb": peak("server_rss_kb"),
                "rss_final_kb": last["server_rss_kb"],
                "connections_peak": peak("server_connections"),
                "fds_peak": peak("server_fds"),
                "members_peak": peak("server_members"),
                "rooms_peak": peak("server_rooms"),
                "cpu_s": self.cpu_used(),
            },
            "fanout": self.totals.summary(),
            "resume": self.resumes.to_dict(),
            **({"storm": self.conductor.summary()} if self.conductor is not None else {}),
            "settings": {k: v for k, v in vars(self.settings).items() if k != "server_pid"},
        }

    def write(self) -> dict[str, Any]:
        summary = self.summary()
        options = self.environment.parsed_options
        prefix = getattr(options, "csv_prefix", None) if options is not None else None
        if prefix:
            Path(prefix).parent.mkdir(parents=True, exist_ok=True)
            Path(f"{prefix}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            with open(f"{prefix}_timeline.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.timeline[0]))
                writer.writeheader()
                writer.writerows(self.timeline)
        log.info("roomcast summary: %s", json.dumps(summary))
        return summary

    def stop(self) -> None:
        self._sampler.kill(block=False)
        if self.conductor is not None:
            self.conductor.stop()
