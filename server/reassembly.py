"""Reassembly of fragmented WebSocket messages (RFC 6455 section 5.4), without sockets.

picows hands the application single frames; a fragmented message is a TEXT or BINARY frame with
FIN clear, then CONTINUATION frames, the last with FIN set. Control frames (PING, PONG, CLOSE) may
come in between and are not this module's business. ``reassemble`` is one step of the state
machine: the state is None between messages (the common, allocation-free case) or a ``Fragments``
while a message is in progress.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import CloseCode

CONTINUATION, TEXT, BINARY = 0x0, 0x1, 0x2


class Fragments:
    """A fragmented message in progress."""

    __slots__ = ("binary", "parts", "size")

    def __init__(self, binary: bool) -> None:
        self.binary = binary
        self.parts: list[bytes] = []
        self.size = 0


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


def reassemble(
    state: Fragments | None, opcode: int, fin: bool, payload: bytes, limit: int
) -> tuple[Fragments | None, Outcome]:
    """Feeds one data frame (opcode 0, 1 or 2); returns the new state and what came of it.

    After a Violation the state is None and the connection must be closed; a message larger than
    ``limit`` bytes over all its fragments is a 1009 Violation, detected before it is stored.
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
                return None, Violation(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return None, Message(opcode == BINARY, payload)
        state = Fragments(opcode == BINARY)
    else:
        raise ValueError(f"not a data frame opcode: {opcode}")
    state.size += len(payload)
    if state.size > limit:
        return None, Violation(CloseCode.MESSAGE_TOO_BIG, "message too big")
    state.parts.append(payload)
    if not fin:
        return state, None
    return None, Message(state.binary, b"".join(state.parts))
