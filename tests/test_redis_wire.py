"""The Redis wire format (server/redis/wire.py): keys, the envelope, the count and seq splits.
The scripts themselves run in a real redis-server in tests/test_redis_scripts.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.protocol import ChatMessage, SystemMessage, encode
from server.redis.wire import (
    ANNOUNCED,
    CHAT,
    JOIN,
    MARK,
    PLAIN,
    UnknownEnvelope,
    announced_head,
    channel_name,
    chat_identity,
    chat_position,
    fill_count,
    join_head,
    mark_head,
    member_field,
    members_key,
    node_of,
    open_envelope,
    split_count,
    split_seq,
)


def test_envelopes_round_trip() -> None:
    chat = b'{"type":"chat","text":"hi"}'
    assert open_envelope(chat) == (PLAIN, "", chat)
    field = member_field("a1b2c3", 0xDEADBEEF)
    assert node_of(field) == "a1b2c3"
    assert open_envelope(join_head(field) + chat) == (JOIN, field, chat)
    assert open_envelope(announced_head("a1b2c3") + chat) == (ANNOUNCED, "a1b2c3", chat)


@pytest.mark.parametrize("data", [b"", b"Q-node\n{}", b"Jfield-without-payload\n", b"junk"])
def test_foreign_envelopes_are_refused(data: bytes) -> None:
    with pytest.raises(UnknownEnvelope):
        open_envelope(data)


def test_a_room_lives_in_one_cluster_slot() -> None:
    # the hash tag of the members hash and of the channel is the room name itself
    assert members_key("dev").startswith("room:{dev}") and channel_name("dev") == b"room:{dev}"


@given(
    st.text(min_size=1, max_size=40),
    st.text(min_size=1, max_size=40),
    st.integers(min_value=0, max_value=10**9),
)
def test_split_count_puts_any_count_back_in_place(name: str, room: str, count: int) -> None:
    notice = SystemMessage(f'{name} joined #{room}', "join", room, name, 0, 1234)
    prefix, suffix = split_count(encode(notice))
    rebuilt = json.loads(prefix + str(count).encode() + suffix)
    notice.count = count
    assert rebuilt == json.loads(encode(notice))


def test_split_count_with_a_name_that_looks_like_the_count_field() -> None:
    name = ',"count":0,"timestamp":1,'
    prefix, suffix = split_count(encode(SystemMessage("t", "leave", "r", name, 0, 5)))
    message = json.loads(prefix + b"42" + suffix)
    assert message["count"] == 42 and message["username"] == name


def test_a_chat_splits_around_its_seq_and_a_position_parses() -> None:
    payload = encode(ChatMessage("ann", 'tricky ,"seq":0} text', 5, 0))
    prefix, suffix = split_seq(payload)
    assert json.loads(prefix + b"42" + suffix)["seq"] == 42
    assert json.loads(prefix + b"42" + suffix)["text"] == 'tricky ,"seq":0} text'
    with pytest.raises(ValueError, match="seq 0"):
        split_seq(encode(ChatMessage("ann", "x", 5, 7)))
    assert chat_position("0123abcd:17") == ("0123abcd", 17)
    assert open_envelope(b"Sabcd:3\n{}") == (CHAT, "abcd:3", b"{}")
    assert open_envelope(mark_head("n1") + b"abcd:3\n{}") == (MARK, "n1/abcd:3", b"{}")


def test_fill_count_is_what_the_scripts_do() -> None:
    notice = encode(SystemMessage("a left #r", "leave", "r", "a", 0, 1))
    assert json.loads(fill_count(notice, 7))["count"] == 7


@given(st.text(max_size=20), st.text(max_size=40), st.integers(0, 2**53), st.integers(1, 2**40))
def test_a_chat_is_the_same_chat_before_and_after_redis_numbers_it(
    name: str, text: str, sent_at: int, seq: int
) -> None:
    unnumbered = encode(ChatMessage(name, text, sent_at, 0))
    prefix, suffix = split_seq(unnumbered)
    numbered = b"%s%d%s" % (prefix, seq, suffix)
    assert chat_identity(numbered) == chat_identity(unnumbered)
    # what it names: the sender, the text and the origin's timestamp
    assert chat_identity(encode(ChatMessage(name, text + "!", sent_at, 0))) != chat_identity(
        unnumbered
    )
    assert chat_identity(encode(ChatMessage(name, text, sent_at + 1, seq))) != chat_identity(
        numbered
    )
