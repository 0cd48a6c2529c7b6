"""Usernames and room names: the defaults and the one rule every name passes.

A name comes from a client's ``join`` or from a token's claims (server/auth.py); both go through
``clean_name``, so no path lets a name through that the other would refuse.
"""

from __future__ import annotations

import re

DEFAULT_ROOM = "general"
DEFAULT_USERNAME = "Anonymous"

# C0/C1 controls, line/paragraph separators, bidi overrides and isolates, zero-width spaces, BOM:
# characters that break one-line rendering or let a name impersonate another.
_FORBIDDEN_IN_NAMES = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]"
)


def clean_name(value: str | None, default: str, max_length: int) -> str | None:
    """The name to use, or None when it is invalid (too long or has control characters).

    Missing, blank and whitespace-only names mean `default`, as in the seed; surrounding
    whitespace is trimmed.
    """
    if value is None:
        return default
    value = value.strip()
    if not value:
        return default
    if len(value) > max_length or _FORBIDDEN_IN_NAMES.search(value):
        return None
    return value
