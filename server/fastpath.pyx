# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled part of the hot path: the member record, the fan-out loop, transport tuning.

One implementation, used by the server and by every test (no pure-Python twin):

* ``Member`` is the record the chat core and the delivery lists keep per participant (a C struct
  with Python-visible fields, so the fan-out loop reads ``fd`` and ``write`` without a lookup);
* ``fanout(members, blob)`` writes the same bytes to every member of a list: with one
  ``send()`` on the member's socket while nothing waits in its transport (``fd >= 0``), handing
  whatever the kernel did not take to ``member.write.rest`` (the transport, which then pauses
  the connection), and through ``member.write`` otherwise (a paused connection's queue, TLS,
  tests' lists);
* ``adopt(transport, write)`` tunes a picows server transport once connected: one write buffer
  shared by all transports instead of 1 KiB each (picows builds a control frame in it and copies
  it out before returning), every frame picows writes itself routed to ``write`` (so those bytes
  are counted and queued like ours), and the stored upgrade request, 101 response and listener
  proxy (used only by picows's own auto-ping) released, and one finished future shared for the
  one picows keeps per transport for ``wait_disconnected()`` (which a server never calls);
* ``trim_read_buffer(protocol)`` gives a picows protocol's read buffer back down to
  ``READ_BUFFER_BYTES`` while it holds no unfinished frame: picows allocates at least 2 KiB per
  connection and only ever grows it (doubling when 90% full), but an idle connection needs a few
  hundred bytes, and a connection that once sent a big message needs none of the rest.

docs/performance.md has the measurements behind each of these.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Realloc
from libc.errno cimport EAGAIN, EINTR, errno
from picows.picows cimport MemoryBuffer, WSTransport

import gc

from .names import DEFAULT_USERNAME


cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int sockfd, const void* buf, size_t length, int flags)
    enum: MSG_NOSIGNAL
    enum: MSG_DONTWAIT


cdef class Member:
    """One participant. Kept small: a server holds tens of thousands of these.

    ``write`` takes the member's bytes (the socket transport's ``write``, a connection's queue
    while its transport is paused, ``list.append`` in tests); ``fd`` is the socket to ``send()``
    on directly while nothing waits in the transport, -1 otherwise (a writer whose member has an
    ``fd`` also has ``rest(bytes)`` for what a ``send()`` left). Where the member is in its
    room (``slot``, ``late``, ``held``, ``cursor``) is server/delivery.py's business; who it is
    and what it may do (``name``, ``fixed_name``, ``allowed_rooms``, the rate rings, typing) the
    core's; its frame budget (``frames_left``, ``frames_since``) server/connection.py's. Counts
    and times are C fields: no Python object per member for them.
    """

    cdef public object write
    cdef public int fd
    cdef public object fixed_name
    cdef public object allowed_rooms
    cdef public object name
    cdef public object room
    cdef public Py_ssize_t slot
    cdef public bint late
    cdef public object held
    cdef public Py_ssize_t cursor
    cdef public object chat_rate
    cdef public object join_rate
    cdef public double first_join
    cdef public bint wants_typing
    cdef public double typing_at
    cdef public Py_ssize_t frames_left
    cdef public double frames_since

    def __init__(self, write, str name=DEFAULT_USERNAME):
        self.write = write
        self.fd = -1
        # From an authenticated identity (server/auth.py): the name every join uses whatever the
        # client sends, and the rooms it may join (anything supporting `in`; None: all).
        self.fixed_name = None
        self.allowed_rooms = None
        self.name = name
        self.room = None
        # Where the member is in its room: index in room.members, room.late or room.held (O(1)
        # swap-remove); -1 while arriving.
        self.slot = 0
        self.late = False  # True while in room.late
        self.held = None  # a list while in room.held: the frames kept for it
        self.cursor = 0  # late or held: first frame of room.pending it still has to get
        self.chat_rate = None  # ratelimit.Ring of its last chats
        self.join_rate = None  # ratelimit.Ring of its last joins and leaves, from the second
        self.first_join = float("nan")  # when its first join or leave counted (NaN: none yet)
        self.wants_typing = False  # its join asked for `typing` events
        self.typing_at = float("-inf")  # when its last typing event went out
        self.frames_left = 0  # frames its connection may still send in this run of the budget
        self.frames_since = 0.0  # when that run began


def fanout(list members, bytes blob):
    """Writes `blob` to every member of `members`, in order; see the module docstring."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(blob)
    cdef const char* data = PyBytes_AS_STRING(blob)
    cdef Py_ssize_t count = PyList_GET_SIZE(members)
    cdef Py_ssize_t index
    cdef ssize_t sent
    cdef int fd
    cdef Member member
    for index in range(count):
        member = <Member>PyList_GET_ITEM(members, index)
        fd = member.fd
        if fd < 0:
            member.write(blob)
            continue
        sent = send(fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT)
        if sent == size:
            continue
        if sent < 0:
            if errno == EAGAIN or errno == EINTR:  # (EWOULDBLOCK is EAGAIN on Linux)
                sent = 0
            else:
                member.write(blob)  # the transport meets the same error and closes
                continue
        # The kernel took part: the transport keeps the rest (and pauses the connection, which
        # then sets fd to -1 and queues what follows). Through the writer's `rest`, not the
        # writer itself: the remainder is not a frame and must not be taken for one.
        member.write.rest(blob[sent:])


cdef MemoryBuffer _shared_write_buffer = None
cdef object _finished = None


def adopt(WSTransport transport, object write):
    """Tunes a server transport once its connection is established (``on_ws_connected``)."""
    global _shared_write_buffer, _finished
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
    # Only picows's wait_disconnected() awaits this future, which a server never calls; when the
    # connection goes picows sets it unless it is done already: one finished future serves all.
    if _finished is None or _finished.get_loop() is not transport._loop:
        _finished = transport._loop.create_future()
        _finished.set_result(None)
    transport.disconnected_future = _finished


# picows keeps 256 bytes past the readable part of its read buffer for its SIMD code, and its
# growth rule (double the readable part when 90% full, reallocating only past the capacity) keeps
# that margin only while the readable part is over half the capacity: 384 of 640 keeps both.
cdef Py_ssize_t _SMALL = 640
cdef Py_ssize_t _SIMD_MARGIN = 256
READ_BUFFER_BYTES = _SMALL


cdef MemoryBuffer _read_buffer_of(protocol):
    # The protocol's fields are not in picows's .pxd, but the buffer is the one MemoryBuffer (a
    # class that is) among the objects the protocol holds; anything else: None, touch nothing.
    cdef MemoryBuffer found = None
    for held in gc.get_referents(protocol):
        if type(held) is MemoryBuffer:
            if found is not None:
                return None
            found = <MemoryBuffer>held
    return found


cdef Py_ssize_t _waiting(protocol, MemoryBuffer buffer):
    # picows hands readers the free part of its window: the rest is an unfinished frame.
    window = protocol.get_buffer(-1)
    cdef Py_ssize_t free = len(window)
    window.release()
    return buffer.size - free


def read_buffer(protocol):
    """``(capacity, bytes of an unfinished frame)`` of a picows protocol's read buffer, or None."""
    cdef MemoryBuffer buffer = _read_buffer_of(protocol)
    if buffer is None:
        return None
    return buffer.capacity, _waiting(protocol, buffer)


def trim_read_buffer(protocol):
    """Shrinks the read buffer of a picows ``WSProtocol`` to ``READ_BUFFER_BYTES``; whether it did.

    Only between reads (never from inside one of picows's callbacks) and only while nothing waits
    in the buffer: picows parses every complete frame as soon as it is read and moves what is left
    of an unfinished one to the start, so an empty window means no frame in progress.
    """
    cdef MemoryBuffer buffer = _read_buffer_of(protocol)
    cdef char* data
    if buffer is None or buffer.capacity <= _SMALL or _waiting(protocol, buffer) != 0:
        return False
    data = <char*>PyMem_Realloc(buffer.data, _SMALL)
    if data == NULL:
        return False  # the old buffer is still there, untouched
    buffer.data = data
    buffer.capacity = _SMALL
    buffer.size = _SMALL - _SIMD_MARGIN
    return True
