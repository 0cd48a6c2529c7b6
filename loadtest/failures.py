"""The failure causes of the resume and storm checks: the exceptions whose ``repr`` is a failed
request's error text in Locust's reports (the Failures tab, ``*_failures.csv``), e.g.
``ResumeFailed('not recovered: history disabled')``.

The connection's own causes (``ConnectFailed``, ``ConnectionClosed``...) are loadtest/wsconn.py's.
No gevent and no Locust here.
"""

from __future__ import annotations


class ResumeFailed(Exception):
    """A join with ``since`` whose answer was not ``recovered: true`` (the text says why)."""


class SequenceGap(Exception):
    pass


class DuplicateChat(Exception):
    pass


class MismatchedChat(Exception):
    pass


class StormNotLossless(Exception):
    """A storm round in which some client did not reconnect, resume recovered and get live chats
    again, or some chat went missing, came twice or came out of place (the text says which)."""
