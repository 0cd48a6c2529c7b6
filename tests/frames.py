"""Reading a member's byte stream back into messages, for tests of the core."""

from __future__ import annotations

import json
from typing import Any


def server_messages(data: bytes) -> list[Any]:
    """The JSON messages in a stream of unmasked FIN+TEXT frames, as a client would read them."""
    out = []
    pos = 0
    while pos < len(data):
        assert data[pos] == 0x81, "FIN+TEXT frame"
        size = data[pos + 1]
        pos += 2
        if size == 126:
            size = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif size == 127:
            size = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        out.append(json.loads(data[pos : pos + size]))
        pos += size
    return out
