"""Fan-out latency: stamping chat messages, and aggregating receipts into few Locust events.

A stamped chat text is ``"lt1 <message id> <send time, s since epoch> <padding>"``. Receivers
compute ``receive time - send time``. Two figures come out of that:

* **per-receipt** latency, one value per (message, member). At scale that is far more values than
  a Locust process can turn into request events (each event costs some microseconds in the stats
  machinery, and a worker must ship them all to the master), so every interval the tracker fires
  at most ``budget`` events, a uniform reservoir sample of that interval's receipts. The exact
  distribution is kept in a histogram (1% resolution or better) and reported in the summary.
* **last member** latency, one value per message: the latency of the last member that got it, i.e.
  how long the whole room waited. The publisher registers the set of members that must receive
  the message (its room's members in this process whose join was acknowledged before the send;
  all of a room's members live in one process, see rooms.py). The message completes when that set
  is empty (members that leave or disconnect are struck off); after ``timeout`` seconds the rest
  count as lost and the event is a failure.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

STAMP = "lt1"


def stamp(message_id: str, sent: float, size: int) -> str:
    """A chat text of ``size`` characters (at least the stamp) carrying id and send time."""
    head = f"{STAMP} {message_id} {sent:.6f} "
    return head + "x" * max(0, size - len(head))


def parse_stamp(text: str) -> tuple[str, float] | None:
    if not text.startswith(STAMP + " "):
        return None
    parts = text.split(" ", 3)
    if len(parts) < 3:
        return None
    try:
        return parts[1], float(parts[2])
    except ValueError:
        return None


def bucket(ms: float) -> float:
    """Rounds a latency in ms to a histogram bucket: 0.1 ms below 100 ms, 1 ms below 1 s, 10 ms
    above, i.e. never more than 0.1 ms or 1% off."""
    if ms < 100:
        return round(ms, 1)
    if ms < 1000:
        return float(round(ms))
    return float(round(ms, -1))


@dataclass
class Histogram:
    counts: dict[float, int] = field(default_factory=dict)
    total: int = 0
    maximum: float = 0.0

    def add(self, ms: float, count: int = 1) -> None:
        key = bucket(max(0.0, ms))
        self.counts[key] = self.counts.get(key, 0) + count
        self.total += count
        self.maximum = max(self.maximum, ms)

    def merge(self, other: Histogram) -> None:
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        self.total += other.total
        self.maximum = max(self.maximum, other.maximum)

    def percentile(self, q: float) -> float | None:
        """The smallest bucket value v with at least q of the samples <= v (None when empty)."""
        if not self.total:
            return None
        keys = sorted(self.counts)
        cumulative: list[int] = []
        running = 0
        for key in keys:
            running += self.counts[key]
            cumulative.append(running)
        rank = max(1, int(q * self.total + 0.999999))
        return keys[min(len(keys) - 1, bisect.bisect_left(cumulative, rank))]

    def to_wire(self) -> dict[str, object]:
        # msgpack (Locust's worker->master transport) only takes string keys: send pairs.
        return {"pairs": [[k, c] for k, c in self.counts.items()], "max": self.maximum}

    @classmethod
    def from_wire(cls, data: dict[str, object]) -> Histogram:
        hist = cls()
        pairs = data.get("pairs", [])
        assert isinstance(pairs, list)
        for key, count in pairs:
            hist.counts[float(key)] = hist.counts.get(float(key), 0) + int(count)
            hist.total += int(count)
        maximum = data.get("max", 0.0)
        hist.maximum = float(maximum) if isinstance(maximum, (int, float)) else 0.0
        return hist


@dataclass
class _Pending:
    room: str
    sent: float
    waiting: set[int]
    expected: int
    length: int
    worst: float = 0.0
    got: int = 0


# fire(name, response_time_ms, response_length, exception_or_None)
Fire = Callable[[str, float, int, Exception | None], None]


class MessageLost(Exception):
    pass


class FanoutTracker:
    """Per-process bookkeeping of stamped messages. Not thread-safe; gevent greenlets are fine."""

    def __init__(
        self,
        fire: Fire,
        budget: int,
        timeout: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._fire = fire
        self._budget = max(0, budget)
        self._timeout = timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._pending: dict[str, _Pending] = {}
        self._sample: list[tuple[float, int]] = []
        self._seen = 0  # receipts in this interval
        self.receipts = Histogram()
        self.last_member = Histogram()
        self._delta_receipts = Histogram()
        self._delta_last = Histogram()
        self.messages = 0
        self.lost_messages = 0
        self.lost_receipts = 0
        self._delta_counts = {"messages": 0, "lost_messages": 0, "lost_receipts": 0}

    # -- publisher side --------------------------------------------------------------------------
    def published(
        self, message_id: str, room: str, sent: float, members: Iterable[int], length: int
    ) -> None:
        waiting = set(members)
        self._pending[message_id] = _Pending(room, sent, waiting, len(waiting), length)

    def cancel(self, message_id: str) -> None:
        """The send failed: nobody will receive it."""
        self._pending.pop(message_id, None)

    # -- receiver side ---------------------------------------------------------------------------
    def received(self, message_id: str, sent: float, member: int, length: int, now: float) -> None:
        latency = (now - sent) * 1000.0
        self.receipts.add(latency)
        self._delta_receipts.add(latency)
        self._seen += 1
        if len(self._sample) < self._budget:
            self._sample.append((latency, length))
        elif self._budget:
            slot = self._rng.randrange(self._seen)
            if slot < self._budget:
                self._sample[slot] = (latency, length)
        pending = self._pending.get(message_id)
        if pending is not None and member in pending.waiting:
            pending.waiting.discard(member)
            pending.got += 1
            pending.worst = max(pending.worst, latency)
            if not pending.waiting:
                self._complete(message_id, pending)

    def member_gone(self, member: int, room: str) -> None:
        """A member left ``room`` (or disconnected): stop waiting for it."""
        done = []
        for message_id, pending in self._pending.items():
            if pending.room == room and member in pending.waiting:
                pending.waiting.discard(member)
                if not pending.waiting:
                    done.append(message_id)
        for message_id in done:
            self._complete(message_id, self._pending[message_id])

    def _complete(self, message_id: str, pending: _Pending) -> None:
        del self._pending[message_id]
        if pending.got == 0:
            return  # nobody that was expected got it and all of them left: nothing to measure
        self.messages += 1
        self._delta_counts["messages"] += 1
        self.last_member.add(pending.worst)
        self._delta_last.add(pending.worst)
        self._fire("last member", pending.worst, pending.length, None)

    # -- periodic --------------------------------------------------------------------------------
    def flush(self, expire_all: bool = False) -> None:
        """Fires this interval's receipt sample, and expires overdue messages as lost."""
        for latency, length in self._sample:
            self._fire("per-receipt", latency, length, None)
        self._sample = []
        self._seen = 0
        now = self._clock()
        for message_id, pending in list(self._pending.items()):
            if expire_all or now - pending.sent > self._timeout:
                del self._pending[message_id]
                if expire_all:
                    continue  # the test is stopping: members were killed, nothing was lost
                self.lost_messages += 1
                self.lost_receipts += len(pending.waiting)
                self._delta_counts["lost_messages"] += 1
                self._delta_counts["lost_receipts"] += len(pending.waiting)
                self._fire(
                    "last member",
                    (now - pending.sent) * 1000.0,
                    pending.length,
                    MessageLost(
                        f"{len(pending.waiting)} of {pending.expected} members did not get it "
                        f"within {self._timeout:g}s"
                    ),
                )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take_delta(self) -> dict[str, object]:
        """What changed since the last call, for a worker's report to the master."""
        delta: dict[str, object] = {
            "receipts": self._delta_receipts.to_wire(),
            "last_member": self._delta_last.to_wire(),
            **self._delta_counts,
        }
        self._delta_receipts = Histogram()
        self._delta_last = Histogram()
        self._delta_counts = dict.fromkeys(self._delta_counts, 0)
        return delta


@dataclass
class FanoutTotals:
    """The master's (or local runner's) sum of every process's tracker."""

    receipts: Histogram = field(default_factory=Histogram)
    last_member: Histogram = field(default_factory=Histogram)
    messages: int = 0
    lost_messages: int = 0
    lost_receipts: int = 0

    def add_delta(self, delta: dict[str, object]) -> None:
        receipts, last = delta.get("receipts"), delta.get("last_member")
        if isinstance(receipts, dict):
            self.receipts.merge(Histogram.from_wire(receipts))
        if isinstance(last, dict):
            self.last_member.merge(Histogram.from_wire(last))
        for name in ("messages", "lost_messages", "lost_receipts"):
            value = delta.get(name, 0)
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)

    def summary(self) -> dict[str, object]:
        def pct(hist: Histogram, q: float) -> float | None:
            return hist.percentile(q)

        return {
            "receipts": self.receipts.total,
            "receipt_p50_ms": pct(self.receipts, 0.50),
            "receipt_p90_ms": pct(self.receipts, 0.90),
            "receipt_p99_ms": pct(self.receipts, 0.99),
            "receipt_max_ms": round(self.receipts.maximum, 1),
            "messages": self.messages,
            "last_member_p50_ms": pct(self.last_member, 0.50),
            "last_member_p90_ms": pct(self.last_member, 0.90),
            "last_member_p99_ms": pct(self.last_member, 0.99),
            "last_member_max_ms": round(self.last_member.maximum, 1),
            "lost_messages": self.lost_messages,
            "lost_receipts": self.lost_receipts,
        }
