"""Message decoding and server framing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol import (
    Chat,
    DecodeFailure,
    ErrorCode,
    InvalidUTF8,
    Join,
    Leave,
    decode,
    error_frame,
    text_frame,
)


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e" + struct.pack("!H", 126)),
        (65535, b"\x81\x7e" + struct.pack("!H", 65535)),
        (65536, b"\x81\x7f" + struct.pack("!Q", 65536)),
    ],
)
def test_text_frames_use_the_shortest_length_encoding_and_no_mask(size: int, header: bytes) -> None:
    frame = text_frame(b"a" * size)
    assert frame[: len(header)] == header
    assert len(frame) == len(header) + size


def test_the_seeds_messages_decode() -> None:
    assert decode(b'{"type":"join","room":"r","username":"u"}') == Join("r", "u")
    assert decode(b'{"type":"join"}') == Join(None, None)
    assert decode(b'{"type":"chat","text":"hi","extra":[1]}') == Chat("hi")
    assert decode(b'{"type":"leave"}') == Leave()


@pytest.mark.parametrize(
    ("raw", "chat_id"),
    [
        (b'{"type":"chat","text":5,"id":"abc"}', "abc"),
        (b'{"type":"chat","id":"abc"}', "abc"),  # no text
        (b'{"id":"abc","type":"chat","text":5,"a":' + b"[" * 3000 + b"]" * 3000 + b"}", None),
        (b'{"type":"chat","text":5,"id":5}', None),  # an id that is no id is not echoed
        (b'{"type":"chat","text":5,"id":"' + b"x" * 65 + b'"}', None),
        (b'{"type":"join","room":5,"id":"abc"}', None),  # not a chat
    ],
)
def test_an_invalid_chat_names_its_id_in_the_failure(raw: bytes, chat_id: str | None) -> None:
    """Before: only text_too_long, empty_text and rate_limited carried the id, so a client
    matching errors to its pending ids never learnt what became of these."""
    with pytest.raises(DecodeFailure) as failure:
        decode(raw)
    assert failure.value.code is ErrorCode.INVALID_MESSAGE
    assert failure.value.chat_id == chat_id


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", ErrorCode.INVALID_JSON),
        (b"{", ErrorCode.INVALID_JSON),
        (b"null", ErrorCode.INVALID_MESSAGE),
        (b'{"type":"chat","text":null}', ErrorCode.INVALID_MESSAGE),
        (b'{"type":"JOIN"}', ErrorCode.UNKNOWN_TYPE),
        (b"{}", ErrorCode.UNKNOWN_TYPE),
    ],
)
def test_failures_carry_a_stable_code(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(DecodeFailure) as failure:
        decode(raw)
    assert failure.value.code is code and failure.value.text


@pytest.mark.parametrize(
    "raw", [b'{"type":"chat","text":"\xed\xa0\x80"}', b"\xff{}", b'{"a":\x80}']
)
def test_invalid_utf8_is_told_apart_from_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidUTF8):
        decode(raw)


def test_error_frames_omit_absent_fields() -> None:
    frame = error_frame(ErrorCode.EMPTY_TEXT, "Message text is empty")
    assert frame[2:] == b'{"type":"error","code":"empty_text","text":"Message text is empty"}'


# ---- whatever the peer sends, decode answers DecodeFailure or InvalidUTF8 ----------------------

DEEP_ARRAY = b'{"type":"chat","text":"x","a":' + b"[" * 997 + b"]" * 997 + b"}"


@pytest.mark.parametrize(
    "raw",
    [
        DEEP_ARRAY,  # the payload: RecursionError inside msgspec
        b'{"type":"chat","text":"x","a":' + b"[" * 60_000,  # unclosed, as deep as 64 KiB allows
        b'{"type":"chat","text":"x","a":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        b'{"extra":' + b"[" * 3000 + b"]" * 3000 + b',"type":"leave"}',
    ],
)
def test_nesting_too_deep_is_an_invalid_message(raw: bytes) -> None:
    with pytest.raises(DecodeFailure) as failure:
        decode(raw)
    assert failure.value.code is ErrorCode.INVALID_MESSAGE
    assert failure.value.text == "Invalid message: nested too deeply"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"type":"chat","text":1e400}', ErrorCode.INVALID_MESSAGE),
        (b'{"type":"chat","text":' + b"9" * 5000 + b"}", ErrorCode.INVALID_MESSAGE),
        (b'{"type":' + b"9" * 5000 + b"}", ErrorCode.UNKNOWN_TYPE),
        (b'{"type":"chat","text":NaN}', ErrorCode.INVALID_JSON),
        (b'{"type":"chat","text":"x","a":-Infinity}', ErrorCode.INVALID_JSON),
        (b'{"type":"chat","text":"\\ud800"}', ErrorCode.INVALID_JSON),  # a lone surrogate
    ],
)
def test_odd_numbers_and_literals_are_decode_failures(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(DecodeFailure) as failure:
        decode(raw)
    assert failure.value.code is code


def test_huge_numbers_in_ignored_fields_are_ignored() -> None:
    assert decode(b'{"type":"chat","text":"x","a":1e400,"b":' + b"9" * 5000 + b"}") == Chat("x")


def test_invalid_utf8_in_an_ignored_field_is_still_invalid_utf8() -> None:
    """msgspec skips unknown fields without looking at their bytes; RFC 6455 checks them all."""
    with pytest.raises(InvalidUTF8):
        decode(b'{"type":"chat","text":"ok","extra":"\xff"}')
    with pytest.raises(InvalidUTF8):  # and on the failure paths too: 1007 wins over an error
        decode(b'{"type":"chat","text":5,"extra":"\xff"}')
    with pytest.raises(InvalidUTF8):
        decode(b'{"type":"chat","text":"x","a":' + b"[" * 3000 + b'"\xc3\x28"')


_NUMBERS = [
    "1e400", "-1e400", "1e-400", "1E+999999999", "9" * 5000, "-1" + "0" * 5000,
    "0." + "0" * 5000 + "1",
    "-0", "01", "+1", ".5", "1.", "1e", "0x10", "--1", "1_000", "18446744073709551616",
    "-9223372036854775809",
]
_LITERALS = ["NaN", "-NaN", "Infinity", "-Infinity", "nan", "inf", "undefined", "True", "nul"]
_STRINGS = [
    '"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\x41"', '"\\u12"',
    '"' + "a" * 70_000 + '"', '"' + "\\n" * 5000 + '"', '"' + "é" * 3000 + '"', '"unterminated',
]
scalars = st.sampled_from(_NUMBERS + _LITERALS + _STRINGS) | st.text(max_size=30).map(
    lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
)


@st.composite
def nested(draw: st.DrawFn) -> str:
    depth = draw(st.sampled_from([1, 10, 500, 990, 1000, 1100, 5000, 20_000]))
    opener = draw(st.sampled_from(["[", '{"a":', '[{"b":']))
    inner = draw(scalars)
    closer = {"[": "]", '{"a":': "}", '[{"b":': "}]"}[opener]
    closed = draw(st.booleans())
    return opener * depth + inner + (closer * depth if closed else "")


values = scalars | nested()


@st.composite
def hostile_messages(draw: st.DrawFn) -> bytes:
    fields = {
        "type": draw(st.sampled_from(['"chat"', '"join"', '"leave"']) | values),
        "text": draw(values),
        "room": draw(values),
        "username": draw(values),
        "extra": draw(values),
    }
    keys = draw(st.lists(st.sampled_from(list(fields)), min_size=0, max_size=5, unique=True))
    raw = ("{" + ",".join(f'"{k}":{fields[k]}' for k in keys) + "}").encode()
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    if draw(st.integers(0, 4)) == 0:  # sometimes a byte that breaks UTF-8
        at = draw(st.integers(0, len(raw)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]))
        raw = raw[:at] + bad + raw[at:]
    return raw


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check(raw: bytes) -> None:
    try:
        message = decode(raw)
    except DecodeFailure as failure:
        assert failure.code in set(ErrorCode) and failure.text
        assert _is_utf8(raw), "a text that is not UTF-8 must close with 1007, not get an error"
    except InvalidUTF8:
        assert not _is_utf8(raw)
    else:
        assert isinstance(message, Join | Chat | Leave)
        assert _is_utf8(raw)


@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_messages())
def test_decode_raises_nothing_but_its_two_failures(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=400))
def test_invalid_utf8_is_reported_exactly_when_the_bytes_are_not_utf8(raw: bytes) -> None:
    _check(raw)
