"""Type stubs of the compiled module server/fastpath.pyx (its docstring says what it owns)."""

from collections.abc import Callable, Container

from picows import WSTransport

from .delivery import Room
from .ratelimit import Ring

Write = Callable[[bytes], object]

class Member:
    write: Write
    fd: int
    fixed_name: str | None
    allowed_rooms: Container[str] | None
    name: str
    room: Room | None
    slot: int
    late: bool
    held: list[bytes] | None
    cursor: int
    chat_rate: Ring | None
    join_rate: Ring | None
    first_join: float
    wants_typing: bool
    typing_at: float
    frames_left: int
    frames_since: float
    def __init__(self, write: Write, name: str = ...) -> None: ...

def fanout(members: list[Member], blob: bytes) -> None: ...
READ_BUFFER_BYTES: int

def read_buffer(protocol: object) -> tuple[int, int] | None: ...
def trim_read_buffer(protocol: object) -> bool: ...
def adopt(transport: WSTransport, write: Callable[[bytes], object]) -> None: ...
