"""The chat users: ``HoldUser`` (scenario ``capacity``), ``FanoutUser`` (``fanout``) and
``ChatUser`` (``swarm``), and ``RoomcastUser``, the base of every user class of the harness.

* ``HoldUser``: holds one idle, joined connection; checks it every 20-30 s and reconnects when
  it was closed.
* ``FanoutUser``: rooms of ``--fanout-room-size`` members; the first member of each room
  publishes stamped messages at ``--fanout-rate`` per second, the others listen.
* ``ChatUser``: rooms of ``--room-sizes``; most users only listen, a share (``--chat-fraction``)
  chats every ``--chat-interval`` seconds on average, and every user leaves its room after about
  ``--session-seconds`` to join another one or to reconnect later.

A ``RoomcastUser`` has one chat connection (loadtest/wsconn.py) and one seat in a room of its
plan, both from its process's state (loadtest/process.py), and publishes stamped chats that the
fan-out tracker follows to every member (loadtest/fanout.py).
"""

from __future__ import annotations

import math
import random
import time

from locust import User, tag, task

from loadtest.fanout import stamp
from loadtest.process import process_state
from loadtest.rooms import Seat
from loadtest.wsconn import ChatConnection


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
