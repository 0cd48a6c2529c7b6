"""What travels through Redis and where it lives: keys, channels, the envelope.

Like websockets' ``frames.py``, this is the one Python module that knows the byte layout; the
rest of server/redis/ calls these functions. The Lua scripts (``scripts.py``) build the same
envelopes inside Redis; tests/test_redis_scripts.py reads what they publish with this module.
The ``{NAME}`` hash tag puts a room's keys and channel in one Redis Cluster slot, so a room's
scripts run atomically on one shard.

A message on a room's channel is one of:

* ``{...}``: an encoded chat message, delivered to every node's members;
* ``J<field>\\n{...}``: a join notice for member ``field`` (``NODE:CONN``); its position in the
  channel is where that member's stream starts;
* ``X<node>\\n{...}``: a notice that node ``<node>`` has already delivered to its own members
  (announcements made while resynchronising after an outage);
* ``T<node>\\n{...}``: a typing event, for the members that asked for them; node ``<node>``
  told its own already;
* ``S<epoch>:<seq>\\n{...}``: a chat, numbered by Redis (server/redis/scripts.py): its place in
  the room's history stream, which each node checks for gaps;
* ``M<node>/<epoch>:<seq>\\n{}``: node ``<node>``'s repair marker (server/redis/positions.py).
"""

from __future__ import annotations

NODES_KEY = "roomcast:nodes"
SWEEP_LOCK_KEY = "roomcast:sweeper"
SWEPT_TOMBSTONE_TTL = 3600  # seconds a swept node remembers it was swept


def members_key(room: str) -> str:
    """Hash of a room's members: field ``NODE:CONN``, value the username."""
    return f"room:{{{room}}}:members"


def meta_key(room: str) -> str:
    """Hash of a room's history stream: ``epoch`` and ``seq`` (the last one given)."""
    return f"room:{{{room}}}:meta"


def history_key(room: str) -> str:
    """The room's newest messages: a Redis stream capped at --history-size, entry id ``0-SEQ``,
    field ``p`` the payload as it was published."""
    return f"room:{{{room}}}:history"


def ids_key(room: str) -> str:
    """Sorted set of the client ids of the stored messages (``username NUL id``, score seq)."""
    return f"room:{{{room}}}:ids"


def channel_name(room: str) -> bytes:
    return f"room:{{{room}}}".encode()


def lease_key(node: str) -> str:
    return f"node:{{{node}}}"


def node_rooms_key(node: str) -> str:
    """Set of the rooms a node has members in (what the sweeper must clean if it dies)."""
    return f"node:{{{node}}}:rooms"


def swept_key(node: str) -> str:
    return f"node:{{{node}}}:swept"


def member_field(node: str, connection: int) -> str:
    return f"{node}:{connection:x}"


def node_of(field: str) -> str:
    return field.split(":", 1)[0]


# ---- the envelope -----------------------------------------------------------------------------

PLAIN, JOIN, ANNOUNCED, TYPING, CHAT, MARK = 0, 1, 2, 3, 4, 5


def join_head(field: str) -> bytes:
    return b"J%s\n" % field.encode()


def announced_head(node: str) -> bytes:
    return b"X%s\n" % node.encode()


def typing_head(node: str) -> bytes:
    return b"T%s\n" % node.encode()


def mark_head(node: str) -> bytes:
    """A repair marker's head; the script appends ``<epoch>:<seq>``."""
    return b"M%s/" % node.encode()


# (kind, sender, payload): sender is the joiner's field for JOIN, the node for ANNOUNCED, "" for
# PLAIN; payload is the encoded client message. A plain tuple: this runs once per message.
Envelope = tuple[int, str, bytes]


class UnknownEnvelope(ValueError):
    """A message on a room channel that no roomcast node sent."""


def open_envelope(data: bytes) -> Envelope:
    if data[:1] == b"{":
        return PLAIN, "", data
    head, _, payload = data.partition(b"\n")
    kind = _HEADS.get(head[:1])
    if kind is None or not payload:
        raise UnknownEnvelope(repr(head[:40]))
    return kind, head[1:].decode("utf-8", "replace"), payload


_HEADS = {b"J": JOIN, b"X": ANNOUNCED, b"T": TYPING, b"S": CHAT, b"M": MARK}
_COUNT_MARK = b',"count":0,'


def chat_position(sender: str) -> tuple[str, int]:
    """(epoch, seq) of a CHAT envelope's sender part."""
    epoch, _, seq = sender.rpartition(":")
    return epoch, int(seq)


_SEQ_MARK = b',"seq":0}'


def split_seq(payload: bytes) -> tuple[bytes, bytes]:
    """Splits a chat encoded with seq 0 around the seq, for Redis to fill in (the seq is the
    chat's last field: server/protocol.py ChatMessage)."""
    if not payload.endswith(_SEQ_MARK):
        raise ValueError("not a chat encoded with seq 0")
    return payload[:-2], payload[-1:]


def chat_identity(payload: bytes) -> bytes:
    """What names a chat whatever its seq: its encoding up to the seq field (sender, text and
    the origin's millisecond timestamp), the same before Redis numbers it and after. A quote
    inside an encoded string is escaped, so the last `,"seq":` is the field itself."""
    return payload[: payload.rindex(b',"seq":')]


def split_count(payload: bytes) -> tuple[bytes, bytes]:
    """Splits an encoded notice whose count is 0 around the count, for Redis to fill in.

    `,"count":` cannot occur inside an encoded string (a quote there is escaped), and count is
    the last-but-one field, so the last occurrence is the field itself.
    """
    at = payload.rindex(_COUNT_MARK)
    return payload[: at + len(_COUNT_MARK) - 2], payload[at + len(_COUNT_MARK) - 1 :]


def fill_count(notice: bytes, count: int) -> bytes:
    """The notice (encoded with count 0) with its count set, as the scripts do in Redis."""
    prefix, suffix = split_count(notice)
    return b"%s%d%s" % (prefix, count, suffix)
