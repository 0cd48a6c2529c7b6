"""Server state in one place: every counter any part bumps, and the live figures metrics reads.

Like uvicorn's ``ServerState``: the server owns one ``ServerState`` and hands it (or just its
``counters``) to the parts that count; ``server/metrics.py`` reads it at scrape time and imports
nothing else of the server. Counters are plain integers bumped per message, per room flush or per
connection event, never per recipient.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Collection, Mapping, Sized
from typing import Protocol


class RefusalReason(enum.StrEnum):
    """The ``reason`` label of roomcast_handshakes_refused_total: why an upgrade was refused.

    Every reason is exported from the first scrape, at 0 until it happens: a series that first
    appears at 1 is one that ``increase()`` and ``rate()`` cannot see rise, so an alert on it
    would miss the first refusal of its kind.
    """

    DRAINING = "draining"  # 503: shutting down
    BAD_REQUEST = "bad_request"  # 400/426: not a valid upgrade
    METHOD = "method"  # 405
    TOO_LARGE = "too_large"  # 431: request head over the limit
    HANDSHAKE_TIMEOUT = "handshake_timeout"  # no complete request in time
    ORIGIN = "origin"  # 403: --allowed-origins
    UNAUTHORIZED = "unauthorized"  # 401: the token
    MAX_CONNECTIONS = "max_connections"  # 503: --max-connections
    PER_IP = "per_ip"  # 429: --max-connections-per-ip
    HANDSHAKE_RATE = "handshake_rate"  # 429: --handshake-rate
    INTERNAL_ERROR = "internal_error"  # ours: answering the request failed (logged)


class Counters:
    """Monotonic counts since the process started (exported as Prometheus counters)."""

    __slots__ = (
        "accept_exhausted",
        "broadcasts",
        "broker_outages",
        "broker_resubscribes",
        "bytes_sent",
        "chats",
        "coalesced_frames",
        "connections_accepted",
        "deliveries",
        "duplicate_chats",
        "errors",
        "frame_floods",
        "heartbeat_timeouts",
        "joins",
        "leaves",
        "messages_in",
        "presence_rate_limited",
        "rate_limited",
        "refused",
        "resumes",
        "resumes_recovered",
        "slow_consumers_dropped",
        "tokens_expired",
        "writes",
    )

    def __init__(self) -> None:
        # the chat core (server/core.py)
        self.messages_in = 0
        self.chats = 0
        self.joins = 0
        self.leaves = 0
        self.errors = 0
        self.rate_limited = 0  # chats refused by --rate-limit
        self.presence_rate_limited = 0  # joins and leaves refused by --join-rate-limit
        self.broadcasts = 0  # room flushes
        self.deliveries = 0  # frames delivered (frames x recipients)
        self.writes = 0  # socket writes issued by flushes
        self.coalesced_frames = 0  # frames that rode in another frame's write
        self.bytes_sent = 0
        # room history (server/broker.py, server/history.py)
        self.duplicate_chats = 0  # chats whose (username, id) the room had: acked, not posted
        self.resumes = 0  # joins with `since`
        self.resumes_recovered = 0  # ... answered with `recovered: true`
        # connections (server/connection.py, server/acceptor.py)
        self.connections_accepted = 0
        self.accept_exhausted = 0  # episodes of accept() failing for lack of descriptors
        self.slow_consumers_dropped = 0
        self.heartbeat_timeouts = 0
        self.frame_floods = 0  # clients closed with 1008 for --max-frames-per-second
        # the upgrade gate (server/gate.py)
        self.tokens_expired = 0
        self.refused: collections.Counter[RefusalReason] = collections.Counter(
            dict.fromkeys(RefusalReason, 0)
        )
        # the Redis link (server/redis/)
        self.broker_outages = 0
        self.broker_resubscribes = 0  # subscriber connections lost and remade (no outage)


class BrokerHealth(Protocol):
    """What the server reports about a distributed broker's link."""

    @property
    def up(self) -> bool: ...

    @property
    def backlog(self) -> int: ...

    async def roundtrip(self) -> float | None: ...


class HistoryFigures(Protocol):
    """What the server reports about its room history (server/history.py)."""

    bytes: int  # what the streams count against --history-max-bytes
    dropped: int  # streams forgotten (the TTL or the memory cap), since start

    def __len__(self) -> int: ...  # streams kept (rooms with members, or emptied < ttl ago)

    def messages(self) -> int: ...


class ServerState:
    """Owned by the server (server/app.py); read by metrics and /readyz."""

    def __init__(
        self,
        counters: Counters,
        connections: Sized,
        rooms: Mapping[str, Sized],
        slow_consumers: Collection[object],
    ) -> None:
        self.counters = counters
        self.connections = connections  # open WebSockets
        self.rooms = rooms  # room name -> its local members
        self.slow_consumers = slow_consumers  # connections over their write high-water mark
        self.broker: BrokerHealth | None = None  # set when --redis-url links nodes
        self.history: HistoryFigures | None = None  # the single-node history
        self.accepting = False  # the listening socket is open
        self.draining = False  # shutting down

    @property
    def ready(self) -> bool:
        """Taking traffic: started, not draining, and linked to Redis when one is configured."""
        broker_ok = self.broker is None or self.broker.up
        return self.accepting and not self.draining and broker_ok
