"""Fragment reassembly without sockets: order rules, the byte limit, the frame cap, its memory."""

from __future__ import annotations

import sys
import tracemalloc
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol import CloseCode
from server.reassembly import (
    BINARY,
    CONTINUATION,
    MAX_FRAGMENTS,
    TEXT,
    Fragments,
    Message,
    Violation,
    reassemble,
)

SETTINGS = settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
LIMIT = 64
data_frames = st.lists(
    st.tuples(st.sampled_from([CONTINUATION, TEXT, BINARY]), st.booleans(), st.binary(max_size=40)),
    max_size=30,
)


@SETTINGS
@given(data_frames, st.integers(1, 8))
def test_reassembly_never_raises_and_respects_both_limits(
    sequence: list[Any], max_fragments: int
) -> None:
    state: Fragments | None = None
    for opcode, fin, payload in sequence:
        text = state is not None and not state.binary
        state, outcome = reassemble(state, opcode, fin, payload, LIMIT, max_fragments=max_fragments)
        if isinstance(outcome, Violation):
            allowed = {CloseCode.PROTOCOL_ERROR, CloseCode.MESSAGE_TOO_BIG}
            if text or (opcode == TEXT and not fin):
                allowed.add(CloseCode.INVALID_TEXT)  # only a text message's fragments are decoded
            assert outcome.code in allowed
            assert state is None
            return  # the connection is closed: nothing after a violation is read
        if isinstance(outcome, Message):
            assert state is None and len(outcome.payload) <= LIMIT
            assert isinstance(outcome.payload, bytes)
        else:
            assert outcome is None and state is not None
            assert state.size <= LIMIT and state.frames <= max_fragments


# A text message is valid UTF-8 (cut anywhere, inside a character too); a binary one is any bytes.
texts = st.tuples(st.just(False), st.text(max_size=LIMIT // 4).map(str.encode))
binaries = st.tuples(st.just(True), st.binary(max_size=LIMIT))
cuts = st.lists(st.integers(0, LIMIT), max_size=5)
cut_messages = st.tuples(st.one_of(texts, binaries), cuts).map(lambda m: (*m[0], m[1]))


@SETTINGS
@given(st.lists(cut_messages, max_size=8))
def test_fragmented_messages_come_back_whole(messages: list[Any]) -> None:
    """Any valid fragmentation of messages within the limits yields exactly those messages."""
    state: Fragments | None = None
    received: list[tuple[bool, bytes]] = []
    for binary, payload, cuts in messages:
        points = sorted({min(c, len(payload)) for c in cuts})
        pieces = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)], strict=True)]
        for index, piece in enumerate(pieces):
            opcode = (BINARY if binary else TEXT) if index == 0 else CONTINUATION
            state, outcome = reassemble(state, opcode, index == len(pieces) - 1, piece, LIMIT)
            assert not isinstance(outcome, Violation)
            if isinstance(outcome, Message):
                received.append((outcome.binary, outcome.payload))
    assert state is None
    assert received == [(binary, payload) for binary, payload, _ in messages]


def test_the_limit_counts_all_fragments() -> None:
    state, outcome = reassemble(None, TEXT, False, b"x" * 40, LIMIT)
    assert outcome is None and state is not None
    state, outcome = reassemble(state, CONTINUATION, True, b"y" * 40, LIMIT)
    assert isinstance(outcome, Violation) and outcome.code == CloseCode.MESSAGE_TOO_BIG
    assert state is None


def test_order_violations_are_protocol_errors() -> None:
    _, outcome = reassemble(None, CONTINUATION, True, b"x", LIMIT)
    assert isinstance(outcome, Violation) and outcome.code == CloseCode.PROTOCOL_ERROR
    state, _ = reassemble(None, TEXT, False, b"x", LIMIT)
    _, outcome = reassemble(state, BINARY, True, b"y", LIMIT)
    assert isinstance(outcome, Violation) and outcome.code == CloseCode.PROTOCOL_ERROR


def test_a_flood_of_empty_continuations_ends_in_a_violation() -> None:
    """The attack from the issue: TEXT without FIN, then empty CONTINUATIONs for ever."""
    state, outcome = reassemble(None, TEXT, False, b"", 65536)
    sent = 1
    while not isinstance(outcome, Violation):
        assert outcome is None and state is not None
        assert sent <= MAX_FRAGMENTS
        state, outcome = reassemble(state, CONTINUATION, False, b"", 65536)
        sent += 1
    assert outcome.code == CloseCode.MESSAGE_TOO_BIG and outcome.reason == "too many fragments"
    assert sent == MAX_FRAGMENTS + 1 and state is None


def test_a_message_of_exactly_max_fragments_frames_is_accepted() -> None:
    state, outcome = reassemble(None, TEXT, False, b"a", 65536)
    for _ in range(MAX_FRAGMENTS - 2):
        state, outcome = reassemble(state, CONTINUATION, False, b"", 65536)
        assert outcome is None
    state, outcome = reassemble(state, CONTINUATION, True, b"b", 65536)
    assert outcome == Message(False, b"ab") and state is None


def test_the_frame_cap_counts_the_final_frame_too() -> None:
    state, _ = reassemble(None, BINARY, False, b"", LIMIT, max_fragments=2)
    state, outcome = reassemble(state, CONTINUATION, False, b"", LIMIT, max_fragments=2)
    assert outcome is None
    state, outcome = reassemble(state, CONTINUATION, True, b"x", LIMIT, max_fragments=2)
    assert isinstance(outcome, Violation) and outcome.reason == "too many fragments"


def test_autobahn_6_2_3_one_byte_fragments_pass() -> None:
    """A UTF-8 text in 1-octet fragments, split inside code points, as Autobahn 6.2.3 sends."""
    text = "Hello-µ@ßöäüàá-UTF-8!!".encode()
    state, outcome = reassemble(None, TEXT, len(text) == 1, text[:1], 65536)
    for index in range(1, len(text)):
        state, outcome = reassemble(state, CONTINUATION, index == len(text) - 1,
                                    text[index : index + 1], 65536)
    assert outcome == Message(False, text)


def test_invalid_utf8_fails_at_the_fragment_that_brings_it() -> None:
    """RFC 6455 section 8.1: fail fast. Autobahn 6.4.1/6.4.2 send more frames after the bad one
    and expect the close before they are read; the whole message is never waited for."""
    state, outcome = reassemble(None, TEXT, False, "κόσμε".encode(), 65536)
    assert outcome is None
    state, outcome = reassemble(state, CONTINUATION, False, b"\xce\xba\xe1\xbd\xb9\xf4\x90", 65536)
    assert outcome == Violation(CloseCode.INVALID_TEXT, "invalid UTF-8 in text message")
    assert state is None


def test_a_character_split_across_fragments_is_not_invalid() -> None:
    euro = "€".encode()  # three bytes, one per fragment
    state, outcome = reassemble(None, TEXT, False, euro[:1], LIMIT)
    state, outcome = reassemble(state, CONTINUATION, False, euro[1:2], LIMIT)
    assert outcome is None
    _, outcome = reassemble(state, CONTINUATION, True, euro[2:], LIMIT)
    assert outcome == Message(False, euro)


def test_binary_fragments_are_never_decoded() -> None:
    state, outcome = reassemble(None, BINARY, False, b"\xff\xfe", LIMIT)
    assert outcome is None
    _, outcome = reassemble(state, CONTINUATION, True, b"\xc0", LIMIT)
    assert outcome == Message(True, b"\xff\xfe\xc0")


def test_a_full_size_message_fits_in_64_byte_fragments() -> None:
    limit = 65536
    state, outcome = reassemble(None, TEXT, False, b"x" * 64, limit)
    for index in range(1, limit // 64):
        state, outcome = reassemble(state, CONTINUATION, index == limit // 64 - 1, b"x" * 64, limit)
    assert isinstance(outcome, Message) and len(outcome.payload) == limit


def test_the_payload_may_be_a_memoryview_and_is_copied() -> None:
    buffer = bytearray(b"abc")
    state, _ = reassemble(None, TEXT, False, memoryview(buffer), LIMIT)
    buffer[:] = b"zzz"  # picows reuses its read buffer after the callback
    _, outcome = reassemble(state, CONTINUATION, True, memoryview(b"def"), LIMIT)
    assert outcome == Message(False, b"abcdef")


# ---- memory of a partial message ----------------------------------------------------------------


def _partial_in_2_byte_fragments(limit: int) -> Fragments:
    """The issue's attack: almost `limit` bytes parked in 2-byte fragments, never finished."""
    # A new bytes object per frame, as picows's get_payload_as_bytes() gives.
    state, _ = reassemble(None, TEXT, False, bytes([120, 121]), limit)
    for _ in range((limit - 200) // 2 - 1):
        piece = bytes([120, 121])
        state, outcome = reassemble(state, CONTINUATION, False, piece, limit, max_fragments=limit)
        assert outcome is None
    assert state is not None
    return state


# CPython grows a bytearray by up to 1/8 beyond what it holds, plus a few bytes.
def _bound(limit: int) -> int:
    return limit + limit // 8 + 256


def test_a_partial_message_costs_its_payload_not_an_object_per_fragment() -> None:
    limit = 65536
    state = _partial_in_2_byte_fragments(limit)
    held = sys.getsizeof(state) + sys.getsizeof(state.payload)
    assert state.size == limit - 200
    assert held <= _bound(limit), held


def test_traced_memory_of_a_partial_message_stays_near_its_payload() -> None:
    limit = 65536
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        state = _partial_in_2_byte_fragments(limit)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert state.size == limit - 200
    assert after - before <= _bound(limit), after - before
