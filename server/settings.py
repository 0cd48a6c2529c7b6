"""Everything the server is configured with, loaded and checked once before anything starts.

Like uvicorn's ``Config.load()``: the options (server/config.py) and the objects derived from them
(server/security.py), built once; a bad option of either kind is one line on stderr and exit
status 2, whether the process is a single server or the ``--workers`` supervisor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .config import Config, ConfigError, exit_with, read_config
from .security import Security


@dataclass(frozen=True, slots=True)
class Settings:
    config: Config
    security: Security


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The settings; exits with status 2 and one line naming the bad option otherwise."""
    try:
        config, sources = read_config(argv, env)
        try:
            return Settings(config, Security.load(config))
        except ConfigError as exc:
            raise exc.given_as(sources) from None
    except ConfigError as exc:
        exit_with(exc)
