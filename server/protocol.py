"""The wire protocol: message shapes, error and close codes, one encoder and one decoder.

Inbound messages are a tagged union on ``type``: the seed's three messages plus ``typing``.
Outbound messages keep the seed's fields and only add new ones (``code``, ``event``, ``room``,
``count``, ``seq``...), and the messages a seed client never asks for (``history``, ``ack``,
``typing``) go only to clients that sent the field asking for them, so a client written for the
seed works unchanged. See docs/protocol.md and docs/history.md.
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated

import msgspec


class CloseCode(enum.IntEnum):
    """Close codes the server sends; 4000-4999 are roomcast's own (see docs/protocol.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down, or the peer stopped answering pings
    PROTOCOL_ERROR = 1002
    INVALID_TEXT = 1007  # a text message that is not UTF-8
    POLICY_VIOLATION = 1008  # more frames in a second than --max-frames-per-second
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # our fault; details are in the server log, never sent to the peer
    SERVICE_RESTART = 1012
    SLOW_CONSUMER = 4000  # the peer stopped reading and its unsent bytes passed the limit
    TOKEN_EXPIRED = 4001  # the JWT the connection was opened with has expired


def close_reply(code: int, has_code: bool) -> int:
    """The code to answer a peer's CLOSE with (RFC 6455 sections 5.5.1 and 7.4).

    `has_code`: the CLOSE's payload carried a status code (two bytes or more; picows reports
    code 0 for an empty payload, so the caller says which it was). No code: 1000. A code valid on
    the wire (1000-1003, 1007-1014, 3000-4999): echoed. Any other code, 0 and 1005 included
    (a peer may not send them: 1005 and 1006 only say that no code arrived), is a protocol
    error: 1002.
    """
    if not has_code:
        return CloseCode.NORMAL
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return CloseCode.PROTOCOL_ERROR


class ErrorCode(enum.StrEnum):
    """Machine-readable ``code`` of an ``error`` message. The connection stays usable after each."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    NOT_IN_ROOM = "not_in_room"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    INVALID_USERNAME = "invalid_username"
    INVALID_ROOM = "invalid_room"
    BINARY_UNSUPPORTED = "binary_unsupported"
    RATE_LIMITED = "rate_limited"
    FORBIDDEN_ROOM = "forbidden_room"  # the token's `rooms` claim does not allow this room
    UNAVAILABLE = "unavailable"  # a chat with an id while the node cannot reach Redis: retry


# ---- client -> server -------------------------------------------------------------------------


MAX_ID_LENGTH = 64  # characters of a chat's client-chosen `id`
MAX_EPOCH_LENGTH = 64  # characters of the `epoch` a resume names (the server's are 16)

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class Position(msgspec.Struct, gc=False):
    """A place in a room's stream: after message `seq` of history stream `epoch`."""

    epoch: Annotated[str, msgspec.Meta(max_length=MAX_EPOCH_LENGTH)]
    seq: NonNegative


class Join(msgspec.Struct, tag_field="type", tag="join", gc=False):
    # Optional and nullable because the seed's server treats missing, null and "" alike.
    room: str | None = None
    username: str | None = None
    typing: bool | None = None  # true: this client wants `typing` events of its room
    history: NonNegative | None = None  # the last K messages before the welcome
    since: Position | None = None  # resume: every message after this position

    def __post_init__(self) -> None:
        # msgspec turns this into a ValidationError: `invalid_message`, like any bad field.
        if self.history is not None and self.since is not None:
            raise ValueError("`history` and `since` cannot be combined")


class Chat(msgspec.Struct, tag_field="type", tag="chat", gc=False):
    text: str
    # Client-chosen: acked with the message's seq, and a retry with the same id is not posted
    # again while the room's history holds the first one (docs/history.md).
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)] | None = None


class Leave(msgspec.Struct, tag_field="type", tag="leave", gc=False):
    pass


class Typing(msgspec.Struct, tag_field="type", tag="typing", gc=False):
    """The sender is typing: a hint for the others, never stored, at most one per interval."""


ClientMessage = Join | Chat | Leave | Typing

# ---- server -> client -------------------------------------------------------------------------


class ChatMessage(msgspec.Struct, tag_field="type", tag="chat", gc=False):
    username: str
    text: str
    timestamp: int
    # The message's place in its room's stream. It must stay the LAST field: a broker that lets
    # another process decide the order (Redis) encodes the message once with ``seq`` 0 and
    # splices the real number into the bytes before ``}``, as redis/wire.py's split_count does
    # for a notice's count. `,"seq":0}` cannot occur inside an encoded string (a quote there is
    # escaped), so the last occurrence is the field itself.
    seq: int = 0


SEQ_MARK = b',"seq":0}'  # how every ChatMessage encoded with seq 0 ends (see ChatMessage.seq)


class SystemMessage(msgspec.Struct, tag_field="type", tag="system", omit_defaults=True, gc=False):
    text: str
    event: str
    room: str
    username: str
    count: int
    timestamp: int
    # Only the joiner's own copy carries the member list (capped); see docs/presence.md.
    users: list[str] | None = None
    # Only the joiner's own copy: the room's history stream and its last seq at the join, the
    # position a later `since` resumes from (docs/history.md).
    epoch: str | None = None
    seq: int | None = None
    # Only the joiner's own copy: the longest chat text this server accepts, in characters
    # (--max-text-length), so that a client can stop its user typing more than gets through.
    max_text_length: int | None = None


class TypingMessage(msgspec.Struct, tag_field="type", tag="typing", gc=False):
    """Sent only to members whose join asked for it (``"typing": true``)."""

    room: str
    username: str


class StatusMessage(msgspec.Struct, tag_field="type", tag="system", omit_defaults=True, gc=False):
    """Tells a room's members about the link to the other nodes: down (``outage``), back
    (``recovered``), messages that could not be recovered (``gap``), or the room's history
    stream lost in Redis (``reset``, with the new ``epoch`` and ``seq`` to resume from). No
    username or count: it changes nobody's presence."""

    text: str
    event: str
    room: str
    timestamp: int
    epoch: str | None = None
    seq: int | None = None


class HistoryMessage(msgspec.Struct, tag_field="type", tag="history", omit_defaults=True, gc=False):
    """Sent before the welcome to a joiner that asked with `history` or `since`."""

    room: str
    epoch: str
    # The stored payloads as they were sent live: msgspec copies Raw bytes as they are.
    messages: list[msgspec.Raw]
    recovered: bool
    reason: str | None = None  # why not recovered


class AckMessage(msgspec.Struct, tag_field="type", tag="ack", gc=False):
    """To the sender of a chat that carried an `id`: its place in the room's order."""

    id: str
    seq: int


class ErrorMessage(msgspec.Struct, tag_field="type", tag="error", omit_defaults=True, gc=False):
    code: ErrorCode
    text: str
    retry_after_ms: int | None = None
    id: str | None = None  # the refused chat's `id`, when it carried one
    refused: str | None = None  # "join" or "leave": the message a `rate_limited` is about


decoder = msgspec.json.Decoder(ClientMessage)
encoder = msgspec.json.Encoder()
encode = encoder.encode


class DecodeFailure(Exception):
    """A text message that is not a valid client message, with the error to send back."""

    def __init__(self, code: ErrorCode, text: str, chat_id: str | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.chat_id = chat_id  # a refused chat's valid id, echoed so its sender can match it


class InvalidUTF8(Exception):
    """A text message whose bytes are not UTF-8: RFC 6455 requires closing with 1007."""


def decode(payload: bytes) -> ClientMessage:
    """Decodes one client message; raises DecodeFailure (peer's error) or InvalidUTF8, nothing else.

    Everything msgspec can raise on input is the peer's fault and becomes one of the two. Read
    from msgspec's decoder (0.23): ValidationError (wrong shape, such as 1e400 where a string
    belongs; integers of more than 4,300 digits are "out of range"), DecodeError (syntax; NaN,
    Infinity and lone surrogates are not JSON), UnicodeDecodeError (bad UTF-8 in a string), and
    RecursionError: it recurses per nesting level and gives up near the interpreter's recursion
    limit (about 1,000 levels, well inside a 64 KiB message). Only running out of memory escapes.
    """
    try:
        message: ClientMessage = decoder.decode(payload)
    except UnicodeDecodeError:
        raise InvalidUTF8 from None
    except msgspec.ValidationError as exc:
        _refuse_invalid_utf8(payload)
        detail = str(exc)
        if detail.endswith("- at `$.type`") or detail == "Object missing required field `type`":
            raise DecodeFailure(
                ErrorCode.UNKNOWN_TYPE,
                "Unknown message type (expected join, chat, leave or typing)",
            ) from None
        raise DecodeFailure(
            ErrorCode.INVALID_MESSAGE, f"Invalid message: {detail}", _refused_chat_id(payload)
        ) from None
    except msgspec.DecodeError:
        # msgspec reports bad UTF-8 outside strings as malformed JSON; RFC 6455 wants 1007 then.
        _refuse_invalid_utf8(payload)
        raise DecodeFailure(ErrorCode.INVALID_JSON, "Invalid JSON") from None
    except RecursionError:
        _refuse_invalid_utf8(payload)
        raise DecodeFailure(
            ErrorCode.INVALID_MESSAGE, "Invalid message: nested too deeply"
        ) from None  # no id: reading it would have to skip the same nesting
    # msgspec skips the strings of unknown fields without checking their UTF-8; RFC 6455 wants
    # the whole text checked. ASCII, the common case, needs no decoding.
    if not payload.isascii():
        _refuse_invalid_utf8(payload)
    return message


class _RefusedChat(msgspec.Struct, gc=False):
    """What is read of a message refused as invalid: whether it was a chat, and its id."""

    type: object = None
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)] | None = None


_refused_decoder = msgspec.json.Decoder(_RefusedChat)


def _refused_chat_id(payload: bytes) -> str | None:
    """The id of a refused chat, when it carried a valid one (only on the error path)."""
    try:
        refused = _refused_decoder.decode(payload)
    except (msgspec.MsgspecError, RecursionError):  # the nesting after the first error
        return None
    return refused.id if refused.type == "chat" else None


def _refuse_invalid_utf8(payload: bytes) -> None:
    try:
        str(payload, "utf-8")
    except UnicodeDecodeError:
        raise InvalidUTF8 from None


_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def text_frame(payload: bytes, first_byte: int = 0x81) -> bytes:
    """One unmasked FIN+TEXT frame: server frames are unmasked, so one copy serves every member.
    (`first_byte` 0x82: a FIN+BINARY frame.)"""
    size = len(payload)
    if size < 126:
        return bytes((first_byte, size)) + payload
    if size < 65536:
        return _HEADER_16.pack(first_byte, 126, size) + payload
    return _HEADER_64.pack(first_byte, 127, size) + payload


def binary_frame(payload: bytes) -> bytes:
    """One unmasked FIN+BINARY frame (the echo mode's)."""
    return text_frame(payload, 0x82)


def close_frame(code: int, reason: str = "") -> bytes:
    """One unmasked CLOSE frame with `code` and a reason cut to fit a control frame (125 bytes)."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return bytes((0x88, len(payload))) + payload


def error_frame(
    code: ErrorCode,
    text: str,
    retry_after_ms: int | None = None,
    chat_id: str | None = None,
    refused: str | None = None,
) -> bytes:
    return text_frame(encode(ErrorMessage(code, text, retry_after_ms, chat_id, refused)))


def ack_frame(chat_id: str, seq: int) -> bytes:
    return text_frame(encode(AckMessage(chat_id, seq)))


def frame_payload(frame: bytes) -> memoryview:
    """The payload of one unmasked frame made by ``text_frame`` (a view: nothing is copied)."""
    size = frame[1]
    return memoryview(frame)[2 if size < 126 else 4 if size == 126 else 10 :]


def payload_history_frame(
    room: str, epoch: str, payloads: list[bytes], recovered: bool, reason: str | None
) -> bytes:
    """The `history` message from payloads as they were sent live (a Redis broker's replay)."""
    raw = [msgspec.Raw(payload) for payload in payloads]
    return text_frame(encode(HistoryMessage(room, epoch, raw, recovered, reason)))


def history_frame(
    room: str, epoch: str, frames: list[bytes], recovered: bool, reason: str | None
) -> bytes:
    """The `history` message: the payloads of the stored frames copied as they are (msgspec
    copies a Raw's bytes verbatim), never decoded or re-encoded."""
    raw = [msgspec.Raw(frame_payload(f)) for f in frames]
    return text_frame(encode(HistoryMessage(room, epoch, raw, recovered, reason)))
