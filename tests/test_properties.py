"""Property-based tests: the decoder, the chat core's validation, and close codes.

Fragment reassembly has its own tests in tests/test_reassembly.py.

The documented states (docs/protocol.md, docs/security.md) after any one text message:
- not UTF-8: ``handle_text`` returns 1007; nothing was written to anyone, membership unchanged;
- not a valid client message: exactly one ``error`` (a documented code) to the sender only;
  membership unchanged;
- a valid message: its documented effect; others see only chat/system messages;
and in every case the core's room bookkeeping stays consistent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import protocol
from server.auth import RoomPatterns
from server.broker import LocalBroker
from server.config import Config
from server.core import ChatCore, Member
from server.protocol import CloseCode, DecodeFailure, ErrorCode, InvalidUTF8, close_reply
from tests.frames import server_messages

ERROR_CODES = {code.value for code in ErrorCode}
SETTINGS = settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.none() | st.booleans() | st.integers() | st.text(max_size=80) | json_values
positions = st.fixed_dictionaries(
    {"epoch": st.text(max_size=70) | field_values, "seq": st.integers(-2, 10**20) | field_values}
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["join", "chat", "leave", "JOIN", "", "chat "]) | field_values},
    optional={
        "text": field_values,
        "room": field_values,
        "username": field_values,
        "id": st.text(max_size=70) | field_values,
        "history": st.integers(-1, 200) | field_values,
        "since": positions | field_values,
    },
)


class World:
    """A core with an observer and a sender in one room; the test plays the event loop."""

    def __init__(self, *, restricted: bool = False) -> None:
        self.core = ChatCore(Config(rate_limit=0), lambda: None)
        self.core.use_broker(LocalBroker(self.core))
        self.observer_out: list[bytes] = []
        self.sender_out: list[bytes] = []
        self.observer = Member(self.observer_out.append)
        self.sender = Member(self.sender_out.append)
        if restricted:
            self.sender.fixed_name = "token-name"
            self.sender.allowed_rooms = RoomPatterns(["general", "team-*"])
        self.core.join(self.observer, "general", "observer")
        self.core.join(self.sender, "general", "sender")
        self.core.flush()
        self.observer_out.clear()
        self.sender_out.clear()

    def send(self, payload: bytes) -> CloseCode | None:
        result = self.core.handle_text(self.sender, payload)
        self.core.flush()
        return result

    def check_invariants(self) -> None:
        for name, room in self.core.rooms.items():
            assert room.name == name and len(room) > 0
            assert not room.pending and not room.late  # everything was flushed
            for index, member in enumerate(room.members):
                assert member.room is room and member.slot == index and not member.late
        for member in (self.observer, self.sender):
            if member.room is not None:
                assert self.core.rooms[member.room.name] is member.room
                assert member in member.room.members


@SETTINGS
@given(st.binary(max_size=300))
def test_decode_never_raises_anything_undocumented(payload: bytes) -> None:
    try:
        message = protocol.decode(payload)
    except DecodeFailure as failure:
        assert failure.code.value in ERROR_CODES and failure.text
    except InvalidUTF8:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return
        raise AssertionError("InvalidUTF8 for valid UTF-8") from None
    else:
        assert isinstance(message, protocol.Join | protocol.Chat | protocol.Leave)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_reach_others(payload: bytes) -> None:
    world = World()
    try:
        protocol.decode(payload)
        valid = True
    except (DecodeFailure, InvalidUTF8):
        valid = False
    result = world.send(payload)
    world.check_invariants()
    if valid:
        return  # random bytes that happen to be a valid message: covered below
    assert world.observer_out == []
    assert world.sender.room is not None and world.sender.room.name == "general"
    if result is not None:
        assert result == CloseCode.INVALID_TEXT and world.sender_out == []
    else:
        [error] = server_messages(b"".join(world.sender_out))
        assert error["type"] == "error" and error["code"] in ERROR_CODES


@SETTINGS
@given(st.one_of(json_values, message_like), st.booleans())
def test_arbitrary_json_leaves_a_documented_state(value: Any, restricted: bool) -> None:
    world = World(restricted=restricted)
    before = world.sender.room
    result = world.send(json.dumps(value).encode())
    assert result is None  # json.dumps always gives UTF-8
    world.check_invariants()
    to_sender = server_messages(b"".join(world.sender_out))
    to_observer = server_messages(b"".join(world.observer_out))
    for message in to_sender:
        assert message["type"] in ("chat", "system", "error", "history", "ack")
    for message in to_observer:
        # nobody else hears about the sender's mistakes, replays or acks
        assert message["type"] in ("chat", "system")
        assert message["username"] == ("token-name" if restricted else message["username"])
    errors = [m for m in to_sender if m["type"] == "error"]
    if errors:
        [error] = errors
        assert error["code"] in ERROR_CODES
        assert to_observer == [] and world.sender.room is before  # refused: nothing changed
    if restricted:
        assert world.sender.name == "token-name"
        if world.sender.room is not None:
            assert world.sender.room.name in RoomPatterns(["general", "team-*"])


@SETTINGS
@given(st.integers(0, 65535), st.booleans())
def test_a_close_is_answered_only_with_codes_valid_on_the_wire(code: int, has_code: bool) -> None:
    reply = close_reply(code, has_code)
    assert reply not in (0, 1004, 1005, 1006, 1015)
    assert 1000 <= reply <= 1003 or 1007 <= reply <= 1014 or 3000 <= reply <= 4999
    if not has_code:
        assert reply == 1000  # an empty CLOSE: whatever code picows made up for it
    elif reply != code:
        assert reply == 1002  # a code no endpoint may send is never turned into 1000


@pytest.mark.parametrize(
    ("code", "has_code", "reply"),
    [
        (0, False, 1000),  # empty payload: picows says 0 (NO_INFO)
        (0, True, 1002),  # a payload carrying code 0 (Autobahn 7.9.1)
        (1005, True, 1002),
        (1006, True, 1002),
        (999, True, 1002),
        (1000, True, 1000),
        (1001, True, 1001),
        (4999, True, 4999),
        (5000, True, 1002),
    ],
)
def test_close_code_zero_is_a_protocol_error_unlike_no_code(
    code: int, has_code: bool, reply: int
) -> None:
    assert close_reply(code, has_code) == reply
