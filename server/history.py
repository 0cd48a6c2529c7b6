"""Room history on one node: each room's stream (epoch, last seq), its newest messages and ids.

Pure: no sockets, no asyncio, no files (server/retention.py saves and loads it and runs the one
periodic ``sweep``). docs/history.md has the guarantees; in short:

* A room's **stream** is named by an ``epoch`` (a random string) and numbers its chat messages
  1, 2, 3... (``seq``). The epoch changes whenever the stream is lost (the process restarted
  without ``--history-file``, the room expired after ``--history-ttl``, or ``--history-max-bytes``
  evicted it), so a position (epoch, seq) never names two different messages.
* It keeps the newest ``--history-size`` messages as the **frames that were sent live**: a chat
  is encoded once, framed once, and that one bytes object is both queued for the room and stored
  (a replay strips the frame header; seqs are consecutive, so none is stored). The frame and
  not msgspec's payload, because msgspec returns its growth buffer unshrunk (up to 1.5 times the
  payload's size) while the frame is an exact copy made anyway. It also keeps the client ids
  among them for deduplication, scoped by username.
* A stream with members on this node (``open``) is never dropped: its seqs stay one increasing
  sequence for everyone connected. Once its room empties (``close``) it is kept ``ttl`` seconds.
* Memory is capped by ``max_bytes`` over every stream (frames, the exact size of each id key,
  room name, seq object and table, plus a measured overhead per entry and per stream; see "The
  byte accounting" below): idle streams go first, least recently active first (their epoch is
  lost); if that is not enough, the oldest messages of the least recently active open streams
  are dropped (their epoch and seq stay: resuming from before them is "too old").
* A replay (``last``, ``since``) is complete or says it is not (``recovered`` False and a reason),
  never a partial replay called recovered; it carries at most ``size`` messages and
  ``replay_bytes`` bytes of payloads (``from_config``: twice --max-buffered-bytes), counted as
  the Redis broker counts them (server/redis/joins.py), so a replay fits on both or on neither.
"""

from __future__ import annotations

import math
import secrets
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice, repeat

import msgspec

from .config import Config
from .protocol import ChatMessage, encode, frame_payload, text_frame

# The byte accounting: --history-max-bytes caps the memory history really uses (never less than
# tracemalloc sees, tests/test_history.py), not payload bytes. What varies with the content is
# counted exactly, with sys.getsizeof (O(1), no allocation kept) rounded up to pymalloc's 16:
# each id key (a str of 1, 2 or 4 bytes per character: a single astral character in a name or
# an id makes the whole key 4 bytes per character), each room name, each seq object above 256
# (smaller ints are shared), the `ids` dict and History's two tables (measured as they grow).
# The fixed parts are constants, measured with tracemalloc by `python -m bench.history_memory`
# (docs/history.md) and rounded up to cover pymalloc's rounding and the deques' spare blocks:
ENTRY_OVERHEAD = 56  # the bytes object's header (33) and rounding (up to 15), its deque slot
ID_OVERHEAD = 16  # beyond the key and seq objects and the dict: its slot in `keys`
KEYS_OVERHEAD = 1300  # the `keys` deque, made with a room's first id (760 B and a spare block)
STREAM_OVERHEAD = 1100  # the Stream, its epoch, deque and spare block, last seq, idle time
SEQ_BYTES = 32  # an int above 256 (sys.getsizeof 28, rounded): the seq an id maps to
_SHARED_INTS = 256  # CPython keeps one object for each int up to this: storing it costs nothing

_sizeof = sys.getsizeof


def _str_bytes(text: str) -> int:
    """What one str object really takes: its size rounded up to pymalloc's 16-byte classes."""
    return (_sizeof(text) + 15) & -16

# Reasons a replay is not `recovered` (docs/protocol.md).
DISABLED = "history disabled"
EPOCH_CHANGED = "epoch changed"
UNKNOWN_POSITION = "unknown position"
TOO_OLD = "too old"
TOO_MANY = "too many"

# f"{username}\x00{client id}": ids are scoped by username, and no username holds a NUL (the
# name rule refuses control characters). One string rather than a tuple of two: half the memory.
Key = str
# What a replay query answers: (frames oldest first, recovered, reason). A plain tuple: the
# broker unpacks it once.
Replayed = tuple[list[bytes], bool, str | None]


def new_epoch() -> str:
    return secrets.token_hex(8)


def sweep_interval(ttl: float) -> float:
    """How often the app sweeps: a tenth of the TTL, between 50 ms and 10 s (so an idle room is
    forgotten between ttl and ttl + 10 s after it emptied)."""
    return min(10.0, max(0.05, ttl / 10))


class Stream:
    """One room's history stream."""

    __slots__ = (
        "bytes", "entries", "epoch", "ids", "ids_bytes", "keys", "last", "name", "occupied",
    )

    def __init__(self, name: str, epoch: str, last: int = 0) -> None:
        self.name = name
        self.epoch = epoch
        self.last = last  # seq of the newest message (0: none yet)
        self.entries: deque[bytes] = deque()  # frames of seqs first..last, oldest first
        # The id of each entry (None when it had none), made with the first id: a deque costs
        # 760 bytes even empty, and many rooms never see an id.
        self.keys: deque[Key | None] | None = None
        self.ids: dict[Key, int] = {}  # id -> seq, for the entries that have one
        self.ids_bytes = _sizeof(self.ids)  # its size when last measured (counted in `bytes`)
        # What this stream counts against max_bytes; its slots in History's tables are counted
        # by History. The name: one object here and as those tables' key.
        self.bytes = STREAM_OVERHEAD + self.ids_bytes + _str_bytes(name)
        self.occupied = True  # members on this node: never dropped

    @property
    def first(self) -> int:
        """Seq of the oldest stored message (last + 1 when none is stored)."""
        return self.last - len(self.entries) + 1

    def _append(self, frame: bytes, key: Key | None, seq: int) -> int:
        """Stores the frame of message `seq` (the newest); returns what it costs."""
        cost = len(frame) + ENTRY_OVERHEAD
        keys = self.keys
        if key is not None:
            if keys is None:
                keys = self.keys = deque(repeat(None, len(self.entries)))
                cost += KEYS_OVERHEAD + ID_OVERHEAD * len(self.entries)  # their slots in it
            ids = self.ids
            ids[key] = seq
            cost += _str_bytes(key) + (SEQ_BYTES if seq > _SHARED_INTS else 0)
            # The dict only grows (or is rebuilt smaller) on an insert, never on a delete:
            # measuring it here keeps `ids_bytes` what it is.
            size = _sizeof(ids)
            cost += size - self.ids_bytes
            self.ids_bytes = size
        if keys is not None:
            keys.append(key)
            cost += ID_OVERHEAD  # every entry has its slot in `keys` once it exists
        self.entries.append(frame)
        self.bytes += cost
        return cost

    def _pop_oldest(self) -> int:
        """Forgets the oldest stored message; returns what it cost."""
        seq = self.first
        frame = self.entries.popleft()
        cost = len(frame) + ENTRY_OVERHEAD
        keys = self.keys
        if keys is not None:
            cost += ID_OVERHEAD
            key = keys.popleft()
            if key is not None:  # what _append counted for it (the dict keeps its size)
                cost += _str_bytes(key) + (SEQ_BYTES if seq > _SHARED_INTS else 0)
                if self.ids.get(key) == seq:
                    del self.ids[key]
        self.bytes -= cost
        return cost


class SavedStream(msgspec.Struct, array_like=True, gc=False):
    """A stream as --history-file holds it (server/retention.py)."""

    room: str
    epoch: str
    last: int
    entries: list[bytes]  # payloads (not frames) of seqs last - len + 1 .. last
    keys: list[Key | None]  # the id of each entry; empty when none had one


def _payload_size(frame: bytes) -> int:
    return len(frame_payload(frame))


def newest_within(items: Sequence[bytes], budget: int, size: Callable[[bytes], int]) -> list[bytes]:
    """The newest of `items` (oldest first) whose sizes add up to at most `budget`, oldest
    first: what a replay carries when everything it should carry does not fit (here and in
    server/redis/joins.py, the same rule on frames and on payloads)."""
    newest: list[bytes] = []
    for item in reversed(items):
        budget -= size(item)
        if budget < 0:
            break
        newest.append(item)
    newest.reverse()
    return newest


class History:
    def __init__(
        self,
        size: int,
        ttl: float,
        max_bytes: int,
        replay_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        epochs: Callable[[], str] = new_epoch,
    ) -> None:
        self.size = size  # messages kept per room (0: none, and seqs only)
        self.ttl = ttl  # seconds a stream is kept after its room emptied
        self.max_bytes = max_bytes
        self.replay_bytes = replay_bytes  # most payload bytes in one replay
        self._clock = clock
        self._epochs = epochs
        # Every stream, least recently active first; the closed ones also in `_idle`, in the
        # order their rooms emptied (which is the order of their last activity too).
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        self._idle: OrderedDict[str, float] = OrderedDict()  # room -> when it emptied
        self._tables = 0  # the two tables' size when last measured (`_measure_tables`)
        self.bytes = 0  # what every stream counts, together, and the tables
        self._measure_tables()
        self.dropped = 0  # streams lost to the TTL or the memory cap (their epochs with them)

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        epochs: Callable[[], str] = new_epoch,
    ) -> History:
        # A replay may carry twice the per-connection buffer: a client dropped as a slow
        # consumer (close 4000) missed that whole buffer (discarded) plus what was sent while it
        # reconnected, and it should be able to resume. The replay is written at once, before
        # anything is queued for the joiner, so it is not counted against the buffer itself;
        # live messages after it are (docs/history.md: a client that cannot read its replay
        # before its live traffic fills the buffer is dropped again).
        return cls(
            config.history_size,
            config.history_ttl,
            config.history_max_bytes,
            2 * config.max_buffered_bytes,
            clock=clock,
            epochs=epochs,
        )

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[Stream]:
        """Every stream, least recently active first."""
        return iter(self._streams.values())

    def get(self, room: str) -> Stream | None:
        return self._streams.get(room)

    def messages(self) -> int:
        return sum(len(s.entries) for s in self._streams.values())

    # ---- rooms opening and closing ------------------------------------------------------------

    def open(self, room: str) -> Stream:
        """The room has (or is about to have) members on this node: its stream, made if needed
        (a new epoch), is kept until ``close``."""
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = Stream(room, self._epochs())
            self.bytes += stream.bytes
            self._measure_tables()
            self._enforce_cap()
        else:
            self._streams.move_to_end(room)
            if not stream.occupied:
                stream.occupied = True
                del self._idle[room]
        return stream

    def close(self, room: str) -> None:
        """The room has no members on this node any more: kept ``ttl`` seconds from now."""
        stream = self._streams.get(room)
        if stream is None or not stream.occupied:
            return
        if self.ttl <= 0:
            self._drop(room)
            return
        stream.occupied = False
        self._idle[room] = self._clock()
        self._measure_tables()
        if self.bytes > self.max_bytes:  # open streams kept it over the cap: this one can go
            self._enforce_cap()

    def keep_until_saved(self) -> None:
        """A planned shutdown has begun: the rooms its drain empties keep their streams for the
        save whatever ``ttl`` says (even 0), since their members are told to come back."""
        self.ttl = math.inf

    def sweep(self) -> int:
        """Forgets the streams whose room has been empty for ``ttl`` seconds; returns how many."""
        deadline = self._clock() - self.ttl
        expired = []
        for room, emptied in self._idle.items():
            if emptied > deadline:
                break
            expired.append(room)
        for room in expired:
            self._drop(room)
        return len(expired)

    # ---- writing ------------------------------------------------------------------------------

    def acked(self, stream: Stream, username: str, chat_id: str) -> int | None:
        """The seq of the message `username` sent with `chat_id`, while the stream holds it."""
        return stream.ids.get(f"{username}\x00{chat_id}")

    def add(self, stream: Stream, message: ChatMessage, chat_id: str | None) -> bytes:
        """Gives `message` the next seq, encodes and frames it (once: this frame goes to the room
        and into the history), stores it and returns the frame."""
        seq = message.seq = stream.last + 1
        frame = text_frame(encode(message))
        self._streams.move_to_end(stream.name)
        if not self.size:
            stream.last = seq
            return frame
        if len(stream.entries) >= self.size:
            self.bytes -= stream._pop_oldest()  # before `last` moves: it finds the seq from it
        stream.last = seq
        key = None if chat_id is None else f"{message.username}\x00{chat_id}"
        self.bytes += stream._append(frame, key, seq)
        if self.bytes > self.max_bytes:
            self._enforce_cap()
        return frame

    # ---- reading ------------------------------------------------------------------------------

    def last(self, stream: Stream, count: int) -> Replayed:
        """The newest `count` messages; recovered when none of them is missing."""
        if not self.size:
            return [], False, DISABLED
        wanted = min(count, stream.last)  # seqs start at 1: there are no more than `last`
        gone = TOO_MANY if count > self.size else TOO_OLD
        return self._replay(stream, stream.last - wanted, gone)

    def since(self, stream: Stream, epoch: str, seq: int) -> Replayed:
        """Every message after (epoch, seq), or recovered False with the newest available."""
        if not self.size:
            return [], False, DISABLED
        if epoch != stream.epoch:
            return self._newest(stream), False, EPOCH_CHANGED
        if seq > stream.last:
            return self._newest(stream), False, UNKNOWN_POSITION
        return self._replay(stream, seq, TOO_OLD)

    def _replay(self, stream: Stream, after: int, gone: str) -> Replayed:
        """The messages after seq `after` if one replay can carry them all; `gone` is the
        reason when some of them are no longer stored."""
        if after + 1 < stream.first:
            return self._newest(stream), False, gone
        missing = stream.last - after
        entries = stream.entries
        frames = list(islice(entries, len(entries) - missing, None)) if missing else []
        if sum(map(_payload_size, frames)) > self.replay_bytes:
            return self._newest(stream), False, TOO_MANY
        return frames, True, None

    def _newest(self, stream: Stream) -> list[bytes]:
        """The newest stored messages that fit in one replay, oldest first."""
        return newest_within(stream.entries, self.replay_bytes, _payload_size)

    # ---- the memory cap -----------------------------------------------------------------------

    def _measure_tables(self) -> None:
        """Counts the tables' growth (a slot per room, and what each resize allocates), after
        an insert: an OrderedDict grows (or is rebuilt) only then, never on a delete."""
        size = _sizeof(self._streams) + _sizeof(self._idle)
        self.bytes += size - self._tables
        self._tables = size

    def _drop(self, room: str) -> None:
        stream = self._streams.pop(room)
        self._idle.pop(room, None)
        self.bytes -= stream.bytes
        self.dropped += 1

    def _enforce_cap(self) -> None:
        while self.bytes > self.max_bytes and self._idle:
            self._drop(next(iter(self._idle)))
        if self.bytes <= self.max_bytes:
            return
        for stream in self._streams.values():  # all open now: least recently active first
            while stream.entries and self.bytes > self.max_bytes:
                self.bytes -= stream._pop_oldest()
            if self.bytes <= self.max_bytes:
                return

    # ---- saving and restoring (server/retention.py) -------------------------------------------

    def snapshot(self) -> list[SavedStream]:
        """Every stream, least recently active first."""
        return [
            SavedStream(
                s.name,
                s.epoch,
                s.last,
                [bytes(frame_payload(f)) for f in s.entries],
                [] if s.keys is None else list(s.keys),
            )
            for s in self._streams.values()
        ]

    def restore(self, saved: Iterable[SavedStream]) -> int:
        """Takes back saved streams (as idle ones, emptied now); returns how many it kept.

        Streams this history already has are left alone. A stream that does not hold together
        (ids not matching the entries, more entries than seqs) is skipped whole: a wrong epoch
        would tell a resuming client it recovered when it did not.
        """
        kept = 0
        now = self._clock()
        for item in saved:
            if (
                item.room in self._streams
                or not item.epoch
                or len(item.keys) not in (0, len(item.entries))
                or not 0 <= len(item.entries) <= item.last
            ):
                continue
            stream = Stream(item.room, item.epoch, item.last)
            entries = item.entries[-self.size :] if self.size else []
            keys = item.keys[len(item.keys) - len(entries) :] if item.keys else repeat(None)
            first = item.last - len(entries) + 1
            for offset, (payload, key) in enumerate(zip(entries, keys, strict=False)):
                stream._append(text_frame(payload), key, first + offset)
            stream.occupied = False
            self._streams[item.room] = stream
            self._idle[item.room] = now
            self.bytes += stream.bytes
            kept += 1
        self._measure_tables()
        self._enforce_cap()
        return kept
