"""Type stubs of the compiled module server/fastpath.pyx."""

from collections.abc import Callable

from picows import WSTransport

def adopt(transport: WSTransport, write: Callable[[bytes], object]) -> None: ...
