"""Entry point: ``python -m server`` and the ``roomcast`` console script."""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Sequence

import uvloop

from . import settings as settings_module
from .listening import CannotListen
from .logs import configure as configure_logging

log = logging.getLogger("roomcast")


def raise_fd_limit() -> int:
    """Raises the soft file-descriptor limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file-descriptor limit to %d: %s", hard, exc)
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_module.load(argv)
    config = settings.config
    configure_logging(config.log_level, config.log_format)
    if config.workers > 1:
        from .supervisor import supervise  # noqa: PLC0415

        return supervise(config, sys.argv[1:] if argv is None else argv)
    from .app import serve  # noqa: PLC0415  (the supervisor does not need the server itself)

    raise_fd_limit()  # logged with the address served on, so a refused bind stays one line
    try:
        return uvloop.run(serve(settings))
    except CannotListen as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
