"""The resume scenario's user, ``ResumeUser`` (``resume``): lossless resume under churn.

Rooms of ``--resume-room-size``; the first member of each room chats at ``--resume-rate`` and
stays; every other member's connection drops (an RST) after about ``--resume-interval``
seconds, and after about ``--resume-offline`` seconds it reconnects and joins with ``since`` its
position. Every chat's ``seq`` is checked (loadtest/resume.py); the resume is a ``RESUME
resume`` request, failed when not ``recovered`` or without a ``history`` answer, and every gap
or duplicate a failed ``RESUME gap`` / ``RESUME duplicate``.
"""

from __future__ import annotations

import math
import random
import time

from locust import tag, task

from loadtest.resume import SeqTracker
from loadtest.users import RoomcastUser


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
        self.state.resumed(outcome, (time.perf_counter() - start) * 1000.0)
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

