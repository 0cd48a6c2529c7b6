"""What travels through Redis and where it lives: keys, channels, Lua scripts, the envelope.

Like websockets' ``frames.py``, this is the one module that knows the byte layout; the rest of
server/redis/ calls these functions. The ``{NAME}`` hash tag puts a room's keys and channel in
one Redis Cluster slot, so a room's scripts run atomically on one shard.

A message on a room's channel is one of:

* ``{...}``: an encoded chat message, delivered to every node's members;
* ``J<field>\\n{...}``: a join notice for member ``field`` (``NODE:CONN``); its position in the
  channel is where that member's stream starts;
* ``X<node>\\n{...}``: a notice that node ``<node>`` has already delivered to its own members
  (announcements made while resynchronising after an outage);
* ``T<node>\\n{...}``: a typing event, for the members that asked for them; node ``<node>``
  told its own already.
"""

from __future__ import annotations

from typing import Any

NODES_KEY = "roomcast:nodes"
SWEEP_LOCK_KEY = "roomcast:sweeper"
SWEPT_TOMBSTONE_TTL = 3600  # seconds a swept node remembers it was swept


def members_key(room: str) -> str:
    """Hash of a room's members: field ``NODE:CONN``, value the username."""
    return f"room:{{{room}}}:members"


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

PLAIN, JOIN, ANNOUNCED, TYPING = 0, 1, 2, 3


def join_head(field: str) -> bytes:
    return b"J%s\n" % field.encode()


def announced_head(node: str) -> bytes:
    return b"X%s\n" % node.encode()


def typing_head(node: str) -> bytes:
    return b"T%s\n" % node.encode()


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


_HEADS = {b"J": JOIN, b"X": ANNOUNCED, b"T": TYPING}
_COUNT_MARK = b',"count":0,'


def split_count(payload: bytes) -> tuple[bytes, bytes]:
    """Splits an encoded notice whose count is 0 around the count, for Redis to fill in.

    `,"count":` cannot occur inside an encoded string (a quote there is escaped), and count is
    the last-but-one field, so the last occurrence is the field itself.
    """
    at = payload.rindex(_COUNT_MARK)
    return payload[: at + len(_COUNT_MARK) - 2], payload[at + len(_COUNT_MARK) - 1 :]


# ---- scripts ----------------------------------------------------------------------------------

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


def join_command(
    publish: str, room: str, field: str, username: str, notice: bytes, *, head: bytes, limit: int
) -> tuple[object, ...]:
    """The EVAL that registers a member, publishes its notice (count filled in by Redis) and
    returns ``[count, names]``; `notice` is the encoded notice with count 0."""
    prefix, suffix = split_count(notice)
    return (
        "EVAL", JOIN_SCRIPT, 1, members_key(room), field, username, publish,
        channel_name(room), head, prefix, suffix, limit,
    )


def leave_command(
    publish: str, room: str, field: str, notice: bytes, head: bytes, *, force: bool
) -> tuple[object, ...]:
    """The EVAL that unregisters a member and, if it was there (or `force`), publishes its leave
    notice with the count of those left."""
    prefix, suffix = split_count(notice)
    return (
        "EVAL", LEAVE_SCRIPT, 1, members_key(room), field, publish, channel_name(room), head,
        prefix, suffix, "1" if force else "0",
    )


def fill_count(notice: bytes, count: int) -> bytes:
    """The notice (encoded with count 0) with its count set, as the scripts do in Redis."""
    prefix, suffix = split_count(notice)
    return b"%s%d%s" % (prefix, count, suffix)


def parse_join_reply(reply: Any) -> tuple[int, list[str]]:
    """The join script's ``[count, names]``."""
    count, names = reply
    return int(count), [n.decode("utf-8", "replace") for n in names]
