"""What a node delivers itself when its link to Redis drops: the start of an outage.

Until then, this node's members get everything, its own chats included, back through Redis.
When the link drops, the chats this node sent that Redis has not answered may never have reached
anyone: they are delivered here, unnumbered (``"seq":0``), so that their senders' rooms on this
node do not lose them. Redis may have placed one anyway: its numbered copy then comes back in
the repair after the outage, which does not deliver it here a second time
(server/redis/positions.py), and one whose copy came back before the link dropped is not
delivered again at all (server/redis/pipeline.py). A chat with an ``id`` is not delivered so: its
sender is told ``unavailable`` and retries it with the same id (deduplicated if Redis had placed
it), so it is never left waiting for an ack that will not come. What a repair under way was
holding goes out as far as it continues each room's order; the rest comes with the repair after
the outage.
"""

from __future__ import annotations

import contextlib

from ..core import ChatCore
from .pipeline import LEAVE, PUBLISH, Pipeline
from .positions import GAP, Held, Positions
from .repairs import deliver_judged
from .wire import CHAT, PLAIN, UnknownEnvelope, fill_count, open_envelope


def deliver_unanswered(
    core: ChatCore, pipeline: Pipeline, positions: Positions, held: dict[str, list[Held]]
) -> None:
    """Delivers what this node asked of Redis and may never have reached anyone (its chats and
    leave notices); `held` is what the abandoned repairs were holding."""
    for name, messages in held.items():  # our chats among them are placed: not ours to give
        for _, data in messages:
            with contextlib.suppress(UnknownEnvelope, ValueError):
                kind, _, payload = open_envelope(data)
                if kind == CHAT:
                    pipeline.came_back(name, payload)
    for op in pipeline.abandon():
        if op.on_lost is not None:
            op.on_lost()
        room = core.rooms.get(op.room) if op.room is not None else None
        if room is None or op.payload is None:
            continue
        if op.kind == PUBLISH:
            core.deliver(room, op.payload)
            positions.delivered_unnumbered(room.name, op.payload)
        elif op.kind == LEAVE and len(room):
            core.deliver(room, fill_count(op.payload, len(room)))


def deliver_held(core: ChatCore, positions: Positions, held: dict[str, list[Held]]) -> None:
    """What the abandoned repairs were holding goes out now, as far as it continues where each
    room's delivery stands: the chats after a gap (the part the repair had not read yet) are in
    Redis's stream, and the repair after the outage brings them, in order, with that part."""
    for name, messages in held.items():
        room = core.rooms.get(name)
        if room is None:
            continue
        in_order = True
        for _, data in messages:
            with contextlib.suppress(UnknownEnvelope, ValueError):
                kind, sender, payload = open_envelope(data)
                if kind == PLAIN:
                    core.deliver(room, payload)
                elif kind == CHAT and in_order:
                    in_order = deliver_judged(core, positions, room, sender, payload) != GAP
