# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled part of the hot path: how roomcast tunes each picows transport.

picows ships a .pxd, so Cython code may set the transport's internals that Python cannot
reach (see docs/performance.md for the measurements behind each line):

* every server transport shares one write buffer instead of holding 1 KiB each: picows builds a
  control frame (ping, pong, close) in it and copies it out before returning, never keeping it;
* every frame picows itself writes goes to one callable of ours (``write``), not to the socket,
  so that those bytes are counted and queued like ours (one accounting for every byte written);
* the parsed upgrade request, our 101 response and the weak proxy to the listener (used only by
  picows's own auto-ping, which roomcast replaces) are released once connected.
"""

from picows.picows cimport MemoryBuffer, WSTransport

cdef MemoryBuffer _shared_write_buffer = None


def adopt(WSTransport transport, object write):
    """Tunes a server transport once its connection is established (``on_ws_connected``)."""
    global _shared_write_buffer
    if _shared_write_buffer is None:
        _shared_write_buffer = transport._write_buffer
    else:
        transport._write_buffer = _shared_write_buffer
    # picows's _fast_write sends on the socket itself unless the transport is "secure"; this
    # makes it hand every frame to _tr_write, which is ours.
    transport.is_secure = True
    transport._tr_write = write
    transport.request = None
    transport.response = None
    transport.listener_proxy = None
