"""One Locust process's runtime (local runner or worker): what its users share, and the one
current instance.

A ``ProcessState`` names the process's rooms with its own token (so that a room's members all
live in one process, loadtest/rooms.py), hands out the rooms' seats and the connections, keeps
the fan-out tracker, the resume totals and the held-connections gauge that the process reports
to the run monitor (loadtest/monitor.py), and, for ``SCENARIO=storm``, the process's storm
performer (loadtest/stormperformer.py). The event listeners (loadtest/locustfile.py) start a
new one with every test; a user takes the current one (``process_state``).
"""

from __future__ import annotations

import itertools
import logging
import secrets

import gevent
from locust.env import Environment

from loadtest.failures import DuplicateChat, ResumeFailed, SequenceGap
from loadtest.fanout import FanoutTracker
from loadtest.resume import ResumeOutcome, ResumeTotals, SeqTracker
from loadtest.rooms import RoomDirectory, SeatPlan
from loadtest.settings import Settings, parse_source_addresses, selected_scenario
from loadtest.stormperformer import StormPerformer
from loadtest.wsconn import ChatConnection, Target

log = logging.getLogger("roomcast.loadtest")

FLUSH_INTERVAL = 1.0


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
            "storm": SeatPlan(f"{prefix}-storm", (settings.storm_room_size,)),
        }
        self.resumes = ResumeTotals()
        self._members = itertools.count(1)
        self._messages = itertools.count(1)
        self.held = 0
        self.held_peak = 0
        self._flusher = gevent.spawn(self._flush_loop)
        self.storm = StormPerformer(self) if selected_scenario() == "storm" else None

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

    def resumed(self, outcome: ResumeOutcome, response_time: float) -> None:
        """A resume's answer: counted, and a RESUME request, failed unless it was recovered."""
        self.resumes.outcome(outcome)
        exc = None
        if not outcome.history:
            exc = ResumeFailed("no history answer")
        elif not outcome.recovered:
            exc = ResumeFailed(f"not recovered: {outcome.reason}")
        self.fire_resume("resume", response_time, exc)

    def sequence_problem(self, kind: str, messages: int, detail: str) -> None:
        """A gap or a duplicate in a resume user's chats: counted, and a failed request."""
        self.resumes.problem(kind, messages)
        cls = SequenceGap if kind == "gap" else DuplicateChat
        self.fire_resume(kind, 0.0, cls(f"{messages} message(s)" if kind == "gap" else "seq"))
        log.debug("roomcast resume %s: %s", kind, detail)

    def new_connection(self, seq_tracker: SeqTracker | None = None,
                       target: Target | None = None, held: bool = True) -> ChatConnection:
        """A new user connection (not connected yet); ``held=False`` for the process's own
        storm publishers, which are not users and do not count as held."""
        member = next(self._members)
        source = self.sources[member % len(self.sources)] if self.sources else None
        return ChatConnection(
            member=member, username=f"{self.token}-{member}", target=target or self.target,
            source_address=source, fire=self.fire_ws, tracker=self.tracker,
            directory=self.directory, timeout=self.settings.connect_timeout,
            on_held=self.on_held if held else _not_held, seq_tracker=seq_tracker,
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
        if self.storm is not None:
            self.storm.stop()


def _not_held(_change: int) -> None:
    pass


_state: ProcessState | None = None


def process_state(environment: Environment) -> ProcessState:
    global _state
    if _state is None or _state.environment is not environment:
        _state = ProcessState(environment, Settings.from_options(environment.parsed_options))
    return _state


def current() -> ProcessState | None:
    """This process's state (None before the first test, and on a master)."""
    return _state


def restart(environment: Environment, settings: Settings) -> ProcessState:
    """A new state for a new test, the previous one stopped."""
    global _state
    if _state is not None:
        _state.stop()
    _state = ProcessState(environment, settings)
    return _state
