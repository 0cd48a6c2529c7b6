"""The Lua scripts that decide a room's order in Redis, and the commands and replies around them.

Each script touches one room's keys only (all under the room's ``{NAME}`` hash tag, so it runs
atomically on one Cluster shard) and publishes on the room's channel in the same step, so the
order of the scripts on the shard is the order of the channel:

* ``CHAT``: the room's next seq (a stream created, with a new epoch, if Redis lost it), the
  payload with its seq spliced in appended to the room's capped history stream, the client id
  remembered for deduplication, the message published; a chat whose (username, id) the room
  still holds is not posted again (its original seq comes back);
* ``JOIN``: the member registered, its notice published with the count, the member list, and
  the replay the joiner asked for (the last K, or everything after a position) read at that very
  point, with the stream's epoch and last seq: the replay ends exactly where live delivery
  begins for the joiner, on any node;
* ``LEAVE``: the member unregistered, its notice published; when the room is empty its history
  starts its ``--history-ttl``;
* ``MARK`` and ``FETCH``: a repair's marker on the channel, then the read of what the node lacks
  (server/redis/positions.py);
* ``FORGET``: the room's stream dropped if it is still of an epoch a repair found gone back to
  an older copy of itself (a restart from an older snapshot), so that the next chat or join
  starts a new epoch, as after a loss: a position never names two messages.

Scripts are sent as EVALSHA once loaded (``load``), the text itself never per message.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from .wire import (
    channel_name,
    history_key,
    ids_key,
    mark_head,
    members_key,
    meta_key,
    split_count,
    split_seq,
)

# Shared by JOIN and CHAT: the room's epoch, made when the stream is missing (Redis restarted
# without persistence, a failover to a stale replica, the TTL): then what is left of the old
# stream goes too, so a position never names two messages.
_EPOCH = """
local function stream_epoch(meta, history, ids, candidate)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = candidate
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
    redis.call('DEL', history, ids)
  end
  return epoch
end
"""

# KEYS: meta, history, ids. ARGV: 1 publish command, 2 channel, 3 payload up to `"seq":`, 4 the
# rest (`}`), 5 epoch if new, 6 history size, 7 dedupe key ('' for none).
# Returns {posted 1|0, seq, epoch}.
CHAT = _EPOCH + """
local epoch = stream_epoch(KEYS[1], KEYS[2], KEYS[3], ARGV[5])
local key = ARGV[7]
if key ~= '' then
  local seen = redis.call('ZSCORE', KEYS[3], key)
  if seen then return {0, tonumber(seen), epoch} end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local payload = ARGV[3] .. seq .. ARGV[4]
local size = tonumber(ARGV[6])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, '0-' .. seq, 'p', payload)
  if key ~= '' then redis.call('ZADD', KEYS[3], seq, key) end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', seq - size)  -- ids leave with their message
end
redis.call(ARGV[1], ARGV[2], 'S' .. epoch .. ':' .. seq .. '\\n' .. payload)
return {1, seq, epoch}
"""

# KEYS: members, meta, history, ids. ARGV: 1 field, 2 username, 3 publish command, 4 channel,
# 5 envelope head, 6 notice up to `"count":`, 7 the rest, 8 most names, 9 epoch if new,
# 10 replay ('' none, 'last', 'since'), 11 K or the since seq, 12 the since epoch, 13 history
# size. Returns {count, names, epoch, last seq, status, payloads...}: status '' (no replay),
# 'ok' (complete), or why not ('epoch changed', 'unknown position', 'too old', 'history
# disabled'); when not complete, the payloads are the newest stored.
JOIN = _EPOCH + """
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
local epoch = stream_epoch(KEYS[2], KEYS[3], KEYS[4], ARGV[9])
local last = tonumber(redis.call('HGET', KEYS[2], 'seq'))
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
redis.call('PERSIST', KEYS[4])
local reply = {n, names, epoch, last, ''}
local mode = ARGV[10]
if mode == '' then return reply end
local size = tonumber(ARGV[13])
local function add(entries, reverse)
  local from, to, step = 1, #entries, 1
  if reverse then from, to, step = #entries, 1, -1 end
  for i = from, to, step do reply[#reply + 1] = entries[i][2][2] end
end
local function newest(status)
  reply[5] = status
  add(redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', size), true)
  return reply
end
if size == 0 then reply[5] = 'history disabled'; return reply end
if mode == 'last' then
  reply[5] = 'ok'
  local k = tonumber(ARGV[11])
  if k > 0 then add(redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', k), true) end
  return reply
end
local since = tonumber(ARGV[11])
if ARGV[12] ~= epoch then return newest('epoch changed') end
if since > last then return newest('unknown position') end
if since == last then reply[5] = 'ok'; return reply end
local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
if #first == 0 or tonumber(string.match(first[1][1], '%-(%d+)$')) > since + 1 then
  return newest('too old')
end
reply[5] = 'ok'
add(redis.call('XRANGE', KEYS[3], '0-' .. (since + 1), '+'), false)
return reply
"""

# KEYS: members, meta, history, ids. ARGV: 1 field, 2 publish command, 3 channel, 4 envelope
# head, 5 notice up to `"count":`, 6 the rest, 7 force ('1': announce even if the field was not
# there), 8 history ttl in milliseconds. Returns the count left.
LEAVE = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
local n = redis.call('HLEN', KEYS[1])
if (removed == 1 or ARGV[7] == '1') and n > 0 then
  redis.call(ARGV[2], ARGV[3], ARGV[4] .. ARGV[5] .. n .. ARGV[6])
end
if n == 0 then
  local ttl = tonumber(ARGV[8])
  for i = 2, 4 do
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) else redis.call('DEL', KEYS[i]) end
  end
end
return n
"""

# KEYS: meta. ARGV: 1 publish command, 2 channel, 3 envelope head (`M<node>/`). Publishes the
# repair marker with the stream's epoch and last seq, and returns them ({epoch or '', seq}).
MARK = """
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
redis.call(ARGV[1], ARGV[2], ARGV[3] .. epoch .. ':' .. seq .. '\\n{}')
return {epoch, seq}
"""

# KEYS: meta, history. ARGV: 1 the epoch this node delivered ('' for none), 2 its last seq.
# Returns {epoch or '', entries}: the stored messages after that seq, or, when the stream is
# another epoch (Redis lost the one the node knew), every message the new stream still holds.
FETCH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
local after = 0
if epoch == ARGV[1] then after = tonumber(ARGV[2]) end
return {epoch, redis.call('XRANGE', KEYS[2], '0-' .. (after + 1), '+')}
"""

# KEYS: meta, history, ids. ARGV: 1 the epoch that went back. Returns 1 if it was dropped.
FORGET = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""

SCRIPTS = {
    "chat": CHAT, "join": JOIN, "leave": LEAVE, "mark": MARK, "fetch": FETCH, "forget": FORGET,
}
SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}


async def load(client: Any) -> None:
    """Makes every script known to Redis (every primary of a Cluster), for EVALSHA."""
    for text in SCRIPTS.values():
        await client.script_load(text)


def _room_keys(room: str) -> tuple[str, str, str]:
    return meta_key(room), history_key(room), ids_key(room)


def chat_command(
    publish: str, room: str, payload: bytes, *, epoch: str, size: int, key: str
) -> tuple[object, ...]:
    """The EVALSHA that numbers, stores and publishes one chat encoded with seq 0."""
    prefix, suffix = split_seq(payload)
    return (
        "EVALSHA", SHA["chat"], 3, *_room_keys(room), publish, channel_name(room), prefix,
        suffix, epoch, size, key,
    )


def parse_chat_reply(reply: Any) -> tuple[bool, int, str]:
    """(posted, seq, epoch): posted False for a retry of a message the room holds."""
    posted, seq, epoch = reply
    return bool(posted), int(seq), epoch.decode()


def join_command(
    publish: str,
    room: str,
    field: str,
    username: str,
    notice: bytes,
    *,
    head: bytes,
    limit: int,
    epoch: str,
    replay: tuple[str, int, str] = ("", 0, ""),
    size: int = 0,
) -> tuple[object, ...]:
    """The EVALSHA that registers a member, publishes its notice (count filled in by Redis),
    and returns the member list, the stream's position and the replay asked for: `replay` is
    ('', 0, '') for none, ('last', K, '') or ('since', seq, epoch)."""
    prefix, suffix = split_count(notice)
    mode, number, since_epoch = replay
    return (
        "EVALSHA", SHA["join"], 4, members_key(room), *_room_keys(room), field, username,
        publish, channel_name(room), head, prefix, suffix, limit, epoch, mode, number,
        since_epoch, size,
    )


class JoinReply:
    """What the join script answered."""

    __slots__ = ("count", "epoch", "last", "names", "payloads", "status")

    def __init__(self, reply: Any) -> None:
        count, names, epoch, last, status, *payloads = reply
        self.count = int(count)
        self.names = [n.decode("utf-8", "replace") for n in names]
        self.epoch = epoch.decode()
        self.last = int(last)
        self.status = status.decode()  # '' (no replay), 'ok', or why not
        self.payloads: list[bytes] = list(payloads)


def leave_command(
    publish: str, room: str, field: str, notice: bytes, head: bytes, *, force: bool, ttl: float
) -> tuple[object, ...]:
    """The EVALSHA that unregisters a member and, if it was there (or `force`), publishes its
    leave notice with the count of those left; an emptied room's history starts its TTL."""
    prefix, suffix = split_count(notice)
    return (
        "EVALSHA", SHA["leave"], 4, members_key(room), *_room_keys(room), field, publish,
        channel_name(room), head, prefix, suffix, "1" if force else "0",
        max(0, math.ceil(ttl * 1000)),  # milliseconds: --history-ttl 0.5 is not 0
    )


def mark_command(publish: str, room: str, node: str) -> tuple[object, ...]:
    """The EVALSHA that publishes a repair marker for `node` (server/redis/positions.py)."""
    return ("EVALSHA", SHA["mark"], 1, meta_key(room), publish, channel_name(room), mark_head(node))


def parse_mark_reply(reply: Any) -> tuple[str, int]:
    epoch, seq = reply
    return epoch.decode(), int(seq)


def repair_fetch_command(room: str, epoch: str, after: int) -> tuple[object, ...]:
    """The EVALSHA that reads what a repairing node lacks: the stored messages after its
    position (`epoch`, `after`), or all of them if the stream is no longer that epoch."""
    return ("EVALSHA", SHA["fetch"], 2, meta_key(room), history_key(room), epoch, after)


def forget_command(room: str, epoch: str) -> tuple[object, ...]:
    """The EVALSHA that drops the room's stream if it is still of `epoch` (``FORGET``)."""
    return ("EVALSHA", SHA["forget"], 3, *_room_keys(room), epoch)


def parse_repair_fetch_reply(reply: Any) -> tuple[str, list[tuple[int, bytes]]]:
    """(the stream's epoch or '', [(seq, payload)]) of the repair's read."""
    epoch, entries = reply
    return epoch.decode(), parse_fetch_reply(entries)


def parse_fetch_reply(reply: Any) -> list[tuple[int, bytes]]:
    """[(seq, payload)] of an XRANGE of a history stream."""
    out = []
    for entry_id, fields in reply:
        seq = int(entry_id.rpartition(b"-")[2])
        # redis-py parses XRANGE entries into dicts; a raw reply is a flat field/value list
        values = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2],
                                                                     strict=False))
        out.append((seq, bytes(values[b"p"])))
    return out
