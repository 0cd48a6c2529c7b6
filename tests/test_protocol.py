"""Message decoding and server framing."""

from __future__ import annotations

import struct

import pytest

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
