"""What this build is: roomcast's version, its git revision and the versions of the libraries
on its hot path (``--version``, ``roomcast_build_info``)."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

HOT_PATH_LIBRARIES = ("picows", "uvloop", "msgspec")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version("roomcast")


@functools.cache
def git_revision() -> str:
    """The short commit of the checkout this package runs from, or "unknown" (an installed
    wheel, no git)."""
    here = Path(__file__).resolve().parent
    if not any((parent / ".git").exists() for parent in (here, *here.parents)):
        return "unknown"
    try:
        done = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def library_versions() -> dict[str, str]:
    return {name: _version(name) for name in HOT_PATH_LIBRARIES}


def version_line() -> str:
    libraries = ", ".join(f"{name} {version}" for name, version in library_versions().items())
    return f"roomcast {VERSION} (git {git_revision()}; {libraries})"
