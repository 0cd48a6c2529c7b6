"""Reading a member's byte stream back into messages, for tests of the core."""

from __future__ import annotations

import json
from typing import Any


def server_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(first byte, opcode, payload) of each unmasked frame in a server's byte stream."""
    frames = []
    pos = 0
    while pos < len(data):
        first, size = data[pos], data[pos + 1] & 0x7F
        pos += 2
        if size == 126:
            size = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif size == 127:
            size = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        payload = bytes(data[pos : pos + size])
        assert len(payload) == size, "the stream ends inside a frame"
        frames.append((first, first & 0x0F, payload))
        pos += size
    return frames


def server_messages(data: bytes) -> list[Any]:
    """The JSON messages in a stream of unmasked FIN+TEXT frames, as a client would read them."""
    out = []
    for first, _, payload in server_frames(data):
        assert first == 0x81, "FIN+TEXT frame"
        out.append(json.loads(payload))
    return out
