# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The driver's compiled receiver: reads the members' sockets during a fan-out measurement.

Why: read through picows in Python, a driver worker spends about 11 µs per received frame on
this machine (kernel 43%, interpreter 37%), slower than the servers write (roomcast's flush
writes a 1,000-member room at about 6 µs per member), so in a large room the driver, not the
server, set the latency of the last members: every server's p99 was the driver's. This reader
does what a client in C would: one epoll over the members' sockets, ``recv()`` into one buffer,
the WebSocket frames parsed in place, a chat's scheduled send time (``id:send_ns:padding`` in
its text) read from its digits, the latency stored, all without the GIL, in a thread of its own
while the worker's event loop keeps publishing.

While it runs, picows does not read those sockets (the worker pauses their transports).
Only what a fan-out measurement needs is understood: unmasked server frames of at most 64 KiB
(anything else is counted as malformed and that socket is no longer read), TEXT chats (other
TEXT frames are counted and skipped), CLOSE (the connection is counted as closed and no longer
read); a PING's payload is kept for picows to answer afterwards, other frames are skipped.
Handing a socket over assumes picows holds no unfinished frame of it (the scenarios drain
presence traffic before publishing); handing it back, the reader's unfinished frame goes to
picows first (``unread``).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy


cdef extern from "<string.h>" nogil:
    void* memmem(const void* haystack, size_t haystacklen, const void* needle, size_t needlelen)


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        int fd
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    enum: EPOLLIN
    enum: EPOLL_CTL_ADD
    enum: EPOLL_CTL_DEL
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int sockfd, void* buf, size_t length, int flags)
    enum: MSG_DONTWAIT

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    enum: CLOCK_MONOTONIC
    enum: CLOCK_THREAD_CPUTIME_ID
    int clock_gettime(int clk, timespec* ts)


cdef inline int64_t clock_ns(int clock) noexcept nogil:
    cdef timespec ts
    clock_gettime(clock, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t now_ns() noexcept nogil:
    return clock_ns(CLOCK_MONOTONIC)


cdef inline uint8_t* digits(uint8_t* q, uint8_t* end, int64_t* out) noexcept nogil:
    """Reads the decimal digits at ``q`` into ``out``; returns where they end."""
    while q < end and q[0] >= 48 and q[0] <= 57:
        out[0] = out[0] * 10 + (q[0] - 48)
        q += 1
    return q


cdef struct Carry:
    uint8_t* data   # the unfinished frame's bytes so far (NULL while none)
    Py_ssize_t size
    int closed
    int ping_len    # the last PING's payload, answered by picows once it reads again (-1: none)
    uint8_t ping[125]


DEF READ_BYTES = 262144
DEF EVENTS = 256
DEF MAX_PAYLOAD = 65536  # a longer frame is not a fan-out chat: the socket is no longer read
DEF CARRY_MAX = MAX_PAYLOAD + 14  # an unfinished frame: at most its header and payload

cdef const char* TEXT_MARK = b'"text":"'
cdef const char* CHAT_MARK = b'"type":"chat"'
cdef const char* ERROR_MARK = b'"type":"error"'


cdef class Receiver:
    """Reads ``fds`` until ``expected`` measured chats arrived, ``stop()`` or the timeout.

    ``tags[i]`` (a small integer, 0 for none) files fd i's latencies under that group as well.
    A chat whose id is below ``warm`` is counted in ``warm_received`` and not measured.
    """

    cdef int epfd
    cdef int count
    cdef int* fds
    cdef int* tags
    cdef Carry* carry
    cdef int64_t warm
    cdef int64_t* lat
    cdef int32_t* lat_id
    cdef uint8_t* lat_tag
    cdef Py_ssize_t lat_len, lat_cap
    cdef public int64_t measured, warm_received, other_frames, errors, closed, malformed
    cdef public int64_t wakeups  # epoll_wait returns with sockets ready
    cdef public int64_t cpu_ns  # CPU time of the thread(s) that ran run()
    cdef public int last_close_code
    cdef volatile int stopping
    cdef uint8_t* buf

    def __cinit__(self, list fds, list tags, long long warm, Py_ssize_t capacity):
        cdef Py_ssize_t i
        cdef epoll_event ev
        self.epfd = -1  # before anything can fail: __dealloc__ closes it
        if len(tags) != len(fds):
            raise ValueError(f"{len(fds)} sockets but {len(tags)} tags")
        self.count = len(fds)
        self.fds = <int*>malloc(sizeof(int) * max(1, self.count))
        self.tags = <int*>malloc(sizeof(int) * max(1, self.count))
        self.carry = <Carry*>calloc(max(1, self.count), sizeof(Carry))
        self.lat_cap = max(16, capacity)
        self.lat = <int64_t*>malloc(sizeof(int64_t) * self.lat_cap)
        self.lat_id = <int32_t*>malloc(sizeof(int32_t) * self.lat_cap)
        self.lat_tag = <uint8_t*>malloc(self.lat_cap)
        self.buf = <uint8_t*>malloc(READ_BYTES + CARRY_MAX)
        if not (self.fds and self.tags and self.carry and self.lat and self.lat_id
                and self.lat_tag and self.buf):
            raise MemoryError()
        self.warm = warm
        for i in range(self.count):
            self.carry[i].ping_len = -1
        for i in range(self.count):
            self.fds[i] = fds[i]
            self.tags[i] = tags[i]
        self.epfd = epoll_create1(0)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1")
        for i in range(self.count):
            ev.events = EPOLLIN
            ev.data.u64 = <uint64_t>i
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.fds[i], &ev) < 0:
                raise OSError(errno, "epoll_ctl")

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.carry != NULL:
            for i in range(self.count):
                free(self.carry[i].data)
        free(self.carry)
        free(self.fds)
        free(self.tags)
        free(self.lat)
        free(self.lat_id)
        free(self.lat_tag)
        free(self.buf)
        if self.epfd >= 0:
            close(self.epfd)

    def stop(self):
        self.stopping = 1

    def run(self, long long expected, double timeout_s):
        """Reads until ``measured >= expected``, ``stop()``, ``timeout_s`` or every socket closed;
        releases the GIL."""
        cdef int64_t deadline = now_ns() + <int64_t>(timeout_s * 1e9)
        cdef int64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID)
        cdef epoll_event events[EVENTS]
        cdef int n, k
        with nogil:
            while (not self.stopping and self.measured < expected and self.closed < self.count
                   and now_ns() < deadline):
                n = epoll_wait(self.epfd, events, EVENTS, 20)
                if n < 0:
                    if errno == EINTR:
                        continue
                    break
                if n:
                    self.wakeups += 1
                for k in range(n):
                    self._drain(<Py_ssize_t>events[k].data.u64)
            self.cpu_ns += clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0

    cdef void _close(self, Py_ssize_t i) noexcept nogil:
        """Stops reading socket i (a level-triggered epoll would report it forever)."""
        if not self.carry[i].closed:
            self.carry[i].closed = 1
            self.closed += 1
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, self.fds[i], NULL)

    cdef void _drain(self, Py_ssize_t i) noexcept nogil:
        cdef Carry* c = &self.carry[i]
        cdef Py_ssize_t have, got, used
        while not c.closed:
            have = c.size
            if have:
                memcpy(self.buf, c.data, have)
            got = recv(self.fds[i], self.buf + have, READ_BYTES, MSG_DONTWAIT)
            if got < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:  # (EWOULDBLOCK is EAGAIN on Linux)
                    self._close(i)  # a reset, taken here: picows will find the socket ended
                return
            if got == 0:
                self._close(i)
                return
            used = self._frames(i, self.buf, have + got)
            if c.closed:
                c.size = 0
                return
            c.size = have + got - used  # at most CARRY_MAX: _frames checks every frame's length
            if c.size:
                c.data = <uint8_t*>realloc(c.data, c.size)
                memcpy(c.data, self.buf + used, c.size)
            if got < READ_BYTES:
                return

    cdef Py_ssize_t _frames(self, Py_ssize_t i, uint8_t* data, Py_ssize_t size) noexcept nogil:
        """Handles the complete frames at the start of ``data``; returns the bytes they took."""
        cdef Py_ssize_t pos = 0, head, length
        cdef uint64_t wire_length
        cdef uint8_t opcode, b1
        cdef int t
        while size - pos >= 2:
            opcode = data[pos] & 0x0F
            b1 = data[pos + 1]
            if b1 & 0x80:  # a masked frame from a server: not a stream this reader can follow
                self.malformed += 1
                self._close(i)
                return pos
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (<Py_ssize_t>data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                wire_length = 0
                for t in range(8):
                    wire_length = (wire_length << 8) | data[pos + 2 + t]
                if wire_length > MAX_PAYLOAD:
                    self.malformed += 1
                    self._close(i)
                    return pos
                length = <Py_ssize_t>wire_length
                head = 10
            if size - pos < head + length:
                break
            if opcode == 1:
                self._text(i, data + pos + head, length)
            elif opcode == 8:
                self._close(i)
                if length >= 2:
                    self.last_close_code = (data[pos + head] << 8) | data[pos + head + 1]
                return pos + head + length
            elif opcode == 9 and length <= 125:
                memcpy(self.carry[i].ping, data + pos + head, length)
                self.carry[i].ping_len = <int>length
                self.other_frames += 1
            else:
                self.other_frames += 1
            pos += head + length
        return pos

    cdef void _text(self, Py_ssize_t i, uint8_t* p, Py_ssize_t n) noexcept nogil:
        cdef int64_t t = now_ns()
        cdef uint8_t* q
        cdef uint8_t* end = p + n
        cdef int64_t msg_id = 0, send_ns = 0
        if memmem(p, n, CHAT_MARK, 13) == NULL:
            if memmem(p, n, ERROR_MARK, 14) != NULL:
                self.errors += 1
            else:
                self.other_frames += 1
            return
        q = <uint8_t*>memmem(p, n, TEXT_MARK, 8)
        if q == NULL:
            self.malformed += 1
            return
        q = digits(q + 8, end, &msg_id)
        if q >= end or q[0] != 58:  # ':'
            self.malformed += 1
            return
        digits(q + 1, end, &send_ns)
        if msg_id < self.warm:
            self.warm_received += 1
            return
        if self.lat_len == self.lat_cap:
            self.lat_cap *= 2
            self.lat = <int64_t*>realloc(self.lat, sizeof(int64_t) * self.lat_cap)
            self.lat_id = <int32_t*>realloc(self.lat_id, sizeof(int32_t) * self.lat_cap)
            self.lat_tag = <uint8_t*>realloc(self.lat_tag, self.lat_cap)
        self.lat[self.lat_len] = t - send_ns
        self.lat_id[self.lat_len] = <int32_t>msg_id
        self.lat_tag[self.lat_len] = <uint8_t>self.tags[i]
        self.lat_len += 1
        self.measured += 1

    def unread(self, Py_ssize_t i):
        """The bytes of an unfinished frame socket i's reader holds (for picows to go on
        with), and forgets them."""
        cdef Carry* c = &self.carry[i]
        out = PyBytes_FromStringAndSize(<char*>c.data, c.size) if c.size else b""
        c.size = 0
        return out

    def ping_payload(self, Py_ssize_t i):
        """The payload of the last PING read on socket i (to be answered), or None."""
        cdef Carry* c = &self.carry[i]
        if c.ping_len < 0:
            return None
        return PyBytes_FromStringAndSize(<char*>c.ping, c.ping_len)

    @property
    def frames(self):
        """Every frame read: measured and warm-up chats, errors, the rest."""
        return self.measured + self.warm_received + self.errors + self.other_frames

    @property
    def leftover_bytes(self):
        cdef Py_ssize_t i, total = 0
        for i in range(self.count):
            total += self.carry[i].size
        return total

    def ids(self):
        """The message id of each latency in ``latencies()`` (int32), in the same order."""
        return PyBytes_FromStringAndSize(<char*>self.lat_id, self.lat_len * sizeof(int32_t))

    def latencies(self, int tag=-1):
        """The measured latencies (int64 ns, receipt order) as bytes, all or one tag's."""
        cdef Py_ssize_t i, j = 0
        cdef int64_t* out
        if tag < 0:
            return PyBytes_FromStringAndSize(<char*>self.lat, self.lat_len * sizeof(int64_t))
        out = <int64_t*>malloc(sizeof(int64_t) * max(1, self.lat_len))
        for i in range(self.lat_len):
            if self.lat_tag[i] == tag:
                out[j] = self.lat[i]
                j += 1
        try:
            return PyBytes_FromStringAndSize(<char*>out, j * sizeof(int64_t))
        finally:
            free(out)
