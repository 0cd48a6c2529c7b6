"""The room history's life in the process: read back at start, swept by one timer, saved at exit.

``--history-file PATH``: at a planned shutdown (SIGTERM/SIGINT), once the clients are gone, every
stream (epoch, last seq, stored payloads and ids) is written to PATH atomically (a temporary file
in the same directory, fsync, rename, fsync of the directory); at start it is read back and then
deleted, so that a later crash (kill -9, no save) cannot bring back a stream that went on after
the save: the streams start anew with new epochs and resuming clients are told ``recovered:
false`` instead of being given a wrong replay. A missing, unreadable or corrupt file is logged
and ignored (new epochs), never fatal; so is a file that cannot be deleted after reading.

The format is msgpack (msgspec): ``SavedHistory`` below, its ``streams`` the encoded list of
``history.SavedStream`` entries, guarded by a BLAKE2b digest: a byte damaged anywhere makes the
whole file ignored (new epochs, ``recovered: false``), never a replay of damaged messages called
recovered (format 1 had no digest: one flipped bit in a seq or a text was served as recovered).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time

import msgspec

from .history import History, SavedStream, sweep_interval

log = logging.getLogger("roomcast.history")

FORMAT = 2


class SavedHistory(msgspec.Struct, gc=False):
    format: int
    digest: bytes  # of `streams`, as written: see digest()
    streams: bytes  # msgpack of list[SavedStream], least recently active first


def digest(streams: bytes) -> bytes:
    return hashlib.blake2b(streams, digest_size=16).digest()


def encode_file(history: History) -> bytes:
    streams = _encoder.encode(history.snapshot())
    return _encoder.encode(SavedHistory(FORMAT, digest(streams), streams))


def decode_file(data: bytes) -> list[SavedStream]:
    """The streams `data` holds; ValueError or msgspec.DecodeError if it is not a whole file."""
    saved = _decoder.decode(data)
    if saved.format != FORMAT:
        raise ValueError(f"format {saved.format}, expected {FORMAT}")
    if saved.digest != digest(saved.streams):
        raise ValueError("its checksum does not match: the file is damaged")
    return _streams_decoder.decode(saved.streams)


_decoder = msgspec.msgpack.Decoder(SavedHistory)
_streams_decoder = msgspec.msgpack.Decoder(list[SavedStream])
_encoder = msgspec.msgpack.Encoder()


class Retention:
    """Owns the sweep timer and the history file of one process's `History`."""

    def __init__(self, history: History, path: str) -> None:
        self.history = history
        self.path = path  # "" without --history-file
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reads the saved history back (before any client is served) and starts sweeping."""
        if self.path:
            load(self.path, self.history)
        self._loop = loop
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def hold(self) -> None:
        """A planned shutdown begins: nothing is forgotten any more, neither by the sweep nor by
        the drain emptying rooms (``--history-ttl 0`` included), so the save holds it all."""
        self.stop()
        self.history.keep_until_saved()

    def finish(self) -> None:
        """At a planned shutdown, after the drain: saves (with a file)."""
        self.hold()
        if self.path:
            save(self.path, self.history)

    def _schedule(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(sweep_interval(self.history.ttl), self._sweep)

    def _sweep(self) -> None:
        self._schedule()
        self.history.sweep()


def load(path: str, history: History) -> int:
    """Restores what `path` holds into `history` and deletes it; returns the streams restored.

    A file that is not a whole history file (damaged, another format, or some other file the
    option was pointed at) is moved aside to ``PATH.unreadable-<time>``, never overwritten by the
    next save; one far larger than the history could have written is not even read."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > 2 * history.max_bytes + (1 << 20):  # far more than a save could hold
                raise _NotHistory(f"{size} bytes, more than any history file of this server")
            data = file.read()
        streams = decode_file(data)
    except FileNotFoundError:
        log.info("no saved history at %s: every room starts a new stream", path)
        return 0
    except OSError as exc:
        log.warning("cannot read history file %s (%s): every room starts a new stream", path, exc)
        return 0
    except (msgspec.DecodeError, ValueError, _NotHistory) as exc:
        aside = f"{path}.unreadable-{int(time.time())}"
        try:
            os.replace(path, aside)
        except OSError as error:
            log.error("ignoring history file %s (%s) and cannot move it aside (%s): the next "
                      "save replaces it", path, exc, error)
        else:
            log.warning("ignoring history file %s (%s): moved to %s; every room starts a new "
                        "stream", path, exc, aside)
        return 0
    try:
        os.unlink(path)
    except OSError as exc:
        # Kept, it would be read again after a crash and name messages that were never saved.
        log.error(
            "cannot delete history file %s after reading it (%s): ignoring it, every room "
            "starts a new stream", path, exc,
        )
        return 0
    kept = history.restore(streams)
    log.info(
        "restored the history of %d rooms (%d messages) from %s",
        kept, history.messages(), path,
    )
    return kept


class _NotHistory(Exception):
    """A file the history could not have written."""


def save(path: str, history: History) -> bool:
    """Writes every stream of `history` to `path` atomically; False (logged) when it failed."""
    data = encode_file(history)
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the rename itself survives a power cut
        finally:
            os.close(descriptor)
    except OSError as exc:
        log.error("cannot save the history to %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return False
    log.info(
        "saved the history of %d rooms (%d messages, %d bytes) to %s",
        len(history), history.messages(), len(data), path,
    )
    return True
