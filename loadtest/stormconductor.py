"""The reconnect storm's conductor: paces the storm for the whole run, from the master of a
distributed run or the single local process (docs/loadtest.md, scenario ``storm``).

It waits until every process has reported that its users joined, then runs each round: it
orders ``drop``, ``reconnect``, ``resume`` (for one instant, ``RESUME_DELAY`` after the last
reconnection) and ``live`` through Locust's custom messages to the performers
(loadtest/stormperformer.py), merges their replies into the round's figures (loadtest/storm.py),
measures the servers' on-CPU time over the resume and their own resume counts, fires the
``STORM`` requests (``reconnect``, ``all resumed``: failed when the round was not lossless) and
stops the run after ``--storm-rounds`` rounds.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import gevent
import gevent.event
from locust.env import Environment
from locust.runners import WORKER_REPORT_INTERVAL, MasterRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

from loadtest import procstats, serverstats, storm
from loadtest.failures import StormNotLossless
from loadtest.settings import Settings
from loadtest.wsconn import Target

log = logging.getLogger("roomcast.loadtest")

RESUME_DELAY = 0.2  # s from the resume command to the instant every join with since goes out


class StormConductor:
    """Paces the reconnect storm for the whole run (master or local runner): waits for every
    process's users to join, then runs the rounds through custom messages to the performers,
    measures the servers' CPU over each storm, fires the ``STORM`` events and keeps the
    figures for the summary. Stops the run after ``--storm-rounds`` rounds."""

    def __init__(self, environment: Environment, settings: Settings) -> None:
        self.environment = environment
        self.settings = settings
        self.hosts = list(settings.storm_hosts or (environment.host or "",))
        self.ready: dict[str, int] = {}
        self.replies: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        self.participants: list[str] = []
        self.rounds: list[dict[str, Any]] = []
        self.pids = list(settings.storm_cpu_pids) or self._local_pids()
        self.joined_s: float | None = None
        self.finished = False
        self._started = time.monotonic()
        self._arrived = gevent.event.Event()
        self._greenlet = gevent.spawn(self._run)

    def _local_pids(self) -> list[int]:
        """The processes listening on the loopback storm hosts' ports (none when remote)."""
        pids: list[int] = []
        for host in self.hosts:
            try:
                target = Target(host)
            except (ValueError, OSError):
                continue
            if target.address[0].startswith("127."):
                pid = procstats.listener_pid(target.port)
                if pid is not None and pid not in pids:
                    pids.append(pid)
        return pids

    def on_reply(self, node: str, data: dict[str, Any]) -> None:
        phase = str(data.get("phase"))
        if phase == "ready":
            self.ready[node] = int(data.get("users", 0))
        else:
            self.replies.setdefault((phase, int(data.get("round", 0))), {})[node] = data
        self._arrived.set()

    def _wait(self, condition: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._arrived.clear()
            self._arrived.wait(min(remaining, 0.5))
        return True

    def send(self, command: str, number: int, **fields: Any) -> None:
        runner = self.environment.runner
        if runner is not None:
            runner.send_message(storm.COMMAND, {"command": command, "round": number, **fields})

    def collect(self, phase: str, number: int, timeout: float) -> dict[str, Any]:
        """Every participating process's reply to a phase, merged (what came within timeout)."""
        key = (phase, number)
        if not self._wait(lambda: len(self.replies.get(key, {})) >= len(self.participants),
                          timeout):
            log.warning("roomcast storm: round %d: %d of %d processes answered %r", number,
                        len(self.replies.get(key, {})), len(self.participants), phase)
        return storm.merge(self.replies.get(key, {}).values())

    def cpu(self) -> float | None:
        values = [procstats.oncpu_seconds(pid) for pid in self.pids]
        return sum(v for v in values if v is not None) if values and None not in values else None

    def counted(self) -> dict[str, float]:
        """``roomcast_resumes_total`` and ``roomcast_resumes_recovered_total`` over the nodes."""
        names = frozenset({"roomcast_resumes_total", "roomcast_resumes_recovered_total"})
        out: dict[str, float] = {}
        for host in self.hosts:
            try:
                text = serverstats.MetricsSampler(serverstats.metrics_url(host)).fetch()
            except (OSError, ValueError) as exc:
                log.info("roomcast storm: no resume counts from %s: %s", host, exc)
                return {}
            for name, value in serverstats.parse_exposition(text, names).items():
                key = name[len("roomcast_"):-len("_total")]
                out[key] = out.get(key, 0.0) + value
        return out

    def _run(self) -> None:
        runner = self.environment.runner
        settings = self.settings
        expected = 1

        def all_ready() -> bool:
            if isinstance(runner, MasterRunner):
                return len(self.ready) >= max(1, runner.worker_count)
            return len(self.ready) >= expected

        while not all_ready():
            self._arrived.clear()
            self._arrived.wait(0.5)
        self.participants = [node for node, users in self.ready.items() if users > 0]
        self.joined_s = round(time.monotonic() - self._started, 1)
        log.info("roomcast storm: %d users joined over %d process(es) in %.1fs; first drop in "
                 "%gs", sum(self.ready.values()), len(self.participants), self.joined_s,
                 settings.storm_lead)
        gevent.sleep(settings.storm_lead)
        number = 0
        while True:
            number += 1
            figures = self.run_round(number)
            self.rounds.append(figures)
            self._fire(figures)
            log.info("roomcast storm round %d: %s", number, json.dumps(figures))
            if settings.storm_rounds and number >= settings.storm_rounds:
                break
            gevent.sleep(settings.storm_pause)
        self.finished = True
        options = self.environment.parsed_options
        if runner is not None:
            # Locust rewrites its CSV files once per interval and not again when it quits: the
            # last round's STORM rows are in them only after one more write (and, on a master,
            # after the workers' next report).
            reports = WORKER_REPORT_INTERVAL if isinstance(runner, MasterRunner) else 0.0
            gevent.sleep(CSV_STATS_INTERVAL_SEC + reports + 0.2)
            log.info("roomcast storm: %d round(s) done, stopping the run", number)
            headless = bool(getattr(options, "headless", False)) if options else False
            gevent.spawn(runner.quit if headless else runner.stop)

    def run_round(self, number: int) -> dict[str, Any]:
        settings = self.settings
        timeout = settings.storm_timeout + 10.0
        self.send("drop", number)
        dropped = self.collect("dropped", number, 15.0)
        gevent.sleep(settings.storm_outage)
        before = self.counted()
        reconnect_at = time.time()
        self.send("reconnect", number)
        connected = self.collect("connected", number, timeout)
        resume_at = time.time() + RESUME_DELAY
        self.send("resume", number, at=resume_at)
        gevent.sleep(max(0.0, resume_at - time.time() - 0.005))
        cpu0 = self.cpu()
        resumed = self.collect("resumed", number, timeout)
        cpu1 = self.cpu()
        after = self.counted()
        gevent.sleep(settings.storm_tail)
        self.send("live", number)
        live = self.collect("live", number, 15.0)
        return storm.round_figures(
            number, dropped=dropped, connected=connected, resumed=resumed, live=live,
            reconnect_at=reconnect_at, resume_at=resume_at,
            server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            counted_before=before, counted_after=after,
        )

    def _fire(self, figures: dict[str, Any]) -> None:
        def fire(name: str, ms: float | None, exc: Exception | None) -> None:
            self.environment.events.request.fire(
                request_type="STORM", name=name, response_time=ms or 0.0,
                response_length=figures["clients"], exception=exc, context={},
            )

        failed = figures["reconnect_failed"]
        fire("reconnect", figures["reconnect_ms"], StormNotLossless(
            f"{failed} of {figures['clients']} did not reconnect") if failed else None)
        problems = storm.problems(figures)
        fire("all resumed", figures["all_resumed_ms"],
             StormNotLossless("; ".join(problems)) if problems else None)

    def summary(self) -> dict[str, Any]:
        settings = self.settings
        return storm.summary(
            self.rounds, nodes=len(self.hosts), hosts=self.hosts,
            users_joined=sum(self.ready.values()), processes=len(self.participants),
            join_s=self.joined_s, room_size=settings.storm_room_size, rate=settings.storm_rate,
            outage_s=settings.storm_outage, resume_on=settings.storm_resume_on,
            cpu_pids=self.pids, finished=self.finished,
        )

    def stop(self) -> None:
        self._greenlet.kill(block=False)

