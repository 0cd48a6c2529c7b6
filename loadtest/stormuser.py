"""The reconnect storm's user, ``StormUser`` (``storm``): one client of the storm.

It joins a room of ``--storm-room-size`` (whose publisher is its process's, see
loadtest/stormperformer.py) and then waits for the storm's rounds: its connection is aborted
with every other one (``drop``), it opens a new one, to the next of ``--storm-hosts`` unless
``--storm-resume-on same`` (``reconnect``), and sends its ``join`` with ``since`` at the
instant every other user does (``resume``). Its chats are checked with the publisher's numbers
(``SeqTracker(marks=True)``, loadtest/resume.py); each resume is a ``RESUME resume`` request.
"""

from __future__ import annotations

import random
import time

from locust import tag, task

from loadtest.resume import ResumeOutcome, SeqTracker
from loadtest.stormperformer import StormRound
from loadtest.users import RoomcastUser


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
            self.state.resumed(outcome, (time.perf_counter() - start) * 1000.0)

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

