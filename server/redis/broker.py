"""The broker that links roomcast nodes through Redis (``--redis-url``).

Design (docs/scaling.md and docs/history.md have the long version):

* **Interest-based** (subscriptions.py): a node subscribes to ``room:{NAME}`` only while it
  serves the room; with ``--redis-cluster``, sharded Pub/Sub.
* **Redis decides a room's order.** A chat is one script (scripts.py): the room's next seq, the
  payload (encoded once, at the origin, with seq 0) with the seq spliced in, stored in the
  room's capped history stream and published. Every node, the origin included, delivers a room's
  messages in the order its subscription receives them; joins are placed in that order too, and
  a joiner's replay is read at its join's very position (joins.py).
* **Nothing lost silently.** Each node checks the seqs it delivers per room (positions.py): a
  jump (Pub/Sub dropped messages, a reconnect) is repaired from the room's stream before what
  follows; a lost stream (new epoch) is told to the room's members.
* **Presence is a hash per room**; node leases and a sweeper clean up after dead nodes
  (leases.py).
* **Redis trouble never takes the node down.** While Redis is unreachable the node works as a
  single node (local delivery of unnumbered chats, local member lists), tells its clients once,
  reconnects with backoff, then resubscribes, re-registers its members (registry.py), repairs
  every room's stream and announces what changed meanwhile.

This module: the broker interface the core calls (synchronous), what arrives from the room
channels, the link's lifecycle. Bytes: wire.py, scripts.py; the command queue: pipeline.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from ..broker import join_locally, leave_locally
from ..config import Config
from ..core import ChatCore, Member, Replay, Room
from ..protocol import (
    ChatMessage,
    ErrorCode,
    Position,
    SystemMessage,
    ack_frame,
    encode,
    error_frame,
)
from ..state import Counters
from . import scripts
from .joins import Joining, Joins, unavailable
from .leases import Leases
from .link import COMMAND_TIMEOUT, REDIS_ERRORS, Link
from .outage import deliver_held, deliver_unanswered
from .pipeline import JOIN, LEAVE, OTHER, PUBLISH, Op, Pipeline
from .positions import GAP, Positions
from .registry import registration
from .repairs import Repairs, deliver_judged, tell
from .subscriptions import Interest
from .wire import (
    ANNOUNCED,
    CHAT,
    MARK,
    PLAIN,
    TYPING,
    UnknownEnvelope,
    announced_head,
    channel_name,
    join_head,
    member_field,
    node_of,
    node_rooms_key,
    open_envelope,
    typing_head,
)
from .wire import (
    JOIN as JOIN_NOTICE,
)

log = logging.getLogger("roomcast.redis")

CLOSE_DRAIN_SECONDS = 3.0


class RedisBroker:
    def __init__(self, core: ChatCore, config: Config, counters: Counters) -> None:
        self.core = core
        self.config = config
        self.counters = counters
        self.node = secrets.token_hex(6)
        self.link = Link(
            config.redis_url,
            cluster=config.redis_cluster,
            on_message=self._on_message,
            on_lost=self._subscriber_lost,
            name=f"roomcast:{self.node}",
        )
        self.pipeline = Pipeline()
        self.interest = Interest(self.node)
        self.history_size = config.history_size
        self.positions = Positions()
        self.joins = Joins(
            core, config.history_size, 2 * config.max_buffered_bytes, self.positions.placed
        )
        self.leases = Leases(
            self.link,
            self.node,
            config.node_ttl,
            is_up=lambda: self._up,
            on_expired=self._lease_expired,
            on_lost=self._lost,
        )
        self.repairs = Repairs(
            core, self.positions, self.pipeline, self.joins, node=self.node,
            publish_command=lambda: self.link.publish_command, replay=self._on_message,
        )
        self._up = False
        self.closing = False
        self.registered: dict[str, tuple[str, str]] = {}  # field -> (room, name) Redis knows
        self.tasks: list[asyncio.Task[None]] = []
        self.recovering: asyncio.Task[None] | None = None
        self.reregistering: asyncio.Task[None] | None = None
        self.down_since: float | None = None
        self.told_clients = False
        self.first_attempt = asyncio.Event()  # set once the first connection attempt ended

    # ---- what the server reports (state.BrokerHealth) -----------------------------------------

    @property
    def up(self) -> bool:
        return self._up

    @property
    def backlog(self) -> int:
        return self.pipeline.backlog

    async def roundtrip(self) -> float | None:
        return await self.link.roundtrip() if self._up else None

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Starts connecting in the background; until Redis answers, the node serves locally."""
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self._pump()))
        self.tasks.append(loop.create_task(self.leases.renew_forever()))
        sweeping = self.leases.sweep_forever(self.link.publish_command, self.config.history_ttl)
        self.tasks.append(loop.create_task(sweeping))
        self.recovering = loop.create_task(self._recover(first=True))

    async def close(self) -> None:
        """Sends what is queued (leave notices of a shutdown), gives up the lease, disconnects."""
        deadline = time.monotonic() + CLOSE_DRAIN_SECONDS
        while self._up and self.pipeline.backlog and time.monotonic() < deadline:
            self.pipeline.wake.set()
            await asyncio.sleep(0.01)
        self.closing = True
        if self._up:
            with contextlib.suppress(*REDIS_ERRORS):
                await asyncio.wait_for(
                    self.leases.give_up(), max(0.1, deadline - time.monotonic())
                )
        tasks = [t for t in (*self.tasks, self.recovering, self.reregistering) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_DRAIN_SECONDS)
            for task in stuck:  # ours: a task that does not end when cancelled is a bug
                log.error("a Redis task did not stop when cancelled; exiting anyway: %r", task)
        await self.link.disconnect()

    # ---- the broker interface (called by the core, synchronous) -------------------------------

    def field(self, member: Member) -> str:
        return member_field(self.node, id(member))

    def chat(self, room: Room, sender: Member, message: ChatMessage, chat_id: str | None) -> None:
        payload = encode(message)  # seq 0: Redis splices the real one in
        if not self._up:
            if chat_id is not None:  # it could not get its place: the client retries it later
                self.core.send_direct(sender, error_frame(
                    ErrorCode.UNAVAILABLE, "Cannot reach the other chat servers: not sent, retry",
                    chat_id=chat_id,
                ))
                return
            self.core.deliver(room, payload)  # unnumbered (seq 0): not in the room's history
            return
        key = "" if chat_id is None else f"{message.username}\x00{chat_id}"
        args = scripts.chat_command(
            self.link.publish_command, room.name, payload, epoch=secrets.token_hex(8),
            size=self.history_size, key=key,
        )

        def placed(reply: object) -> None:
            posted, seq, epoch = scripts.parse_chat_reply(reply)
            if not posted:
                self.counters.duplicate_chats += 1
            if chat_id is not None and sender.room is room:
                ack = (sender, ack_frame(chat_id, seq))
                # after the sender's own copy, which comes through the subscription: maybe later
                if self.positions.ack_now(room.name, epoch, seq, ack):
                    self.core.send_direct(*ack)

        def lost() -> None:
            if sender.room is room:
                self.core.send_direct(sender, error_frame(
                    ErrorCode.UNAVAILABLE, "Lost contact with the other chat servers before this "
                    "message was confirmed: retry it (a retry is never posted twice)",
                    chat_id=chat_id,
                ))

        def refused() -> None:
            if sender.room is room:
                self.core.send_direct(sender, error_frame(
                    ErrorCode.UNAVAILABLE, "The chat servers could not place this message: "
                    "retry it", chat_id=chat_id,
                ))

        # Lost with the link, a chat without an id is delivered here (unnumbered); one with an
        # id is not: its sender is told it has no ack and retries (deduplicated if it did get
        # through). Refused by Redis (an error answered, e.g. out of memory), it reached no one:
        # its sender is told.
        if chat_id is None:
            self.pipeline.push(Op(PUBLISH, args, room=room.name, payload=payload, on_reply=placed,
                                  on_error=refused))
        else:
            self.pipeline.push(Op(PUBLISH, args, room=room.name, on_reply=placed, on_lost=lost,
                                  on_error=refused))

    def join(self, room: Room, member: Member, replay: Replay) -> None:
        self.interest.add(room.name)
        if not self._up:
            join_locally(
                self.core, room, member,
                before=b"" if replay is None else unavailable(room.name),
            )
            return
        notice = self.core.notice(room, member, "join", 0)
        field = self.field(member)
        joining = self.joins.expect(field, member, room, notice, replay)
        self.registered[field] = (room.name, member.name)
        self.pipeline.push(self._join_op(room.name, field, member.name, notice,
                                         head=join_head(field), replay=replay, joining=joining))

    def leave(self, room: Room, member: Member) -> None:
        self.interest.remove(room.name)
        if room.name not in self.interest.refs:
            self.positions.forget(room.name)
        field = self.field(member)
        self.joins.cancel(field)
        if not self._up:
            leave_locally(self.core, room, member)
            return
        self.registered.pop(field, None)
        notice = encode(self.core.notice(room, member, "leave", 0))
        self.pipeline.push(self._leave_op(room.name, field, notice, b"", force=False))
        self.core.drop_if_empty(room)

    def typing(self, room: Room, member: Member, payload: bytes) -> None:
        """Told here at once (order does not matter for a hint), and to the other nodes."""
        self.core.deliver_typing(room, payload, member)
        if self._up:
            args = (
                self.link.publish_command, channel_name(room.name),
                typing_head(self.node) + payload,
            )
            self.pipeline.push(Op(OTHER, args, room=room.name))

    def _join_op(
        self, room: str, field: str, username: str, notice: SystemMessage, *, head: bytes,
        limit: int | None = None, replay: Replay = None, reply_expected: bool = True,
        joining: Joining | None = None,
    ) -> Op:
        asked: tuple[str, int, str] = ("", 0, "")
        if isinstance(replay, Position):
            asked = ("since", replay.seq, replay.epoch)
        elif replay is not None:
            # no more than the stream holds: Lua would turn a huge K into a float Redis refuses
            asked = ("last", min(int(replay), self.history_size), "")
        args = scripts.join_command(
            self.link.publish_command, room, field, username, encode(notice), head=head,
            limit=self.config.max_users_list if limit is None else limit,
            epoch=secrets.token_hex(8), replay=asked, size=self.history_size,
        )
        if not reply_expected:
            return Op(JOIN, args, room=room)
        return Op(
            JOIN, args, room=room,
            on_reply=lambda reply: self.joins.replied(field, scripts.JoinReply(reply), joining),
            on_error=lambda: self.joins.failed(field, self.config.max_users_list, joining),
        )

    def _leave_op(self, room: str, field: str, notice: bytes, head: bytes, *, force: bool) -> Op:
        ttl = self.config.history_ttl
        args = scripts.leave_command(
            self.link.publish_command, room, field, notice, head, force=force, ttl=ttl
        )
        return Op(LEAVE, args, room=room, payload=notice)

    # ---- messages from Redis ------------------------------------------------------------------

    def _on_message(self, channel: bytes, data: bytes) -> None:
        name = self.interest.room_of(channel)
        room = self.core.rooms.get(name) if name is not None else None
        if room is None or name is None:
            return
        try:
            kind, sender, payload = open_envelope(data)
        except UnknownEnvelope as exc:
            log.warning("unknown message envelope on %r: %s", channel, exc)
            return
        positions = self.positions
        if positions.repairing(name):  # what the repair brings comes first
            if kind == MARK and sender.partition("/")[0] == self.node:
                self.repairs.marker(name)
            else:
                positions.keep(name, (channel, data))
            return
        if kind == CHAT:
            if deliver_judged(self.core, positions, room, sender, payload) == GAP:
                self.repairs.start(name, (channel, data))
            else:
                self.pipeline.came_back(name, payload)
        elif kind == PLAIN:
            self.core.deliver(room, payload)
        elif kind == ANNOUNCED:  # that node told its own members already
            if sender != self.node:
                self.core.deliver(room, payload)
        elif kind == TYPING:
            if sender != self.node:
                self.core.deliver_typing(room, payload, None)
        elif kind == JOIN_NOTICE:
            if len(room):  # the joiner's own stream starts after its notice
                self.core.deliver(room, payload)
            if node_of(sender) == self.node:
                self.joins.positioned(sender, room)

    # ---- the command pump ---------------------------------------------------------------------

    async def _pump(self) -> None:
        pipeline = self.pipeline
        while True:
            await pipeline.wake.wait()
            pipeline.wake.clear()
            if not self._up:
                continue
            try:
                extra = await self.interest.reconcile(self.link)
                # Interest that changed while we awaited the confirmations is not subscribed
                # yet: a room's commands wait for its subscription, or this node would miss
                # its own messages (it delivers only what comes back through Redis).
                ops = extra + pipeline.take(held_back=self.interest.dirty)
                if ops:
                    await pipeline.send(self.link.client, ops)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, REDIS_ERRORS):
                    log.exception("unexpected error sending to Redis")
                self._lost(exc)

    # ---- outage and recovery ------------------------------------------------------------------

    def _subscriber_lost(self, exc: BaseException) -> None:
        """A subscriber connection dropped (Redis killed it, a network blip) while commands may
        still work: not an outage. Every room is resubscribed and repaired from where this node's
        delivery stopped; only if that fails is Redis lost."""
        if not self._up or self.closing:
            return
        log.warning("lost the Redis subscription (%s); resubscribing and repairing", exc)
        self.counters.broker_resubscribes += 1
        self.interest.want_all()
        for name in [n for n in self.interest.refs if n in self.core.rooms]:
            self.positions.restart(name)
            self.repairs.start(name)
        self.pipeline.wake.set()

    def _lost(self, exc: BaseException) -> None:
        """Redis went away: serve locally from now on, tell the clients once, start reconnecting."""
        if not self._up or self.closing:
            return
        self._up = False
        self.counters.broker_outages += 1
        self.down_since = time.monotonic()
        log.warning(
            "lost Redis at %s (%s); serving local rooms only until it is back",
            self.link.url,
            exc or type(exc).__name__,
        )
        core = self.core
        held = self.positions.abandon()
        deliver_unanswered(core, self.pipeline, self.positions, held)
        self.joins.fail_over(self.config.max_users_list)
        deliver_held(core, self.positions, held)
        self.told_clients = bool(core.rooms)
        for room in list(core.rooms.values()):
            if len(room):
                tell(self.core,
                    room, "outage", "Lost contact with the other chat servers: for now only "
                    "people on this server see your messages",
                )
        self.interest.forget()
        if self.recovering is None or self.recovering.done():
            self.recovering = asyncio.get_running_loop().create_task(self._recover(first=False))

    def _lease_expired(self) -> None:
        """Redis answers but forgot this node (FLUSHALL, or a pause longer than --node-ttl, and
        maybe the sweeper removed its members): it registers again without leaving the Redis
        path, so its chats keep their one numbering on every node meanwhile."""
        if self.reregistering is None or self.reregistering.done():
            self.reregistering = asyncio.get_running_loop().create_task(self._reregister())

    async def _reregister(self) -> None:
        try:
            swept = await self.leases.take()
        except REDIS_ERRORS as exc:
            self._lost(exc)
            return
        if not self._up:  # lost meanwhile: the resync after the outage registers everything
            return
        # The subscriptions never dropped; what Redis lost is the list of them (for the sweeper)
        # and the member lists. Sent before anything queued; nothing awaits from here.
        ops = [Op(OTHER, ("SADD", node_rooms_key(self.node), name))
               for name in self.interest.subscribed]
        self.pipeline.push_first(ops + self._registration(swept))

    async def _recover(self, *, first: bool) -> None:
        def failed(attempts: int, exc: BaseException) -> None:
            self.first_attempt.set()
            if attempts == 1 and first:
                log.error("cannot reach Redis at %s: %s; serving local rooms only, retrying "
                          "with backoff", self.link.url, exc)
            elif attempts == 1:
                log.info("Redis still unreachable (%s); retrying with backoff", exc)

        attempts, delay = await self.link.connect_with_backoff(scripts.load, failed)
        try:
            await self._resync()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("Redis resync failed (%s); retrying", exc)
            await self.link.disconnect()
            await asyncio.sleep(delay)
            self.recovering = asyncio.get_running_loop().create_task(self._recover(first=first))
            return
        self.first_attempt.set()
        if first and attempts == 0:
            log.info("connected to Redis at %s as node %s", self.link.url, self.node)
        else:
            down = time.monotonic() - (self.down_since or time.monotonic())
            log.warning(
                "Redis at %s is back%s; rooms resubscribed, members re-registered, streams "
                "repaired", self.link.url, f" after {down:.1f}s" if self.down_since else "",
            )
        self.down_since = None

    async def _resync(self) -> None:
        """Resubscribes every room served here, makes Redis's member lists match this node and
        repairs every room's stream from where this node's delivery stopped."""
        swept = await self.leases.take()
        # Every room is held for its repair (what other nodes said meanwhile, before what
        # follows) before it is subscribed: a chat arriving before the repair is asked for
        # would otherwise be delivered ahead of what this node missed (a new epoch's first
        # messages skipped behind a reset at its seq).
        for name in [name for name in self.interest.refs if name in self.core.rooms]:
            self.repairs.start(name)
        # Subscriptions first, so the notices published below come back to this node's rooms.
        self.interest.want_all()
        await self.pipeline.send(self.link.client, await self.interest.reconcile(self.link))
        # From here to `self._up = True` nothing awaits: the snapshot is exact.
        ops = self._registration(swept)
        self._up = True
        if self.told_clients:
            self.told_clients = False
            for room in list(self.core.rooms.values()):
                if len(room):
                    tell(self.core, room, "recovered", "Reconnected to the other chat servers")
        self.pipeline.push_first(ops)

    def _registration(self, swept: bool) -> list[Op]:
        """The commands that make Redis's member lists say who is here now (registry.py)."""
        head = announced_head(self.node)
        ops, self.registered = registration(
            self.core.rooms.values(), self.field, self.registered, node=self.node, swept=swept,
            leave=lambda c, notice: self._leave_op(c.room, c.field, encode(notice), head,
                                                   force=True),
            join=lambda c, notice: self._join_op(c.room, c.field, c.name, notice, head=head,
                                                 limit=0, reply_expected=False),
        )
        return ops


async def start(broker: RedisBroker) -> None:
    """Starts the broker (already the core's) and returns once its first connection attempt has
    succeeded or failed (bounded), so that a node that says it is ready is linked to the others
    whenever Redis is there; if it is not, the node serves its local rooms and keeps retrying in
    the background."""
    broker.start()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(broker.first_attempt.wait(), COMMAND_TIMEOUT + 1)
