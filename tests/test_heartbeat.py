"""The single-timer heartbeat, driven by hand."""

from __future__ import annotations

from server.heartbeat import expire, sweep


class Conn:
    def __init__(self, heard: bool = False) -> None:
        self.heard = heard
        self.awaiting_pong = False
        self.pings = 0
        self.dropped = False

    def ping(self) -> None:
        self.pings += 1

    def ping_timed_out(self) -> None:
        self.dropped = True


def test_only_silent_connections_are_pinged() -> None:
    quiet, chatty = Conn(heard=False), Conn(heard=True)
    batch = sweep([quiet, chatty])
    assert batch == [quiet]
    assert (quiet.pings, chatty.pings) == (1, 0)
    assert chatty.heard is False, "chatty must speak again before the next sweep"


def test_a_connection_that_answers_survives_and_is_pinged_again_when_quiet() -> None:
    conn = Conn()
    batch = sweep([conn])
    conn.heard = True  # the PONG
    assert expire(batch) == 0 and not conn.dropped
    assert sweep([conn]) == [conn] and conn.pings == 2


def test_a_connection_that_never_answers_is_dropped_once() -> None:
    conn = Conn()
    batch = sweep([conn])
    assert sweep([conn]) == [], "not pinged twice while a ping is outstanding"
    assert expire(batch) == 1 and conn.dropped
