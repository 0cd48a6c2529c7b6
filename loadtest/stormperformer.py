"""The reconnect storm in one Locust process (local runner or worker): the performer, which
carries out the conductor's phases on this process's storm users, its rooms' publishers, and
what one round looks like from here (docs/loadtest.md, scenario ``storm``).

The conductor (loadtest/stormconductor.py) orders each phase with a custom message; the
performer acts on all of its users at once (``drop``: every connection aborted in one loop;
``reconnect``, ``resume``: gevent events that every user's greenlet waits on) and answers with
what it saw (loadtest/storm.py merges the answers). The users themselves are
loadtest/stormuser.py's; the performer knows them, and its process, only as the protocols
below, so that this module imports neither.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Protocol

import gevent
import gevent.event
from locust.env import Environment

from loadtest import storm
from loadtest.failures import MismatchedChat
from loadtest.fanout import Histogram
from loadtest.resume import ResumeOutcome, ResumeTotals, SeqTracker
from loadtest.rooms import Seat, SeatPlan
from loadtest.settings import Settings
from loadtest.wsconn import ChatConnection, Target

log = logging.getLogger("roomcast.loadtest")


class Process(Protocol):
    """What the storm uses of its Locust process (loadtest/process.py's ``ProcessState``)."""

    environment: Environment
    settings: Settings
    plans: dict[str, SeatPlan]

    def new_connection(self, seq_tracker: SeqTracker | None = None,
                       target: Target | None = None, held: bool = True) -> ChatConnection: ...

    def fire_resume(self, name: str, response_time: float, exc: Exception | None) -> None: ...

    def sequence_problem(self, kind: str, messages: int, detail: str) -> None: ...


class Member(Protocol):
    """What the storm uses of a storm user (loadtest/stormuser.py's ``StormUser``)."""

    index: int
    moved: bool  # the latest storm put it on another node
    seqs: SeqTracker
    conn: ChatConnection | None

    def live(self) -> bool: ...


class StormRound:
    """One storm as one Locust process sees it: who takes part, and the phases' events."""

    def __init__(self, number: int, users: list[Member]) -> None:
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
        self.resumed: list[Member] = []
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

    def resume_done(self, user: Member, joined: bool, outcome: ResumeOutcome | None,
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

    def __init__(self, state: Process, room: str, target: Target) -> None:
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

    def __init__(self, state: Process) -> None:
        self.state = state
        self.settings = state.settings
        hosts = state.settings.storm_hosts or (state.environment.host or "",)
        self.targets = [Target(host) for host in hosts]
        self.plan = state.plans["storm"]
        self._indexes = itertools.count()
        self.users: dict[int, Member] = {}
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

    def joined(self, user: Member) -> None:
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
            runner.send_message(storm.REPLY, {"phase": phase, "round": number, **fields})

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

