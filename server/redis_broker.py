"""A broker that links roomcast nodes through Redis Pub/Sub (``--redis-url``).

Design (docs/scaling.md has the long version):

* **Interest-based.** A node subscribes to a room's channel ``room:{NAME}`` only while it has
  members there (reference-counted; unsubscribed when the last one leaves), so it never decodes
  traffic for rooms it does not serve. With ``--redis-cluster`` it uses sharded Pub/Sub
  (SSUBSCRIBE/SPUBLISH), so each room's traffic stays on the shard that owns its slot.
* **Encode once, at the origin.** What goes through Redis is the final JSON payload. Each node
  frames it once and queues it on the room's coalesced flush, like a local message.
* **One order per room.** The origin does *not* deliver locally first: every node, the origin
  included, delivers a room's messages in the order its subscription receives them from Redis.
* **Joins are placed in that order too.** The join runs as one Lua script (HSET the member, HLEN,
  publish the notice, HSCAN up to --max-users-list names), so the joiner's member list and count
  are exactly the room at the notice's position in the channel. The joiner is admitted (gets its
  welcome) when its own notice comes back through the subscription: it receives every message
  after its notice and none before, on every node.
* **Presence is a hash per room** ``room:{NAME}:members`` (field ``NODE:CONN``, value username):
  O(1) per join or leave, one capped HSCAN for the joiner. Each node renews a lease
  ``node:{ID}`` (TTL --node-ttl); one node at a time (a short lock) sweeps the members of nodes
  whose lease expired and publishes their leave notices.
* **Redis trouble never takes the node down.** While Redis is unreachable the node works as a
  single node (local delivery, local member lists), tells its clients once, reconnects with
  backoff, then resubscribes, re-registers its members and announces what changed meanwhile.

Commands from the hot path are queued and sent by one task as one pipeline per batch (one round
trip per event-loop tick under load), which also keeps each room's joins, messages and leaves
from this node in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .broker import join_locally
from .protocol import SystemMessage, encode, text_frame

if TYPE_CHECKING:
    from .config import Config
    from .core import ChatCore, Member, Room

log = logging.getLogger("roomcast.redis")

REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
COMMAND_TIMEOUT = 5.0
NODES_KEY = "roomcast:nodes"
SWEEP_LOCK_KEY = "roomcast:sweeper"
SWEPT_TOMBSTONE_TTL = 3600

# KEYS[1] members hash. ARGV: field, username, publish command, channel, envelope head, notice
# prefix (up to `"count":`), notice suffix, most names to return. Returns {count, names}.
JOIN_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local n = redis.call('HLEN', KEYS[1])
redis.call(ARGV[3], ARGV[4], ARGV[5] .. ARGV[6] .. n .. ARGV[7])
local limit = tonumber(ARGV[8])
local names = {}
if limit > 0 then
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', limit)
    cursor = page[1]
    local kv = page[2]
    for i = 2, #kv, 2 do
      if #names >= limit then break end
      names[#names + 1] = kv[i]
    end
  until cursor == '0' or #names >= limit
end
return {n, names}
"""

# KEYS[1] members hash. ARGV: field, publish command, channel, envelope head, notice prefix,
# notice suffix, force ("1": announce even when the field was not there). Returns the count left.
LEAVE_SCRIPT = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
local n = redis.call('HLEN', KEYS[1])
if (removed == 1 or ARGV[7] == '1') and n > 0 then
  redis.call(ARGV[2], ARGV[3], ARGV[4] .. ARGV[5] .. n .. ARGV[6])
end
return n
"""

_COUNT_MARK = b',"count":0,'

# Op kinds
_PUB, _JOIN, _LEAVE, _OTHER = 0, 1, 2, 3


class StatusMessage(msgspec.Struct, tag_field="type", tag="system"):
    """Tells a room's local members that the link to the other nodes is down (``outage``) or
    back (``recovered``). No username or count: it changes nobody's presence."""

    text: str
    event: str
    room: str
    timestamp: int


def members_key(room: str) -> str:
    return f"room:{{{room}}}:members"


def channel_name(room: str) -> bytes:
    return f"room:{{{room}}}".encode()


def lease_key(node: str) -> str:
    return f"node:{{{node}}}"


def node_rooms_key(node: str) -> str:
    return f"node:{{{node}}}:rooms"


def swept_key(node: str) -> str:
    return f"node:{{{node}}}:swept"


def split_count(payload: bytes) -> tuple[bytes, bytes]:
    """Splits an encoded notice whose count is 0 around the count, for Redis to fill in.

    `,"count":` cannot occur inside an encoded string (a quote there is escaped), and count is
    the last-but-one field, so the last occurrence is the field itself.
    """
    at = payload.rindex(_COUNT_MARK)
    return payload[: at + len(_COUNT_MARK) - 2], payload[at + len(_COUNT_MARK) - 1 :]


class _Op:
    __slots__ = ("args", "kind", "payload", "room", "suffix", "token")

    def __init__(
        self,
        kind: int,
        args: tuple[Any, ...],
        *,
        room: str | None = None,
        payload: bytes | None = None,
        token: str | None = None,
        suffix: bytes = b"",
    ) -> None:
        self.kind = kind
        self.args = args
        self.room = room  # room name, to deliver locally when Redis fails under the op
        self.payload = payload  # the message (a notice: the part before its count)
        self.suffix = suffix  # a notice: the part after its count
        self.token = token  # a joiner's field


class _Joining:
    """A local member between its join request and its admission into the room's order."""

    __slots__ = (
        "count", "held", "member", "notice", "positioned", "real_write", "room", "users",
    )

    def __init__(self, member: Member, room: Room, notice: SystemMessage) -> None:
        self.member = member
        self.room = room
        self.notice = notice
        self.count = 0
        self.users: list[str] | None = None  # from the script's reply
        self.positioned = False  # its notice came back through the subscription
        self.real_write: Callable[[bytes], object] | None = None  # set while frames are held
        self.held: list[bytes] = []


class _Subscriber:
    """One subscribed connection (one per shard in cluster mode) and its reader task."""

    def __init__(self, broker: RedisBroker, kwargs: dict[str, Any]) -> None:
        self.broker = broker
        self.conn = Connection(**kwargs)
        self.pending: dict[bytes, int] = {}  # channel -> (un)subscribe confirmations awaited
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.alive = False

    async def connect(self) -> None:
        await self.conn.connect()  # type: ignore[no-untyped-call]
        # redis-py's default handler for pushed messages formats each one into a debug log line.
        self.conn._parser.set_pubsub_push_handler(_as_is)  # type: ignore[attr-defined]
        self.alive = True
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def send(self, command: str, channels: list[bytes]) -> None:
        for channel in channels:
            self.pending[channel] = self.pending.get(channel, 0) + 1
        await self.conn.send_command(command, *channels)

    async def confirmed(self, channels: list[bytes]) -> None:
        pending = self.pending
        while any(pending.get(c) for c in channels):
            if not self.alive:
                raise ConnectionError("subscriber connection lost")
            self.changed.clear()
            await self.changed.wait()

    async def _read(self) -> None:
        on_message = self.broker._on_message
        pending = self.pending
        try:
            while True:
                reply = await self.conn.read_response(timeout=None, push_request=True)
                if not isinstance(reply, list) or len(reply) < 3:
                    continue
                kind = reply[0]
                if kind in (b"message", b"smessage"):
                    on_message(reply[1], reply[2])
                elif kind in (b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe"):
                    channel = reply[1]
                    left = pending.get(channel, 0) - 1
                    if left > 0:
                        pending[channel] = left
                    else:
                        pending.pop(channel, None)
                    self.changed.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.alive = False
            self.changed.set()
            self.broker._lost(exc)

    async def close(self) -> None:
        self.alive = False
        self.changed.set()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(Exception):
            await self.conn.disconnect()


class RedisBroker:
    def __init__(self, core: ChatCore, config: Config) -> None:
        self.core = core
        self.config = config
        self.url = config.redis_url
        self.cluster = config.redis_cluster
        self.node = secrets.token_hex(6)
        self.ttl = config.node_ttl
        self.publish_command = "SPUBLISH" if self.cluster else "PUBLISH"
        self.subscribe_command = "SSUBSCRIBE" if self.cluster else "SUBSCRIBE"
        self.unsubscribe_command = "SUNSUBSCRIBE" if self.cluster else "UNSUBSCRIBE"
        self.up = False
        self.closing = False
        self.refs: dict[str, int] = {}  # room -> local members and arrivals
        self.subscribed: set[str] = set()  # rooms whose SUBSCRIBE was sent (and no UNSUBSCRIBE)
        self.sub_dirty: set[str] = set()
        self.channels: dict[bytes, str] = {}  # subscribed channel -> room
        self.joining: dict[str, _Joining] = {}  # field -> arriving local member
        self.registered: dict[str, tuple[str, str]] = {}  # field -> (room, name) Redis knows
        self.ops: list[_Op] = []
        self.inflight: list[_Op] = []
        self.wake = asyncio.Event()
        self.client: Any = None
        self.subscribers: dict[tuple[str, int], _Subscriber] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.recovering: asyncio.Task[None] | None = None
        self.down_since: float | None = None
        self.told_clients = False
        self.has_lease = False
        self.outages = 0
        self.first_attempt = asyncio.Event()  # set once the first connection attempt ended

    @property
    def backlog(self) -> int:
        """Commands queued for Redis or awaiting its reply."""
        return len(self.ops) + len(self.inflight)

    async def roundtrip(self) -> float | None:
        """Seconds for one PING to Redis, or None while it is unreachable."""
        if not self.up or self.client is None:
            return None
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.client.ping(), COMMAND_TIMEOUT)
        except (*REDIS_ERRORS, TimeoutError):
            return None
        return time.monotonic() - started

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Starts connecting in the background; until Redis answers, the node serves locally."""
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self._pump()))
        self.tasks.append(loop.create_task(self._lease_loop()))
        self.tasks.append(loop.create_task(self._sweep_loop()))
        self.recovering = loop.create_task(self._recover(first=True))

    async def close(self) -> None:
        """Sends what is queued (leave notices of a shutdown), gives up the lease, disconnects."""
        deadline = time.monotonic() + 3.0
        while self.up and (self.ops or self.inflight) and time.monotonic() < deadline:
            self.wake.set()
            await asyncio.sleep(0.01)
        self.closing = True
        if self.up:
            with contextlib.suppress(*REDIS_ERRORS):
                pipe = self.client.pipeline(transaction=False)
                pipe.delete(lease_key(self.node), node_rooms_key(self.node))
                pipe.srem(NODES_KEY, self.node)
                await asyncio.wait_for(pipe.execute(), max(0.1, deadline - time.monotonic()))
        for task in [*self.tasks, self.recovering]:
            if task is not None:
                task.cancel()
        for task in [*self.tasks, self.recovering]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._disconnect()

    async def _connect(self) -> None:
        retry = Retry(NoBackoff(), 0)
        common = {
            "socket_timeout": COMMAND_TIMEOUT,
            "socket_connect_timeout": 2.0,
            "retry": retry,
        }
        client: Any
        if self.cluster:
            client = RedisCluster.from_url(self.url, **common)
            await asyncio.wait_for(client.initialize(), COMMAND_TIMEOUT)
        else:
            client = Redis.from_url(self.url, **common)  # type: ignore[arg-type]
        self.client = client
        await asyncio.wait_for(client.ping(), COMMAND_TIMEOUT)
        if not self.cluster:
            await self._subscriber_for(b"")

    async def _subscriber_for(self, channel: bytes) -> _Subscriber:
        if self.cluster:
            node = self.client.get_node_from_key(channel)
            address = (node.host, int(node.port))
        else:
            address = ("", 0)
        sub = self.subscribers.get(address)
        if sub is None or not sub.alive:
            kwargs: dict[str, Any] = dict(parse_url(self.url))
            kwargs.pop("db", None) if self.cluster else None
            if self.cluster:
                kwargs["host"], kwargs["port"] = address
            kwargs.update(socket_connect_timeout=2.0, socket_timeout=None)
            sub = _Subscriber(self, kwargs)
            self.subscribers[address] = sub
            await asyncio.wait_for(sub.connect(), COMMAND_TIMEOUT)
        return sub

    async def _disconnect(self) -> None:
        subscribers = list(self.subscribers.values())
        self.subscribers.clear()
        for sub in subscribers:
            await sub.close()
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    # ---- the broker interface (called by the core, synchronous) -------------------------------

    def field(self, member: Member) -> str:
        return f"{self.node}:{id(member):x}"

    def publish(self, room: Room, payload: bytes) -> None:
        if not self.up:
            self.core.deliver(room, payload)
            return
        self.ops.append(
            _Op(
                _PUB,
                (self.publish_command, channel_name(room.name), payload),
                room=room.name,
                payload=payload,
            )
        )
        self.wake.set()

    def join(self, room: Room, member: Member) -> None:
        name = room.name
        refs = self.refs.get(name, 0)
        self.refs[name] = refs + 1
        if not refs:
            self.sub_dirty.add(name)
        if not self.up:
            self._admit_locally(room, member)
            return
        notice = self.core.notice(room, member, "join", 0)
        field = self.field(member)
        self.joining[field] = _Joining(member, room, notice)
        self.registered[field] = (name, member.name)
        head = b"J%s\n" % field.encode()
        self.ops.append(self._join_op(name, field, member.name, notice, head=head))
        self.wake.set()

    def leave(self, room: Room, member: Member) -> None:
        name = room.name
        refs = self.refs.get(name, 0) - 1
        if refs > 0:
            self.refs[name] = refs
        else:
            self.refs.pop(name, None)
            self.sub_dirty.add(name)
        field = self.field(member)
        joining = self.joining.pop(field, None)
        if joining is not None and joining.real_write is not None:
            member.write = joining.real_write
        core = self.core
        if not self.up:
            if not core.drop_if_empty(room):
                core.deliver(room, encode(core.notice(room, member, "leave", len(room))))
            return
        self.registered.pop(field, None)
        notice = core.notice(room, member, "leave", 0)
        self.ops.append(self._leave_op(name, field, notice, b"", force=False))
        self.wake.set()
        core.drop_if_empty(room)

    def _join_op(
        self,
        room: str,
        field: str,
        username: str,
        notice: SystemMessage,
        *,
        head: bytes,
        limit: int | None = None,
    ) -> _Op:
        prefix, suffix = split_count(encode(notice))
        limit = self.config.max_users_list if limit is None else limit
        args = (
            "EVAL", JOIN_SCRIPT, 1, members_key(room), field, username, self.publish_command,
            channel_name(room), head, prefix, suffix, limit,
        )
        return _Op(_JOIN, args, room=room, payload=prefix, token=field, suffix=suffix)

    def _leave_op(
        self, room: str, field: str, notice: SystemMessage, head: bytes, *, force: bool
    ) -> _Op:
        prefix, suffix = split_count(encode(notice))
        args = (
            "EVAL", LEAVE_SCRIPT, 1, members_key(room), field, self.publish_command,
            channel_name(room), head, prefix, suffix, "1" if force else "0",
        )
        return _Op(_LEAVE, args, room=room, payload=prefix, token=field, suffix=suffix)

    def _admit_locally(self, room: Room, member: Member) -> None:
        """A join while Redis is away: as on a single node (local notice, local member list)."""
        join_locally(self.core, room, member)

    # ---- messages from Redis ------------------------------------------------------------------

    def _on_message(self, channel: bytes, data: bytes) -> None:
        name = self.channels.get(channel)
        if name is None:
            return
        room = self.core.rooms.get(name)
        if room is None:
            return
        if data[:1] == b"{":
            self.core.deliver(room, data)
            return
        head, _, payload = data.partition(b"\n")
        kind, ident = head[:1], head[1:].decode()
        if kind == b"X":  # announced by `ident` on its own already
            if ident.split(":", 1)[0] != self.node:
                self.core.deliver(room, payload)
            return
        if kind != b"J":
            log.warning("unknown message envelope on %r: %r", channel, head[:40])
            return
        if len(room):
            self.core.deliver(room, payload)
        joining = self.joining.get(ident)
        if joining is None or joining.positioned or joining.room is not room:
            return
        joining.positioned = True
        member = joining.member
        if joining.users is not None:
            del self.joining[ident]
            self.core.admit(room, member, self._welcome(joining))
        else:  # the script's reply is still on its way: hold the member's frames until then
            joining.real_write = member.write
            held: list[bytes] = []
            member.write = held.append
            self.core.admit(room, member, None)
            joining.held = held

    def _welcome(self, joining: _Joining) -> bytes:
        notice = joining.notice
        notice.count = joining.count
        notice.users = joining.users
        return text_frame(encode(notice))

    def _on_join_reply(self, field: str, reply: Any) -> None:
        joining = self.joining.get(field)
        if joining is None:
            return
        count, names = reply
        joining.count = int(count)
        joining.users = [n.decode("utf-8", "replace") for n in names]
        if joining.positioned:
            del self.joining[field]
            self._release(joining)

    def _release(self, joining: _Joining) -> None:
        member = joining.member
        held = joining.held
        joining.held = []
        write = joining.real_write
        if write is not None:
            member.write = write
            joining.real_write = None
        member.write(self._welcome(joining) + b"".join(held))

    # ---- the command pump ---------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not self.up:
                continue
            try:
                extra = await self._reconcile()
                # Interest that changed while we awaited the confirmations is not subscribed
                # yet: a room's commands wait for its subscription, or this node would miss
                # its own messages (it delivers only what comes back through Redis).
                unsettled = self.sub_dirty
                if unsettled:
                    ops = [op for op in self.ops if op.room not in unsettled]
                    self.ops = [op for op in self.ops if op.room in unsettled]
                    self.wake.set()
                else:
                    ops, self.ops = self.ops, []
                ops = extra + ops
                if ops:
                    self.inflight = ops
                    await self._execute(ops)
                    self.inflight = []
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, REDIS_ERRORS):
                    log.exception("unexpected error sending to Redis")
                self._lost(exc)

    async def _execute(self, ops: list[_Op]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for op in ops:
            pipe.execute_command(*op.args)
        results = await asyncio.wait_for(pipe.execute(raise_on_error=False), COMMAND_TIMEOUT)
        for op, result in zip(ops, results, strict=False):
            if isinstance(result, Exception):
                if _is_connection_error(result):
                    raise result
                log.error("redis command %s failed: %s", op.args[0], result)
            elif op.kind == _JOIN and op.token is not None:
                self._on_join_reply(op.token, result)

    async def _reconcile(self) -> list[_Op]:
        """(Un)subscribes the rooms whose local interest changed; waits for the subscriptions."""
        dirty, self.sub_dirty = self.sub_dirty, set()
        ops: list[_Op] = []
        subs: dict[_Subscriber, list[bytes]] = {}
        unsubs: dict[_Subscriber, list[bytes]] = {}
        rooms_key = node_rooms_key(self.node)
        for name in dirty:
            wanted = name in self.refs
            if wanted == (name in self.subscribed):
                continue
            channel = channel_name(name)
            sub = await self._subscriber_for(channel)
            if wanted:
                self.subscribed.add(name)
                self.channels[channel] = name
                subs.setdefault(sub, []).append(channel)
                ops.append(_Op(_OTHER, ("SADD", rooms_key, name)))
            else:
                self.subscribed.discard(name)
                self.channels.pop(channel, None)
                unsubs.setdefault(sub, []).append(channel)
                ops.append(_Op(_OTHER, ("SREM", rooms_key, name)))
        for sub, channels in unsubs.items():
            await sub.send(self.unsubscribe_command, channels)
        for sub, channels in subs.items():
            await sub.send(self.subscribe_command, channels)
        for sub, channels in subs.items():
            await asyncio.wait_for(sub.confirmed(channels), COMMAND_TIMEOUT)
        return ops

    # ---- outage and recovery ------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        """Redis went away: serve locally from now on, tell the clients once, start reconnecting."""
        if not self.up or self.closing:
            return
        self.up = False
        self.outages += 1
        self.down_since = time.monotonic()
        log.warning(
            "lost Redis at %s (%s); serving local rooms only until it is back",
            self.url,
            exc or type(exc).__name__,
        )
        core = self.core
        failed, self.inflight = self.inflight, []
        queued, self.ops = self.ops, []
        for op in chain(failed, queued):  # deliver here what may never have reached anyone
            if op.room is None or op.payload is None or op.kind == _JOIN:
                continue
            room = core.rooms.get(op.room)
            if room is None:
                continue
            if op.kind == _PUB:
                core.deliver(room, op.payload)
            elif op.kind == _LEAVE and len(room):
                core.deliver(room, b"%s%d%s" % (op.payload, len(room), op.suffix))
        joining, self.joining = self.joining, {}
        for record in joining.values():
            room = record.room
            if record.member.room is not room:
                continue
            if record.positioned:
                record.users = room.names(self.config.max_users_list)
                record.count = len(room)
                self._release(record)
            else:
                self._admit_locally(room, record.member)
        self.told_clients = bool(core.rooms)
        self._tell_rooms(
            "outage",
            "Lost contact with the other chat servers: for now only people on this server "
            "see your messages",
        )
        self.subscribed.clear()
        self.channels.clear()
        if self.recovering is None or self.recovering.done():
            self.recovering = asyncio.get_running_loop().create_task(self._recover(first=False))

    def _tell_rooms(self, event: str, text: str) -> None:
        core = self.core
        now = int(time.time() * 1000)
        for room in list(core.rooms.values()):
            if len(room):
                core.deliver(room, encode(StatusMessage(text, event, room.name, now)))

    async def _recover(self, *, first: bool) -> None:
        await self._disconnect()
        delay = 0.1
        attempts = 0
        while True:
            try:
                await self._connect()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempts += 1
                self.first_attempt.set()
                if attempts == 1:
                    if first:
                        log.error(
                            "cannot reach Redis at %s: %s; serving local rooms only, "
                            "retrying with backoff",
                            self.url,
                            exc,
                        )
                    else:
                        log.info("Redis still unreachable (%s); retrying with backoff", exc)
                await self._disconnect()
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
        try:
            await self._resync()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("Redis resync failed (%s); retrying", exc)
            await self._disconnect()
            await asyncio.sleep(delay)
            self.recovering = asyncio.get_running_loop().create_task(self._recover(first=first))
            return
        self.first_attempt.set()
        if first and attempts == 0:
            log.info("connected to Redis at %s as node %s", self.url, self.node)
        else:
            down = time.monotonic() - (self.down_since or time.monotonic())
            log.warning(
                "Redis at %s is back%s; rooms resubscribed, members re-registered",
                self.url,
                f" after {down:.1f}s" if self.down_since else "",
            )
        self.down_since = None

    async def _resync(self) -> None:
        """Resubscribes every room served here and makes Redis's member lists match this node."""
        client = self.client
        swept = await client.exists(swept_key(self.node))
        await client.set(lease_key(self.node), "1", px=int(self.ttl * 1000))
        await client.sadd(NODES_KEY, self.node)
        # Subscriptions first, so the notices published below come back to this node's rooms.
        self.subscribed.clear()
        self.channels.clear()
        self.sub_dirty = set(self.refs)
        extra = await self._reconcile()
        await self._execute(extra)
        # From here to `self.up = True` nothing awaits: the snapshot is exact.
        known = {} if swept else self.registered
        current: dict[str, tuple[str, str]] = {}
        for room in self.core.rooms.values():
            for member in chain(room.members, room.late):
                current[self.field(member)] = (room.name, member.name)
        ops: list[_Op] = []
        if swept:
            ops.append(_Op(_OTHER, ("DEL", swept_key(self.node))))
        head = b"X%s\n" % self.node.encode()
        now = int(time.time() * 1000)
        for field, (room_name, name) in known.items():
            if field not in current:  # left while Redis was away
                notice = SystemMessage(
                    f"{name} left #{room_name}", "leave", room_name, name, 0, now
                )
                ops.append(self._leave_op(room_name, field, notice, head, force=True))
        for field, (room_name, name) in current.items():
            if known.get(field) == (room_name, name):
                ops.append(_Op(_OTHER, ("HSET", members_key(room_name), field, name)))
            else:  # joined while Redis was away (or this node was swept meanwhile)
                notice = SystemMessage(
                    f"{name} joined #{room_name}", "join", room_name, name, 0, now
                )
                ops.append(self._join_op(room_name, field, name, notice, head=head, limit=0))
        for op in ops:
            op.token = None  # replies of these joins are not for a waiting member
        self.registered = current
        self.has_lease = True
        self.up = True
        if self.told_clients:
            self.told_clients = False
            self._tell_rooms("recovered", "Reconnected to the other chat servers")
        self.ops[:0] = ops
        self.wake.set()

    # ---- node lease and the sweeper -----------------------------------------------------------

    async def _lease_loop(self) -> None:
        period = max(0.05, self.ttl / 3)
        while True:
            await asyncio.sleep(period)
            if not self.up:
                continue
            try:
                previous = await asyncio.wait_for(
                    self.client.set(
                        lease_key(self.node), "1", px=int(self.ttl * 1000), get=True
                    ),
                    COMMAND_TIMEOUT,
                )
                if previous is None and self.has_lease and self.up:
                    log.warning("this node's lease had expired in Redis; re-registering members")
                    self.up = False
                    self.recovering = asyncio.get_running_loop().create_task(
                        self._resync_now()
                    )
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self._lost(exc)

    async def _resync_now(self) -> None:
        try:
            await self._resync()
        except REDIS_ERRORS as exc:
            self.up = True
            self._lost(exc)

    async def _sweep_loop(self) -> None:
        period = max(0.05, self.ttl / 2)
        while True:
            await asyncio.sleep(period * (0.75 + random.random() / 2))
            if not self.up:
                continue
            try:
                await self.sweep(period)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                log.info("sweep skipped: %s", exc)

    async def sweep(self, lock_seconds: float) -> int:
        """Removes the members of nodes whose lease expired (one sweeper at a time)."""
        client = self.client
        got = await client.set(SWEEP_LOCK_KEY, self.node, nx=True, px=int(lock_seconds * 1000))
        if not got:
            return 0
        swept = 0
        for raw in await client.smembers(NODES_KEY):
            node = raw.decode()
            if node == self.node or await client.exists(lease_key(node)):
                continue
            swept += await self._sweep_node(node)
        return swept

    async def _sweep_node(self, node: str) -> int:
        client = self.client
        removed = 0
        now = int(time.time() * 1000)
        for raw_room in await client.smembers(node_rooms_key(node)):
            room = raw_room.decode()
            key = members_key(room)
            entries: list[tuple[str, str]] = []
            async for field, name in client.hscan_iter(key, match=f"{node}:*", count=500):
                entries.append((field.decode(), name.decode("utf-8", "replace")))
            if not entries:
                continue
            pipe = client.pipeline(transaction=False)
            for field, name in entries:
                notice = SystemMessage(f"{name} left #{room}", "leave", room, name, 0, now)
                op = self._leave_op(room, field, notice, b"", force=False)
                pipe.execute_command(*op.args)
            await pipe.execute()
            removed += len(entries)
        pipe = client.pipeline(transaction=False)
        pipe.delete(node_rooms_key(node))
        pipe.srem(NODES_KEY, node)
        pipe.set(swept_key(node), "1", ex=SWEPT_TOMBSTONE_TTL)
        await pipe.execute()
        log.info("node %s stopped renewing its lease: removed its %d members", node, removed)
        return removed


async def _as_is(reply: Any) -> Any:
    return reply


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))


async def attach(core: ChatCore, config: Config) -> RedisBroker | None:
    """Puts a RedisBroker behind `core` when --redis-url is set.

    Returns once the first connection attempt has succeeded or failed (bounded), so that a node
    that says it is ready is linked to the others whenever Redis is there; if it is not, the node
    serves its local rooms and keeps retrying in the background.
    """
    if not config.redis_url:
        return None
    broker = RedisBroker(core, config)
    core.set_broker(broker)
    broker.start()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(broker.first_attempt.wait(), COMMAND_TIMEOUT + 1)
    return broker
