"""Reassembly of fragmented WebSocket messages (RFC 6455 section 5.4), without sockets.

picows hands the application single frames; a fragmented message is a TEXT or BINARY frame with
FIN clear, then CONTINUATION frames, the last with FIN set. Control frames (PING, PONG, CLOSE) may
come in between and are not this module's business. ``reassemble`` is one step of the state
machine: the state is None between messages (the common, allocation-free case) or a ``Fragments``
while a message is in progress.

Both things a partial message costs are bounded: its payload bytes (``limit``,
``--max-message-bytes``), kept in one ``bytearray`` so memory is the payload and not an object
per fragment, and its frames (``MAX_FRAGMENTS``), so empty CONTINUATION frames, which add no
bytes, cannot keep a message open forever.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from .protocol import CloseCode

CONTINUATION, TEXT, BINARY = 0x0, 0x1, 0x2
_utf8_decoder = codecs.getincrementaldecoder("utf-8")

# Most frames one message may take, the first included (empty ones count too). 1,024 carries a
# message of the default 64 KiB limit in 64-byte fragments, the smallest fragment size any
# Autobahn case uses for a full-size message (9.3.1); the cases the compliance run executes need
# far fewer (6.2.3: a 30-byte text in 1-byte fragments; 10.1.1: 65,536 bytes in 1,300-byte
# fragments, 51 frames). Browsers never fragment what they send. Past it the close is 1009, not
# 1008: RFC 6455 section 7.4.1 keeps 1008 for when "there is no other more suitable status code",
# and "a message that is too big for it to process" is exactly the case, measured in frames.
MAX_FRAGMENTS = 1024


class Fragments:
    """A fragmented message in progress: its payload so far and how many frames brought it."""

    __slots__ = ("binary", "frames", "payload", "utf8")

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self.payload = bytearray()
        self.frames = 0
        # A text message's UTF-8 is checked fragment by fragment (a character may span two), so
        # that invalid text fails at the fragment that breaks it (RFC 6455 section 8.1: "fail
        # fast"), not only once the whole message is in; the complete message is checked again
        # where every text message is.
        self.utf8 = None if binary else _utf8_decoder()

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True, slots=True)
class Message:
    binary: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol or a limit: close with ``code``."""

    code: CloseCode
    reason: str


Outcome = Message | Violation | None

TOO_BIG = Violation(CloseCode.MESSAGE_TOO_BIG, "message too big")
INVALID_UTF8 = Violation(CloseCode.INVALID_TEXT, "invalid UTF-8 in text message")
TOO_MANY_FRAGMENTS = Violation(CloseCode.MESSAGE_TOO_BIG, "too many fragments")


def reassemble(
    state: Fragments | None,
    opcode: int,
    fin: bool,
    payload: bytes | bytearray | memoryview,
    limit: int,
    *,
    max_fragments: int = MAX_FRAGMENTS,
) -> tuple[Fragments | None, Outcome]:
    """Feeds one data frame (opcode 0, 1 or 2); returns the new state and what came of it.

    After a Violation the state is None and the connection must be closed. A message larger than
    ``limit`` bytes over all its fragments, or taking more than ``max_fragments`` frames, is a
    1009 Violation, detected before the frame is stored. `payload` may be any bytes-like object
    (a memoryview of picows's buffer too): it is copied into the state, not kept.
    """
    if opcode == CONTINUATION:
        if state is None:
            return None, Violation(CloseCode.PROTOCOL_ERROR, "continuation frame without a message")
    elif opcode in (TEXT, BINARY):
        if state is not None:
            return None, Violation(
                CloseCode.PROTOCOL_ERROR, "new message inside a fragmented message"
            )
        if fin:
            if len(payload) > limit:
                return None, TOO_BIG
            return None, Message(opcode == BINARY, bytes(payload))
        state = Fragments(opcode == BINARY)
    else:
        raise ValueError(f"not a data frame opcode: {opcode}")
    state.frames += 1
    if state.frames > max_fragments:
        return None, TOO_MANY_FRAGMENTS
    if len(state.payload) + len(payload) > limit:
        return None, TOO_BIG
    state.payload += payload
    if not fin:
        if state.utf8 is not None:
            try:
                state.utf8.decode(payload)
            except UnicodeDecodeError:
                return None, INVALID_UTF8
        return state, None
    return None, Message(state.binary, bytes(state.payload))
