"""``--workers N``: N server processes on one port (SO_REUSEPORT), linked through Redis.

The supervisor picks the port (binding, not listening, a SO_REUSEPORT socket, so that ``--port 0``
works and the port stays reserved), starts N ``python -m server`` workers with ``--reuse-port``
on it, prints the ready line once when every worker listens, restarts a worker that dies (at most
once a second per worker), and on SIGTERM/SIGINT stops them all and exits 0. The kernel spreads
new connections over the workers; they reach each other's clients through Redis. Its metrics
endpoint (server/fleet.py) merges the workers' metrics into one view.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence

from .config import WORKER_OF, Config
from .fleet import Fleet
from .listening import CannotListen, bound_socket, url_host

log = logging.getLogger("roomcast.supervisor")

READY = re.compile(rb"roomcast listening on https?://")
METRICS_LINE = re.compile(rb"roomcast metrics on (http://[^ \s]+)")
RESTART_INTERVAL = 1.0
START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Workers get SIGTERM if the supervisor dies without cleaning up (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.started = 0.0
        self.pump: asyncio.Task[None] | None = None
        self.metrics_url: str | None = None  # its private metrics address, once it said it

    @property
    def pid(self) -> int | None:
        return None if self.proc is None or self.proc.returncode is not None else self.proc.pid

    @property
    def is_ready(self) -> bool:
        return self.ready.is_set() and self.pid is not None


class Supervisor:
    def __init__(self, config: Config, argv: Sequence[str], port: int) -> None:
        self.config = config
        self.port = port
        # Each worker's metrics on a private port (the last --metrics-listen wins), for the
        # supervisor's merged view.
        self.command = [
            sys.executable, "-m", "server", *argv,
            "--port", str(port), "--workers", "1", "--reuse-port", "true",
            "--metrics-listen", "127.0.0.1:0",
        ]
        self.environment = dict(os.environ)
        self.workers = [Worker(i) for i in range(config.workers)]
        self.fleet = Fleet(self.workers, lambda: self.restarts)
        self.stopping = False
        self.restarts = 0
        self.ready_line = b""  # a worker's ready line (same scheme, host and port for all)

    async def spawn(self, worker: Worker) -> None:
        worker.ready = asyncio.Event()
        worker.started = time.monotonic()
        worker.metrics_url = None
        worker.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
            env=self.environment,
        )
        worker.pump = asyncio.get_running_loop().create_task(self._pump(worker, worker.proc))
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    async def _pump(self, worker: Worker, proc: asyncio.subprocess.Process) -> None:
        """Forwards a worker's stdout, except its ready line (the supervisor prints one)."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if READY.search(line) and not worker.ready.is_set():
                self.ready_line = self.ready_line or line
                worker.ready.set()
                continue
            metrics = METRICS_LINE.search(line)
            if metrics is not None and worker.metrics_url is None:
                worker.metrics_url = metrics.group(1).decode()
                continue
            sys.stdout.buffer.write(line)
            sys.stdout.flush()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        listen = self.config.metrics_listen
        host, _, port = listen.rpartition(":") if listen else ("127.0.0.1", "", "0")
        try:
            await self.fleet.start(host.strip("[]"), int(port))
        except OSError as exc:
            raise CannotListen("--metrics-listen", host.strip("[]"), int(port), exc) from None
        assert self.fleet.address is not None
        shown = f"http://{url_host(self.fleet.address[0])}:{self.fleet.address[1]}/metrics"
        if listen:
            print(f"roomcast metrics on {shown}", flush=True)
        else:  # the public port's /metrics: each worker forwards it here
            self.environment[WORKER_OF] = shown
        for worker in self.workers:
            await self.spawn(worker)
        started = await self._wait_started(stop)
        if started:
            sys.stdout.buffer.write(self.ready_line)
            sys.stdout.flush()
            log.info("%d workers serving on port %d", len(self.workers), self.port)
            watchers = [loop.create_task(self._watch(w)) for w in self.workers]
            await stop.wait()
            log.info("stopping %d workers", len(self.workers))
        self.stopping = True
        await self._stop_all()
        await self.fleet.stop()
        if started:
            for task in watchers:
                task.cancel()
            for task in watchers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return 0 if started else 1

    async def _wait_started(self, stop: asyncio.Event) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        for worker in self.workers:
            assert worker.proc is not None
            ready = asyncio.ensure_future(worker.ready.wait())
            exited = asyncio.ensure_future(worker.proc.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                [ready, exited, stopped],
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for future in (ready, exited, stopped):
                future.cancel()
            if not worker.ready.is_set():
                log.error(
                    "worker %d did not start (exit code %s); stopping",
                    worker.index,
                    worker.proc.returncode,
                )
                return False
        return True

    async def _watch(self, worker: Worker) -> None:
        while not self.stopped():
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.stopped():
                return
            log.warning(
                "worker %d (pid %d) exited with %s; restarting it",
                worker.index,
                worker.proc.pid,
                code,
            )
            self.restarts += 1
            wait = RESTART_INTERVAL - (time.monotonic() - worker.started)
            if wait > 0:
                await asyncio.sleep(wait)
            if self.stopped():
                return
            await self.spawn(worker)

    def stopped(self) -> bool:
        return self.stopping

    async def _stop_all(self) -> None:
        running = [w.proc for w in self.workers if w.proc is not None]
        for proc in running:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        timeout = self.config.shutdown_timeout + 5.0
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in running)), timeout
            )
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    log.warning("worker pid %d did not stop; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in running))
        for worker in self.workers:
            if worker.pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker.pump, 1.0)


def supervise(config: Config, argv: Sequence[str]) -> int:
    try:
        # bound, not listening: fixes the port the workers will share with SO_REUSEPORT
        reserved = bound_socket(
            config.host, config.port, option="--host and --port", reuse_port=True, backlog=None
        )
    except CannotListen as exc:
        log.error("%s", exc)
        return 1
    with reserved:
        port = int(reserved.getsockname()[1])
        try:
            return asyncio.run(Supervisor(config, argv, port).run())
        except CannotListen as exc:
            log.error("%s", exc)
            return 1
