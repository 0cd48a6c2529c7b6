"""Locust swarms for roomcast (docs/loadtest.md).

    locust -f loadtest/locustfile.py --host ws://127.0.0.1:8080            # web UI on :8089
    locust -f loadtest/locustfile.py --host ws://127.0.0.1:8080 --headless -u 2000 -r 100 -t 2m
    SCENARIO=capacity locust -f loadtest/locustfile.py ...                   # or --tags capacity

User classes (scenarios):

* ``HoldUser`` (``capacity``): holds one idle, joined connection; checks it every 20-30 s and
  reconnects when it was closed.
* ``FanoutUser`` (``fanout``): rooms of ``--fanout-room-size`` members; the first member of each
  room publishes stamped messages at ``--fanout-rate`` per second, the others listen.
* ``ChatUser`` (``swarm``): rooms of ``--room-sizes``; most users only listen, a share
  (``--chat-fraction``) chats every ``--chat-interval`` seconds on average, and every user leaves
  its room after about ``--session-seconds`` to join another one or to reconnect later.
* ``ResumeUser`` (``resume``): rooms of ``--resume-room-size``; the first member chats at
  ``--resume-rate`` and stays; every other member's connection drops (an RST) after about
  ``--resume-interval`` seconds, and after about ``--resume-offline`` seconds it reconnects and
  joins with ``since`` its position. Every chat's ``seq`` is checked (loadtest/resume.py).

Request types in the reports: ``WS`` (connect, join, send, and failures: closed, receive),
``FANOUT`` (per-receipt latency, a bounded sample; last member latency, one per message) and
``RESUME`` (``resume``: join with ``since`` to welcome, failed when not ``recovered`` or
without a ``history`` answer; ``gap`` and ``duplicate``: always failures, one per chat sequence
that skipped or repeated seqs).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any

import gevent
from locust import User, events, tag, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest import serverstats
from loadtest.fanout import FanoutTotals, FanoutTracker, stamp
from loadtest.resume import ResumeTotals, SeqTracker
from loadtest.rooms import RoomDirectory, Seat, SeatPlan
from loadtest.settings import SCENARIOS, Settings, add_arguments, parse_source_addresses
from loadtest.wsconn import ChatConnection, Target

log = logging.getLogger("roomcast.loadtest")

SCENARIO_CLASSES = {
    "capacity": {"HoldUser"},
    "fanout": {"FanoutUser"},
    "swarm": {"ChatUser"},
    "resume": {"ResumeUser"},
    # the default mix; `resume` runs on its own (SCENARIO=resume), so that the reference
    # runs of the other scenarios keep their shape
    "all": {"HoldUser", "FanoutUser", "ChatUser"},
}
FLUSH_INTERVAL = 1.0
SAMPLE_INTERVAL = 2.0


# ---- per-process runtime ---------------------------------------------------------------------


class ProcessState:
    """Everything one Locust process (local runner or worker) shares between its users."""

    def __init__(self, environment: Environment, settings: Settings) -> None:
        if not environment.host:
            raise ValueError("give the server as --host ws://HOST:PORT")
        self.environment = environment
        self.settings = settings
        self.token = secrets.token_hex(3)
        self.target = Target(environment.host)
        self.sources = parse_source_addresses(settings.source_addresses, self.target.host)
        self.directory = RoomDirectory()
        self.tracker = FanoutTracker(self._fire_fanout, settings.receipt_events,
                                     settings.fanout_timeout)
        prefix = f"{settings.room_prefix}-{self.token}"
        self.plans = {
            "swarm": SeatPlan(f"{prefix}-chat", settings.room_sizes),
            "fanout": SeatPlan(f"{prefix}-fan", (settings.fanout_room_size,)),
            "capacity": SeatPlan(f"{prefix}-idle", (settings.capacity_room_size,)),
            "resume": SeatPlan(f"{prefix}-resume", (settings.resume_room_size,)),
        }
        self.resumes = ResumeTotals()
        self._members = itertools.count(1)
        self._messages = itertools.count(1)
        self.held = 0
        self.held_peak = 0
        self._flusher = gevent.spawn(self._flush_loop)

    def fire_ws(self, name: str, response_time: float, length: int, exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=response_time,
            response_length=length, exception=exc, context={},
        )

    def _fire_fanout(self, name: str, response_time: float, length: int,
                     exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="FANOUT", name=name, response_time=response_time,
            response_length=length, exception=exc, context={},
        )

    def on_held(self, change: int) -> None:
        self.held += change
        self.held_peak = max(self.held_peak, self.held)

    def fire_resume(self, name: str, response_time: float, exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="RESUME", name=name, response_time=response_time,
            response_length=0, exception=exc, context={},
        )

    def sequence_problem(self, kind: str, messages: int, detail: str) -> None:
        """A gap or a duplicate in a resume user's chats: counted, and a failed request."""
        self.resumes.problem(kind, messages)
        cls = SequenceGap if kind == "gap" else DuplicateChat
        self.fire_resume(kind, 0.0, cls(f"{messages} message(s)" if kind == "gap" else "seq"))
        log.debug("roomcast resume %s: %s", kind, detail)

    def new_connection(self, seq_tracker: SeqTracker | None = None) -> ChatConnection:
        member = next(self._members)
        source = self.sources[member % len(self.sources)] if self.sources else None
        return ChatConnection(
            member=member, username=f"{self.token}-{member}", target=self.target,
            source_address=source, fire=self.fire_ws, tracker=self.tracker,
            directory=self.directory, timeout=self.settings.connect_timeout,
            on_held=self.on_held, seq_tracker=seq_tracker,
        )

    def next_message_id(self) -> str:
        return f"{self.token}-{next(self._messages)}"

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL)
            self.tracker.flush()

    def stop(self) -> None:
        self._flusher.kill(block=False)
        self.tracker.flush(expire_all=True)


_state: ProcessState | None = None


def process_state(environment: Environment) -> ProcessState:
    global _state
    if _state is None or _state.environment is not environment:
        _state = ProcessState(environment, Settings.from_options(environment.parsed_options))
    return _state


# ---- users -----------------------------------------------------------------------------------


class RoomcastUser(User):
    """A user with one chat connection and one seat in a room of its plan."""

    abstract = True
    plan = "capacity"

    def on_start(self) -> None:
        self.state = process_state(self.environment)
        self.conn: ChatConnection | None = None
        self.seat: Seat | None = None
        self.healthy = False

    def ensure_joined(self) -> bool:
        """Connects and joins when needed; False (already reported) when that failed."""
        if self.conn is None:
            self.conn = self.state.new_connection()
        if not self.conn.alive:
            self.conn.close()
            if not self.conn.connect():
                return False
        if not self.conn.joined:
            if self.seat is None:
                self.seat = self.state.plans[self.plan].take()
            if not self.conn.join(self.seat.room):
                return False
        return True

    def release_seat(self) -> None:
        if self.seat is not None:
            self.state.plans[self.plan].release(self.seat)
            self.seat = None

    def publish(self) -> None:
        if self.conn is None or self.conn.room is None or not self.conn.joined:
            return
        state = self.state
        message_id = state.next_message_id()
        sent = time.time()
        text = stamp(message_id, sent, state.settings.message_bytes)
        members = state.directory.members_since(self.conn.room, sent)
        state.tracker.published(message_id, self.conn.room, sent, members, len(text))
        if not self.conn.chat(text):
            state.tracker.cancel(message_id)

    def on_stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.release_seat()


class HoldUser(RoomcastUser):
    """Connection capacity: one idle, joined connection per user."""

    weight = 7
    plan = "capacity"

    def wait_time(self) -> float:
        return random.uniform(20, 30) if self.healthy else random.uniform(1, 3)

    @tag("capacity")
    @task
    def hold(self) -> None:
        self.healthy = self.ensure_joined()


class FanoutUser(RoomcastUser):
    """Fan-out latency: the first member of each room publishes at a fixed rate."""

    weight = 1
    plan = "fanout"

    def on_start(self) -> None:
        super().on_start()
        self.next_due = 0.0

    def is_publisher(self) -> bool:
        return self.seat is not None and self.seat.position == 1

    def wait_time(self) -> float:
        if not self.healthy:
            return random.uniform(1, 3)
        if not self.is_publisher():
            return random.uniform(5, 10)
        self.next_due = max(self.next_due + 1.0 / self.state.settings.fanout_rate,
                            time.monotonic() - 1.0)
        return max(0.0, self.next_due - time.monotonic())

    @tag("fanout")
    @task
    def step(self) -> None:
        self.healthy = self.ensure_joined()
        if self.healthy and self.is_publisher():
            if not self.next_due:
                self.next_due = time.monotonic()
            self.publish()


class ChatUser(RoomcastUser):
    """Chat swarm: mostly idle members, some chatters, leaves and joins over time."""

    weight = 2
    plan = "swarm"

    def on_start(self) -> None:
        super().on_start()
        settings = self.state.settings
        self.chatter = random.random() < settings.chat_fraction
        self.leave_at = math.inf
        self.next_chat = math.inf
        self.offline_until = 0.0

    def _schedule(self, now: float) -> None:
        settings = self.state.settings
        self.leave_at = now + random.expovariate(1.0 / settings.session_seconds)
        if self.chatter:
            self.next_chat = now + random.expovariate(1.0 / settings.chat_interval)

    def wait_time(self) -> float:
        now = time.monotonic()
        if not self.healthy:
            return max(self.offline_until - now, random.uniform(1, 3))
        return min(max(min(self.leave_at, self.next_chat) - now, 0.0), 30.0)

    @tag("swarm")
    @task
    def step(self) -> None:
        now = time.monotonic()
        conn = self.conn
        if not (self.healthy and conn is not None and conn.alive and conn.joined):
            self.healthy = self.ensure_joined()
            if self.healthy:
                self._schedule(now)
            return
        if now >= self.leave_at:
            if random.random() < 0.5:
                conn.leave()  # switch rooms on the same connection
                self.release_seat()
                self.healthy = self.ensure_joined()
            else:
                conn.close()  # go away for a while, then come back on a new connection
                self.release_seat()
                self.healthy = False
                self.offline_until = now + random.uniform(2, 10)
                return
            self._schedule(now)
        elif now >= self.next_chat:
            self.publish()
            self.next_chat = now + random.expovariate(1.0 / self.state.settings.chat_interval)


class ResumeFailed(Exception):
    """A join with ``since`` whose answer was not ``recovered: true`` (the text says why)."""


class SequenceGap(Exception):
    pass


class DuplicateChat(Exception):
    pass


class ResumeUser(RoomcastUser):
    """Lossless resume: users whose connection drops now and then, and who come back with
    ``since`` their position; the first member of each room chats on and stays."""

    weight = 1
    plan = "resume"

    def on_start(self) -> None:
        super().on_start()
        self.seqs = SeqTracker(self.state.sequence_problem)
        self.drop_at = math.inf
        self.next_chat = 0.0
        self.offline_until = 0.0

    def is_publisher(self) -> bool:
        return self.seat is not None and self.seat.position == 1

    def ensure_joined(self) -> bool:
        if self.conn is None:
            self.conn = self.state.new_connection(self.seqs)
        if not self.conn.alive:
            self.conn.close()
            if not self.conn.connect():
                return False
        if self.conn.joined:
            return True
        if self.seat is None:
            self.seat = self.state.plans[self.plan].take()
        since = self.seqs.since()
        if since is None:
            self.seqs.plain_join()
            return self.conn.join(self.seat.room)
        start = time.perf_counter()
        if not self.conn.join(self.seat.room, since=since):
            return False  # reported as a failed join
        outcome = self.seqs.resume
        assert outcome is not None
        self.state.resumes.outcome(outcome)
        exc = None
        if not outcome.history:
            exc = ResumeFailed("no history answer")
        elif not outcome.recovered:
            exc = ResumeFailed(f"not recovered: {outcome.reason}")
        self.state.fire_resume("resume", (time.perf_counter() - start) * 1000.0, exc)
        return True

    def wait_time(self) -> float:
        now = time.monotonic()
        if not self.healthy:
            return max(self.offline_until - now, 0.2)
        if self.is_publisher():
            return max(0.0, self.next_chat - now)
        return min(max(self.drop_at - now, 0.0), 30.0)

    @tag("resume")
    @task
    def step(self) -> None:
        now = time.monotonic()
        conn = self.conn
        settings = self.state.settings
        if not (self.healthy and conn is not None and conn.alive and conn.joined):
            self.healthy = self.ensure_joined()
            if self.healthy:
                self.drop_at = now + random.expovariate(1.0 / settings.resume_interval)
                self.next_chat = now
            return
        if self.is_publisher():
            self.next_chat = max(self.next_chat + 1.0 / settings.resume_rate, now - 1.0)
            conn.chat(f"resume {self.seat.room if self.seat else '?'} {now:.3f}")
        elif now >= self.drop_at:
            conn.abort()  # keeps its seat: it comes back to the same room
            self.healthy = False
            self.offline_until = now + settings.resume_offline * random.uniform(0.5, 1.5)


# ---- run-wide bookkeeping (master or local runner) ---------------------------------------------


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
        self._sampler = gevent.spawn(self._sample_loop)

    def local_held(self) -> int:
        return _state.held if _state is not None else 0

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
        if _state is not None and not isinstance(self.environment.runner, MasterRunner):
            self.totals.add_delta(_state.tracker.take_delta())
            self.resumes.add(_state.resumes.take())

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
        if _state is not None and not isinstance(self.environment.runner, MasterRunner):
            held_peak = max(held_peak or 0, _state.held_peak)
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


_monitor: RunMonitor | None = None


def selected_scenario() -> str:
    scenario = os.environ.get("SCENARIO", "all").strip().lower() or "all"
    if scenario not in SCENARIOS:
        raise ValueError(f"SCENARIO must be one of {', '.join(SCENARIOS)}, not {scenario!r}")
    return scenario


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    """Keeps only the user classes of the chosen scenario (SCENARIO variable and/or --tags)."""
    wanted = set(SCENARIO_CLASSES[selected_scenario()])
    tags = getattr(environment.parsed_options, "tags", None) if environment.parsed_options else None
    if tags:
        wanted &= set().union(*(SCENARIO_CLASSES.get(t, set()) for t in tags))
    kept = [cls for cls in environment.user_classes if cls.__name__ in wanted]
    if not kept:
        raise ValueError(f"no user class left for SCENARIO={selected_scenario()} and tags={tags}")
    environment.user_classes[:] = kept
    if environment.available_user_classes:
        for name in list(environment.available_user_classes):
            if name not in wanted:
                del environment.available_user_classes[name]


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    global _state, _monitor
    settings = Settings.from_options(environment.parsed_options)
    if not isinstance(environment.runner, MasterRunner):
        if _state is not None:
            _state.stop()
        _state = ProcessState(environment, settings)
    if not isinstance(environment.runner, WorkerRunner):
        if _monitor is not None:
            _monitor.stop()
        _monitor = RunMonitor(environment, settings, selected_scenario())


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    if _state is not None:
        _state.stop()
    if _monitor is not None:
        _monitor.write()
        _monitor.stop()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    if _monitor is not None and isinstance(environment.runner, MasterRunner):
        _monitor.write()  # again: the workers' final reports may have arrived since test_stop


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any]) -> None:
    if _state is not None:
        data["roomcast"] = {"held": _state.held, "fanout": _state.tracker.take_delta(),
                            "resume": _state.resumes.take()}


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any]) -> None:
    if _monitor is not None:
        _monitor.on_worker_report(client_id, data)
