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
* ``StormUser`` (``storm``): the reconnect storm. Users join rooms of ``--storm-room-size``
  (each room has one publisher connection of the process, chatting at ``--storm-rate``); once
  all have joined, every user's connection dies at the same instant, they all reconnect (to
  the next of ``--storm-hosts``), and then all send their ``join`` with ``since`` at once. The
  conductor (the master, or the local runner) paces the phases through Locust's custom
  messages (loadtest/storm.py); after ``--storm-rounds`` storms the run stops.

Request types in the reports: ``WS`` (connect, join, send, and failures: closed, receive),
``FANOUT`` (per-receipt latency, a bounded sample; last member latency, one per message) and
``RESUME`` (``resume``: join with ``since`` to welcome, failed when not ``recovered`` or
without a ``history`` answer; ``gap`` and ``duplicate``: always failures, one per chat sequence
that skipped or repeated seqs; ``mismatch`` in storm rooms) and ``STORM`` (one per storm
round: ``reconnect``, ``all resumed``, ``live again``; failed when the round was not lossless).
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
import gevent.event
from locust import User, events, tag, task
from locust.env import Environment
from locust.rpc.protocol import Message
from locust.runners import MasterRunner, WorkerRunner

from loadtest import procstats, serverstats, storm
from loadtest.fanout import FanoutTotals, FanoutTracker, Histogram, stamp
from loadtest.resume import ResumeOutcome, ResumeTotals, SeqTracker
from loadtest.rooms import RoomDirectory, Seat, SeatPlan
from loadtest.settings import SCENARIOS, Settings, add_arguments, parse_source_addresses
from loadtest.wsconn import ChatConnection, Target

log = logging.getLogger("roomcast.loadtest")

SCENARIO_CLASSES = {
    "capacity": {"HoldUser"},
    "fanout": {"FanoutUser"},
    "swarm": {"ChatUser"},
    "resume": {"ResumeUser"},
    "storm": {"StormUser"},
    # the default mix; `resume` runs on its own (SCENARIO=resume), so that the reference
    # runs of the other scenarios keep their shape
    "all": {"HoldUser", "FanoutUser", "ChatUser"},
}
FLUSH_INTERVAL = 1.0
SAMPLE_INTERVAL = 2.0
STORM_COMMAND = "roomcast_storm_command"  # conductor -> performers
STORM_REPLY = "roomcast_storm_reply"  # performers -> conductor
RESUME_DELAY = 0.2  # s from the resume command to the instant every join with since goes out


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


# ---- the reconnect storm (loadtest/storm.py) ---------------------------------------------------


class MismatchedChat(Exception):
    pass


class StormNotLossless(Exception):
    """A storm round in which some client did not reconnect, resume recovered and get live chats
    again, or some chat went missing, came twice or came out of place (the text says which)."""


class StormRound:
    """One storm as one Locust process sees it: who takes part, and the phases' events."""

    def __init__(self, number: int, users: list[StormUser]) -> None:
        self.number = number
        self.users = users
        self.participants = {u.index for u in users}
        self.reconnect = gevent.event.Event()
        self.resume = gevent.event.Event()
        self.resume_at: float | None = None
        self.connect_ok = 0
        self.connect_failed = 0
        self.last_connect_at: float | None = None
        self.all_connected = gevent.event.Event()
        self.results = 0
        self.sent = 0
        self.join_failed = 0
        self.moved = 0  # resumed on another node than the one whose connection dropped
        self.outcomes = ResumeTotals()
        self.resumed: list[StormUser] = []
        self.live_ms = Histogram()
        self.last_history_at: float | None = None
        self.last_welcome_at: float | None = None
        self.all_resumed = gevent.event.Event()
        if not users:
            self.all_connected.set()
            self.all_resumed.set()

    def connect_done(self, ok: bool) -> None:
        if ok:
            self.connect_ok += 1
            self.last_connect_at = time.time()
        else:
            self.connect_failed += 1
        if self.connect_ok + self.connect_failed >= len(self.users):
            self.all_connected.set()

    def resume_done(self, user: StormUser, joined: bool, outcome: ResumeOutcome | None,
                    conn: ChatConnection) -> None:
        self.results += 1
        self.sent += 1
        if joined and outcome is not None:
            self.outcomes.outcome(outcome)
            self.resumed.append(user)
            self.moved += user.moved
            welcomed, history = conn.welcomed_at, conn.history_at
            if welcomed is not None and self.resume_at is not None:
                self.live_ms.add((welcomed - self.resume_at) * 1000.0)
                self.last_welcome_at = max(self.last_welcome_at or welcomed, welcomed)
            if history is not None:
                self.last_history_at = max(self.last_history_at or history, history)
        else:
            self.join_failed += 1
        if self.results >= self.connect_ok:
            self.all_resumed.set()

    def resumed_part(self) -> dict[str, Any]:
        counts = self.outcomes.to_dict()
        return {
            "sent": self.sent, "welcomed": counts["resumes"], "recovered": counts["recovered"],
            "not_recovered": counts["not_recovered"], "no_history": counts["no_history"],
            "reasons": counts["reasons"], "replayed": counts["replayed"],
            "join_failed": self.join_failed, "moved": self.moved,
            "last_history_at": self.last_history_at,
            "last_welcome_at": self.last_welcome_at, "live_ms": self.live_ms.to_wire(),
        }


class StormPublisher:
    """A storm room's publisher: a connection of the Locust process (not a user) that chats
    ``#1 ...``, ``#2 ...`` at ``--storm-rate`` from the room's first join to the end of the
    run. Only it chats in its (new) room, so the chat numbered seq N must be its N-th."""

    def __init__(self, state: ProcessState, room: str, target: Target) -> None:
        self.state = state
        self.room = room
        self.conn = state.new_connection(target=target, held=False)
        self.sent = 0
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        settings = self.state.settings
        interval = 1.0 / settings.storm_rate
        due = time.monotonic()
        while True:
            if not (self.conn.alive and self.conn.joined):
                self.conn.close()
                if not (self.conn.connect() and self.conn.join(self.room)):
                    gevent.sleep(1.0)
                    continue
                due = time.monotonic()
            head = f"#{self.sent + 1} "
            if self.conn.chat(head + "x" * max(0, settings.message_bytes - len(head))):
                self.sent += 1
            due = max(due + interval, time.monotonic() - 1.0)
            gevent.sleep(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self.greenlet.kill(block=False)
        self.conn.close()


class StormPerformer:
    """One Locust process's side of the storm (local runner or worker): its users, its rooms'
    publishers, and the phases that the conductor orders through custom messages."""

    def __init__(self, state: ProcessState) -> None:
        self.state = state
        self.settings = state.settings
        hosts = state.settings.storm_hosts or (state.environment.host or "",)
        self.targets = [Target(host) for host in hosts]
        self.plan = state.plans["storm"]
        self._indexes = itertools.count()
        self.users: dict[int, StormUser] = {}
        self.publishers: dict[str, StormPublisher] = {}
        self.round: StormRound | None = None
        self._new_round = gevent.event.Event()
        self.problems = dict.fromkeys(("gaps", "missing", "duplicates", "mismatched"), 0)
        self._created = time.monotonic()
        self._last_join = self._created
        self._greenlets: list[gevent.Greenlet[Any, None]] = [gevent.spawn(self._watch_ready)]

    # -- users -----------------------------------------------------------------------------------
    def enlist(self) -> int:
        return next(self._indexes)

    def target_for(self, index: int, moves: int) -> Target:
        """User ``index``'s node after ``moves`` storms: it starts on node index mod N and, with
        ``--storm-resume-on other``, every storm moves it on to the next node."""
        step = moves if self.settings.storm_resume_on == "other" else 0
        return self.targets[(index + step) % len(self.targets)]

    def take_seat(self) -> Seat:
        seat = self.plan.take()
        if seat.room not in self.publishers:
            target = self.targets[seat.index % len(self.targets)]
            self.publishers[seat.room] = StormPublisher(self.state, seat.room, target)
        return seat

    def joined(self, user: StormUser) -> None:
        self.users[user.index] = user
        self._last_join = time.monotonic()

    def next_round(self, done: int, timeout: float) -> StormRound | None:
        """The storm round after round ``done`` once it has begun (None after ``timeout``)."""
        if self.round is None or self.round.number <= done:
            self._new_round.wait(timeout)
        rnd = self.round
        return rnd if rnd is not None and rnd.number > done else None

    def problem(self, kind: str, messages: int, detail: str) -> None:
        """A gap, duplicate or mismatch in a storm user's chats: counted, and a failed request."""
        state = self.state
        if kind == "mismatch":
            self.problems["mismatched"] += 1
            state.fire_resume("mismatch", 0.0, MismatchedChat("seq and publisher's number"))
            log.debug("roomcast storm mismatch: %s", detail)
            return
        if kind == "gap":
            self.problems["gaps"] += 1
            self.problems["missing"] += messages
        else:
            self.problems["duplicates"] += messages
        state.sequence_problem(kind, messages, detail)

    # -- the conductor's commands ----------------------------------------------------------------
    def reply(self, phase: str, number: int, **fields: Any) -> None:
        runner = self.state.environment.runner
        if runner is not None:
            runner.send_message(STORM_REPLY, {"phase": phase, "round": number, **fields})

    def _watch_ready(self) -> None:
        """Tells the conductor once every user of this process has joined (or, after
        ``--storm-timeout`` without a new join once all were spawned, how many did)."""
        timeout = self.settings.storm_timeout
        while True:
            gevent.sleep(0.25)
            runner = self.state.environment.runner
            if runner is None:
                continue
            target, spawned = runner.target_user_count, runner.user_count
            now = time.monotonic()
            if target and len(self.users) >= target:
                break
            if spawned >= target and now - self._created > 1.0 and (
                    not target or now - self._last_join > timeout):
                log.warning("roomcast storm: %d of %d users joined within %gs",
                            len(self.users), target, timeout)
                break
        self.reply("ready", 0, users=len(self.users))

    def on_command(self, data: dict[str, Any]) -> None:
        greenlet = gevent.spawn(self._command, data)
        self._greenlets.append(greenlet)

    def _command(self, data: dict[str, Any]) -> None:
        command, number = data.get("command"), int(data.get("round", 0))
        timeout = self.settings.storm_timeout
        if command == "drop":
            users = [u for u in self.users.values() if u.live()]
            self.round = StormRound(number, users)
            for user in users:  # every connection dies at once: an RST, no CLOSE
                assert user.conn is not None  # live() checked it
                user.conn.abort()
            woken, self._new_round = self._new_round, gevent.event.Event()
            woken.set()
            self.reply("dropped", number, clients=len(users))
            return
        rnd = self.round
        if rnd is None or rnd.number != number:
            log.warning("roomcast storm: %s for round %d, which this process has not", command,
                        number)
            return
        if command == "reconnect":
            rnd.reconnect.set()
            rnd.all_connected.wait(timeout)
            self.reply("connected", number, ok=rnd.connect_ok,
                       failed=len(rnd.users) - rnd.connect_ok, last_at=rnd.last_connect_at)
        elif command == "resume":
            at = float(data.get("at", time.time()))
            gevent.sleep(max(0.0, at - time.time()))
            rnd.resume_at = at
            rnd.resume.set()  # every user sends its join with since now
            rnd.all_resumed.wait(timeout)
            self.reply("resumed", number, **rnd.resumed_part())
        elif command == "live":
            live = sum(1 for u in rnd.resumed if u.live() and u.seqs.live_since_welcome > 0)
            problems, self.problems = self.problems, dict.fromkeys(self.problems, 0)
            self.reply("live", number, live_again=live, checked=len(rnd.resumed), **problems)

    def stop(self) -> None:
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        for publisher in self.publishers.values():
            publisher.stop()


class StormUser(RoomcastUser):
    """The reconnect storm: joins a room, then drops, reconnects and resumes with ``since`` when
    the conductor says so, at the same instants as every other storm user."""

    weight = 1
    plan = "storm"

    def on_start(self) -> None:
        super().on_start()
        performer = self.state.storm
        assert performer is not None  # a ProcessState has one when SCENARIO=storm
        self.performer = performer
        self.index = performer.enlist()
        self.seqs = SeqTracker(performer.problem, marks=True)
        self.moves = 0  # storms taken part in (each moves the user on to the next node)
        self.moved = False  # the latest storm put it on another node
        self.enlisted = False
        self.rounds_done = 0
        self.backoff = 0.0

    def wait_time(self) -> float:
        backoff, self.backoff = self.backoff, 0.0
        return backoff  # step() itself waits for the storm's phases

    def live(self) -> bool:
        return self.conn is not None and self.conn.alive and self.conn.joined

    def _open(self) -> bool:
        """A new connection to this user's node (after an abort the old one is gone)."""
        target = self.performer.target_for(self.index, self.moves)
        if self.conn is None:
            self.conn = self.state.new_connection(self.seqs, target=target)
        else:
            self.conn.close()
            self.conn.target = target
        return self.conn.connect()

    def _resume(self, rnd: StormRound | None) -> None:
        """Joins with ``since`` (counted in the round ``rnd`` when given) and reports it."""
        assert self.conn is not None and self.seat is not None
        since = self.seqs.since()
        if since is None:
            self.seqs.plain_join()
        start = time.perf_counter()
        joined = self.conn.join(self.seat.room, since=since)
        outcome = self.seqs.resume if since is not None else ResumeOutcome({})
        if rnd is not None:
            rnd.resume_done(self, joined, outcome, self.conn)
        if joined and outcome is not None:
            self.state.resumes.outcome(outcome)
            exc = None
            if not outcome.history:
                exc = ResumeFailed("no history answer")
            elif not outcome.recovered:
                exc = ResumeFailed(f"not recovered: {outcome.reason}")
            self.state.fire_resume("resume", (time.perf_counter() - start) * 1000.0, exc)

    def _storm(self, rnd: StormRound) -> None:
        settings = self.state.settings
        patience = settings.storm_outage + 2 * settings.storm_timeout + 10.0
        # the performer has aborted the connection already
        if not rnd.reconnect.wait(patience):
            return
        before = self.performer.target_for(self.index, self.moves)
        self.moves += 1
        self.moved = self.performer.target_for(self.index, self.moves) is not before
        ok = self._open()
        rnd.connect_done(ok)
        if not ok:
            self.backoff = random.uniform(1, 3)
            return
        if rnd.resume.wait(patience):
            self._resume(rnd)

    @tag("storm")
    @task
    def step(self) -> None:
        performer = self.performer
        if not self.enlisted:
            if self.seat is None:
                self.seat = performer.take_seat()
            self.seqs.plain_join()
            if self._open() and self.conn is not None and self.conn.join(self.seat.room):
                self.enlisted = True
                performer.joined(self)
            else:
                self.backoff = random.uniform(1, 3)
            return
        rnd = performer.next_round(self.rounds_done, timeout=1.0)
        if rnd is not None:
            self.rounds_done = rnd.number
            if self.index in rnd.participants:
                self._storm(rnd)
        elif not self.live():
            # lost between storms (e.g. closed by the server): back on its node, with since
            if self._open():
                self._resume(None)
            else:
                self.backoff = random.uniform(1, 3)


# ---- run-wide bookkeeping (master or local runner) ---------------------------------------------


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
            runner.send_message(STORM_COMMAND, {"command": command, "round": number, **fields})

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
    runner = environment.runner
    if runner is not None and selected_scenario() == "storm":
        # the storm's phases: conductor (master or local) -> performers (workers or local)
        if not isinstance(runner, MasterRunner):
            runner.register_message(STORM_COMMAND, _on_storm_command)
        if not isinstance(runner, WorkerRunner):
            runner.register_message(STORM_REPLY, _on_storm_reply)


def _on_storm_command(environment: Environment, msg: Message, **_kwargs: Any) -> None:
    if _state is not None and _state.storm is not None and isinstance(msg.data, dict):
        _state.storm.on_command(msg.data)


def _on_storm_reply(environment: Environment, msg: Message, **_kwargs: Any) -> None:
    if _monitor is not None and _monitor.conductor is not None and isinstance(msg.data, dict):
        _monitor.conductor.on_reply(str(msg.node_id), msg.data)


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
