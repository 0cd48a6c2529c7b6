"""The chat core without sockets: members write into lists, the test plays the event loop."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.broker import LocalBroker
from server.config import Config
from server.core import ChatCore, Member, Room
from server.history import History
from server.protocol import CloseCode
from tests.frames import server_messages


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Client:
    """A member whose writes are parsed back into messages, as a client would see them."""

    def __init__(self, core: ChatCore) -> None:
        self.core = core
        self.writes: list[bytes] = []
        self.member = Member(self.writes.append)

    def send(self, message: Any) -> CloseCode | None:
        raw = message if isinstance(message, bytes) else json.dumps(message).encode()
        return self.core.handle_text(self.member, raw)

    def join(self, username: str, room: str = "general") -> None:
        self.send({"type": "join", "username": username, "room": room})

    def chat(self, text: str) -> None:
        self.send({"type": "chat", "text": text})

    def messages(self) -> list[Any]:
        """Every message received so far, decoded from the unmasked frames; clears the buffer."""
        data = b"".join(self.writes)
        self.writes.clear()
        return server_messages(data)


class Epochs:
    """Epochs e1, e2, ... in the order streams are made: tests can name them."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self) -> str:
        self.made += 1
        return f"e{self.made}"


class Harness:
    def __init__(self, **overrides: Any) -> None:
        self.scheduled: list[Callable[[], None]] = []
        self.clock = Clock()
        config = Config(**overrides)
        self.core = ChatCore(
            config,
            lambda: self.scheduled.append(self.core.flush),
            clock=self.clock,
            wall_ms=lambda: 1_700_000_000_000,
        )
        self.history = History.from_config(config, clock=self.clock, epochs=Epochs())
        self.core.use_broker(LocalBroker(self.core, self.history))

    def client(self) -> Client:
        return Client(self.core)

    def tick(self) -> None:
        """End of an event-loop tick: run the one scheduled flush."""
        pending, self.scheduled[:] = list(self.scheduled), []
        for callback in pending:
            callback()


@pytest.fixture
def hub() -> Harness:
    return Harness()


def texts(messages: list[Any]) -> list[str]:
    return [m.get("text") for m in messages]


# ---- join / chat / leave as the seed defines them ------------------------------------------------


def test_join_gives_the_joiner_the_member_list_and_others_a_notice(hub: Harness) -> None:
    alice, bob = hub.client(), hub.client()
    alice.join("alice")
    hub.tick()
    assert alice.messages() == [
        {
            "type": "system",
            "text": "alice joined #general",
            "event": "join",
            "room": "general",
            "username": "alice",
            "count": 1,
            "timestamp": 1_700_000_000_000,
            "users": ["alice"],
            "epoch": "e1",
            "seq": 0,
            "max_text_length": 4000,
        }
    ]
    alice.chat("hi")
    bob.join("bob")
    hub.tick()
    welcome = bob.messages()
    assert welcome[0]["users"] == ["alice", "bob"] and welcome[0]["count"] == 2
    assert (welcome[0]["epoch"], welcome[0]["seq"]) == ("e1", 1)  # the room's, at its join
    [_, notice] = alice.messages()
    own = ("users", "epoch", "seq", "max_text_length")  # only the joiner's copy carries these
    assert notice == {k: v for k, v in welcome[0].items() if k not in own}


def test_defaults_match_the_seed(hub: Harness) -> None:
    anon = hub.client()
    anon.send({"type": "join"})
    hub.tick()
    [welcome] = anon.messages()
    assert welcome["text"] == "Anonymous joined #general"
    other = hub.client()
    other.send({"type": "join", "room": "", "username": None, "extra": 1})
    hub.tick()
    assert other.messages()[0]["text"] == "Anonymous joined #general"


def test_chat_reaches_every_member_including_the_sender_and_no_other_room(hub: Harness) -> None:
    alice, bob, carol = hub.client(), hub.client(), hub.client()
    alice.join("alice")
    bob.join("bob")
    carol.join("carol", room="dev")
    hub.tick()
    for c in (alice, bob, carol):
        c.messages()
    alice.chat("hello")
    hub.tick()
    expected = {
        "type": "chat",
        "username": "alice",
        "text": "hello",
        "timestamp": 1_700_000_000_000,
        "seq": 1,
    }
    assert alice.messages() == [expected]
    assert bob.messages() == [expected]
    assert carol.messages() == []


def test_leave_notifies_the_rest_and_stops_delivery(hub: Harness) -> None:
    alice, bob = hub.client(), hub.client()
    alice.join("alice")
    bob.join("bob")
    hub.tick()
    alice.messages()
    bob.messages()
    bob.send({"type": "leave"})
    hub.tick()
    [notice] = alice.messages()
    assert notice["text"] == "bob left #general" and notice["event"] == "leave"
    assert notice["count"] == 1
    alice.chat("anyone?")
    hub.tick()
    assert bob.messages() == []


def test_join_while_in_a_room_leaves_it_first(hub: Harness) -> None:
    alice, bob = hub.client(), hub.client()
    alice.join("alice")
    bob.join("bob")
    hub.tick()
    alice.messages()
    bob.messages()
    bob.join("bob", room="dev")
    hub.tick()
    assert texts(alice.messages()) == ["bob left #general"]
    assert texts(bob.messages()) == ["bob joined #dev"]
    assert set(hub.core.rooms) == {"general", "dev"}


def test_disconnect_announces_the_leave_and_empty_rooms_disappear(hub: Harness) -> None:
    alice, bob = hub.client(), hub.client()
    alice.join("alice", "r")
    bob.join("bob", "r")
    hub.tick()
    alice.messages()
    hub.core.disconnect(bob.member)
    hub.tick()
    assert texts(alice.messages()) == ["bob left #r"]
    hub.core.disconnect(alice.member)
    assert "r" not in hub.core.rooms


# ---- presence costs O(1) per member per join ---------------------------------------------------


def test_a_join_costs_other_members_a_constant_size_notice() -> None:
    hub = Harness(max_users_list=5)
    clients = [hub.client() for _ in range(50)]
    sizes = []
    first = clients[0]
    for i, c in enumerate(clients):
        c.join(f"user{i:03d}")
        hub.tick()
        if i:
            sizes.append(sum(map(len, first.writes)))
        first.writes.clear()
    # the notice for the 2nd member and for the 50th member differ only in the digits of `count`
    assert max(sizes) - min(sizes) <= 2
    last = clients[-1].messages()[0]
    assert last["count"] == 50 and len(last["users"]) == 5


# ---- coalescing and ordering -------------------------------------------------------------------


def test_messages_in_one_tick_are_one_write_per_member(hub: Harness) -> None:
    members = [hub.client() for _ in range(3)]
    for i, c in enumerate(members):
        c.join(f"u{i}")
    hub.tick()
    for c in members:
        c.messages()
    for n in range(5):
        members[0].chat(f"m{n}")
    assert all(c.writes == [] for c in members), "nothing is written before the tick ends"
    hub.tick()
    for c in members:
        assert len(c.writes) == 1
        assert texts(c.messages()) == [f"m{n}" for n in range(5)]
    blobs = {id(c.writes) for c in members}
    assert len(blobs) == 3
    assert hub.core.counters.deliveries >= 15 and hub.core.counters.coalesced_frames >= 12


def test_every_member_gets_the_same_bytes_object(hub: Harness) -> None:
    a, b = hub.client(), hub.client()
    a.join("a")
    b.join("b")
    hub.tick()
    a.writes.clear()
    b.writes.clear()
    a.chat("x")
    hub.tick()
    assert a.writes[0] is b.writes[0]


def test_a_joiner_gets_nothing_queued_before_it_joined(hub: Harness) -> None:
    alice, bob = hub.client(), hub.client()
    alice.join("alice")
    hub.tick()
    alice.messages()
    alice.chat("before bob")
    bob.join("bob")
    alice.chat("after bob")
    hub.tick()
    assert texts(alice.messages()) == ["before bob", "bob joined #general", "after bob"]
    assert texts(bob.messages()) == ["bob joined #general", "after bob"]


def test_a_leaver_gets_what_was_queued_before_it_left_and_nothing_after(hub: Harness) -> None:
    alice, bob = hub.client(), hub.client()
    alice.join("alice")
    bob.join("bob")
    hub.tick()
    alice.messages()
    bob.messages()
    alice.chat("one")
    bob.join("bob", room="elsewhere")
    alice.chat("two")
    hub.tick()
    assert texts(bob.messages()) == ["one", "bob joined #elsewhere"]
    assert texts(alice.messages()) == ["one", "bob left #general", "two"]


def test_an_error_is_ordered_after_the_room_messages_before_it(hub: Harness) -> None:
    alice, bob = hub.client(), hub.client()
    alice.join("alice")
    bob.join("bob")
    hub.tick()
    alice.messages()
    bob.messages()
    bob.chat("first")
    bob.send(b"not json")
    bob.chat("second")
    hub.tick()
    got = bob.messages()
    assert [m["type"] for m in got] == ["chat", "error", "chat"]
    assert texts(alice.messages()) == ["first", "second"]


# ---- bad input: an error for the sender, nothing for anyone else, connection usable ----------

BAD_INPUTS: list[tuple[bytes, str]] = [
    (b"{nope", "invalid_json"),
    (b"[1, 2]", "invalid_message"),
    (b'"chat"', "invalid_message"),
    (b"42", "invalid_message"),
    (b'{"type": "shout", "text": "x"}', "unknown_type"),
    (b'{"text": "no type"}', "unknown_type"),
    (b'{"type": 7}', "unknown_type"),
    (b'{"type": "chat", "text": 5}', "invalid_message"),
    (b'{"type": "chat"}', "invalid_message"),
    (b'{"type": "chat", "text": ""}', "empty_text"),
    (b'{"type": "chat", "text": "   "}', "empty_text"),
    (b'{"type": "chat", "text": "' + b"x" * 4001 + b'"}', "text_too_long"),
    (b'{"type": "join", "username": "' + b"u" * 33 + b'"}', "invalid_username"),
    (b'{"type": "join", "username": "bad\\u0007name"}', "invalid_username"),
    (b'{"type": "join", "username": "evil\\u202etxt"}', "invalid_username"),
    (b'{"type": "join", "room": "' + b"r" * 65 + b'"}', "invalid_room"),
    (b'{"type": "join", "room": "a\\nb"}', "invalid_room"),
    (b'{"type": "join", "username": "ali\\u200dce"}', "invalid_username"),
    (b'{"type": "join", "room": "general\\u3164"}', "invalid_room"),
    (b'{"type": "join", "username": ["x"]}', "invalid_message"),
    # Decode failures of every kind are the peer's: an error, never a 1011 (issue 12, defect 3).
    (b'{"type":"chat","text":"x","a":' + b"[" * 997 + b"]" * 997 + b"}", "invalid_message"),
    (b'{"type":"chat","text":"x","a":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}",
     "invalid_message"),
    (b'{"type":"chat","text":1e400}', "invalid_message"),
    (b'{"type":"chat","text":' + b"9" * 5000 + b"}", "invalid_message"),
    (b'{"type":"chat","text":NaN}', "invalid_json"),
    (b'{"type":"chat","text":"\\ud800"}', "invalid_json"),
]


@pytest.mark.parametrize(("raw", "code"), BAD_INPUTS)
def test_bad_input_gets_a_coded_error_and_changes_nothing(
    hub: Harness, raw: bytes, code: str
) -> None:
    sender, witness = hub.client(), hub.client()
    sender.join("sender")
    witness.join("witness")
    hub.tick()
    sender.messages()
    witness.messages()
    assert sender.send(raw) is None
    hub.tick()
    [error] = sender.messages()
    assert error["type"] == "error" and error["code"] == code and error["text"]
    assert witness.messages() == []
    assert sender.member.room is not None and sender.member.room.name == "general"
    assert sender.member.name == "sender"
    sender.chat("still here")
    hub.tick()
    assert texts(witness.messages()) == ["still here"]


def test_chat_before_join_is_refused(hub: Harness) -> None:
    c = hub.client()
    c.chat("hi")
    assert c.messages() == [
        {"type": "error", "code": "not_in_room", "text": "Join a room first"}
    ]


def test_binary_is_refused_with_an_error(hub: Harness) -> None:
    c = hub.client()
    hub.core.handle_binary(c.member)
    assert c.messages()[0]["code"] == "binary_unsupported"


def test_invalid_utf8_asks_for_close_1007(hub: Harness) -> None:
    c = hub.client()
    assert c.send(b'{"type": "chat", "text": "\xff"}') == CloseCode.INVALID_TEXT
    assert c.send(b"\xc3\x28") == CloseCode.INVALID_TEXT
    # msgspec skips unknown fields unread; their bytes must be UTF-8 too (RFC 6455 section 8.1)
    assert c.send(b'{"type": "chat", "text": "ok", "x": "\xff"}') == CloseCode.INVALID_TEXT
    assert c.messages() == []


def test_names_are_trimmed_and_unicode_is_fine(hub: Harness) -> None:
    c = hub.client()
    c.join("  Zoë 🙂 ", "café")
    assert c.messages()[0]["text"] == "Zoë 🙂 joined #café"


def test_limits_come_from_the_config() -> None:
    hub = Harness(max_text_length=3, max_username_length=2, max_room_length=1)
    c = hub.client()
    c.join("abc")
    assert c.messages()[0]["code"] == "invalid_username"
    c.join("ab", "xy")
    assert c.messages()[0]["code"] == "invalid_room"
    c.join("ab", "x")
    c.messages()
    c.chat("abcd")
    assert c.messages()[0]["code"] == "text_too_long"


# ---- rate limit: the seed's sliding window ----------------------------------------------------


def test_rate_limit_refuses_the_burst_without_disconnecting() -> None:
    hub = Harness(rate_limit=3, rate_window=10.0)
    sender, witness = hub.client(), hub.client()
    sender.join("s")
    witness.join("w")
    hub.tick()
    sender.messages()
    witness.messages()
    for n in range(5):
        sender.chat(f"m{n}")
        hub.clock.now += 1
    hub.tick()
    got = sender.messages()
    assert texts([m for m in got if m["type"] == "chat"]) == ["m0", "m1", "m2"]
    errors = [m for m in got if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["rate_limited", "rate_limited"]
    assert errors[0]["text"] == "Slow down! Max 3 msgs/10s"
    assert errors[0]["retry_after_ms"] == 7000
    assert texts(witness.messages()) == ["m0", "m1", "m2"]
    hub.clock.now = 1010.0  # the first message has left the window
    sender.chat("again")
    hub.tick()
    assert texts(witness.messages()) == ["again"]
    assert hub.core.counters.rate_limited == 2


def test_rate_limit_zero_disables_it() -> None:
    hub = Harness(rate_limit=0)
    a, b = hub.client(), hub.client()
    a.join("a")
    b.join("b")
    hub.tick()
    b.messages()
    for n in range(100):
        a.chat(str(n))
    hub.tick()
    assert len(b.messages()) == 100


# ---- join and leave rate limit: each sends a notice to a whole room -------------------------


def _notices(messages: list[Any]) -> list[Any]:
    return [m for m in messages if m["type"] == "system" and m.get("event") in ("join", "leave")]


def test_join_rate_limit_refuses_joins_and_leaves_and_changes_nothing() -> None:
    hub = Harness(join_rate_limit=3, rate_window=10.0, rate_limit=0)
    spammer, witness = hub.client(), hub.client()
    witness.join("witness")
    hub.tick()
    witness.messages()
    spammer.join("spam1")  # 1
    hub.clock.now += 1
    spammer.join("spam2")  # 2: leaves, then joins again
    hub.clock.now += 1
    spammer.send({"type": "leave"})  # 3
    hub.clock.now += 1
    spammer.join("spam3")  # 4th in 10 s: refused
    hub.tick()
    assert texts(_notices(witness.messages())) == [
        "spam1 joined #general", "spam1 left #general", "spam2 joined #general",
        "spam2 left #general",
    ]
    got = spammer.messages()
    [error] = [m for m in got if m["type"] == "error"]
    assert error == {
        "type": "error", "code": "rate_limited", "retry_after_ms": 7000,
        "text": "Slow down! Max 3 joins and leaves/10s", "refused": "join",
    }
    assert spammer.member.room is None and spammer.member.name == "spam2"
    hub.clock.now = 1010.0  # the first join has left the window
    spammer.join("spam3")
    hub.tick()
    assert texts(_notices(witness.messages())) == ["spam3 joined #general"]
    assert texts(spammer.messages()) == ["spam3 joined #general"]
    hub.clock.now += 0.5
    spammer.join("spam4", room="elsewhere")  # 2 and 3 are still in the window: refused
    spammer.send({"type": "leave"})  # refused too: it stays, nobody hears a thing
    hub.tick()
    assert [(m["code"], m["refused"]) for m in spammer.messages()] == [
        ("rate_limited", "join"), ("rate_limited", "leave"),
    ]
    assert hub.core.counters.presence_rate_limited == 3 and hub.core.counters.rate_limited == 0
    assert witness.messages() == []
    # declared: mypy would keep it narrowed to None from before the joins above
    room: Room | None = spammer.member.room
    assert room is not None and room.name == "general" and spammer.member.name == "spam3"
    assert set(hub.core.rooms) == {"general"}
    spammer.chat("chats are not joins")  # and --rate-limit 0 leaves chats unlimited
    hub.tick()
    assert texts(witness.messages()) == ["chats are not joins"]


def test_a_leave_outside_a_room_costs_nothing() -> None:
    hub = Harness(join_rate_limit=1)
    c = hub.client()
    for _ in range(5):
        c.send({"type": "leave"})
    c.join("c")
    hub.tick()
    assert texts(c.messages()) == ["c joined #general"]


def test_a_refused_join_for_another_reason_costs_nothing() -> None:
    hub = Harness(join_rate_limit=1)
    c = hub.client()
    for _ in range(5):
        c.join("bad\u0007name")
    assert [m["code"] for m in c.messages()] == ["invalid_username"] * 5
    c.join("c")
    hub.tick()
    assert texts(c.messages()) == ["c joined #general"]


def test_join_rate_limit_zero_disables_it_and_rate_limit_zero_does_not() -> None:
    off = Harness(join_rate_limit=0)
    witness, spammer = off.client(), off.client()
    witness.join("w")
    off.tick()
    witness.messages()
    for n in range(100):
        spammer.join(f"BUY PILLS #{n}")
    off.tick()
    assert len(_notices(witness.messages())) == 199  # the unbounded flood of issue 12 (defect 5)
    chats_off = Harness(rate_limit=0)  # the default join limit (10) stays on
    witness, spammer = chats_off.client(), chats_off.client()
    witness.join("w")
    chats_off.tick()
    witness.messages()
    for n in range(100):
        spammer.join(f"BUY PILLS #{n}")
    chats_off.tick()
    assert len(_notices(witness.messages())) == 19  # 10 joins: 1 + 9 re-joins of 2 notices


N_JOINS, WINDOW = 3, 10.0
attacker_moves = st.lists(
    st.one_of(
        st.tuples(
            st.just("join"),
            st.sampled_from(["general", "other", "", None]),
            st.sampled_from(["a", "b", "", None, "bad\u200dname", "x" * 40]),
        ),
        st.tuples(st.just("leave")),
        st.tuples(st.just("chat")),
        st.tuples(st.just("garbage")),
        st.tuples(st.just("wait"), st.sampled_from([0.0, 0.001, 1.0, 3.3, WINDOW - 0.001, WINDOW])),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(attacker_moves)
def test_no_connection_can_make_a_room_hear_more_than_2n_notices_per_window(
    moves: list[Any],
) -> None:
    """Whatever one connection sends, the members of a room get at most 2 x --join-rate-limit
    notices from it in any --rate-window (a join while in a room announces a leave and a join),
    plus one leave when it disconnects. A refused join or leave changes nothing."""
    hub = Harness(join_rate_limit=N_JOINS, rate_window=WINDOW, rate_limit=0)
    witness, attacker = hub.client(), hub.client()
    witness.join("witness")
    hub.tick()
    witness.messages()
    heard: list[float] = []
    for move in moves:
        before = (attacker.member.room, attacker.member.name)
        if move[0] == "join":
            attacker.send({"type": "join", "room": move[1], "username": move[2]})
        elif move[0] == "leave":
            attacker.send({"type": "leave"})
        elif move[0] == "chat":
            attacker.chat("hi")
        elif move[0] == "garbage":
            attacker.send(b"{nope")
        else:
            hub.clock.now += move[1]
        hub.tick()
        notices = _notices(witness.messages())
        heard += [hub.clock.now] * len(notices)
        if any(m.get("code") == "rate_limited" for m in attacker.messages()):
            assert notices == [] and (attacker.member.room, attacker.member.name) == before
    for start in heard:
        in_window = [t for t in heard if start <= t < start + WINDOW]
        assert len(in_window) <= 2 * N_JOINS
    hub.core.disconnect(attacker.member)
    hub.tick()
    assert len(_notices(witness.messages())) <= 1


# ---- typing (opt-in, throttled, never stored) ----------------------------------------------


def test_typing_reaches_only_members_that_asked_and_never_the_sender(hub: Harness) -> None:
    old, new, typer = hub.client(), hub.client(), hub.client()
    old.join("old")  # a seed client: its join does not ask for typing events
    new.send({"type": "join", "username": "new", "typing": True})
    typer.send({"type": "join", "username": "typer", "typing": True})
    hub.tick()
    for client in (old, new, typer):
        client.messages()
    typer.send({"type": "typing"})
    hub.tick()
    assert new.messages() == [{"type": "typing", "room": "general", "username": "typer"}]
    assert old.messages() == [] and typer.messages() == []  # old clients see exactly today's


def test_typing_is_throttled_per_sender_and_not_a_chat(hub: Harness) -> None:
    watcher, typer = hub.client(), hub.client()
    watcher.send({"type": "join", "username": "w", "typing": True})
    typer.join("t")
    hub.tick()
    watcher.messages()
    typer.messages()
    for _ in range(5):
        typer.send({"type": "typing"})
    hub.clock.now += 1.9
    typer.send({"type": "typing"})
    hub.tick()
    assert len(watcher.messages()) == 1  # one per 2 s goes out; the rest are dropped
    hub.clock.now += 0.2
    typer.send({"type": "typing"})
    hub.tick()
    assert [m["type"] for m in watcher.messages()] == ["typing"]
    assert hub.core.counters.chats == 0 and typer.messages() == []


def test_a_refused_join_does_not_change_the_typing_subscription(hub: Harness) -> None:
    watcher, typer = hub.client(), hub.client()
    watcher.send({"type": "join", "username": "w", "typing": True})
    typer.join("t")
    hub.tick()
    watcher.messages()
    for refused in ({"username": "bad\u200bname"}, {"username": "w", "room": "r\u200b"}):
        watcher.send({"type": "join", "typing": False, **refused})
        hub.tick()
        assert [m["type"] for m in watcher.messages()] == ["error"]
    hub.clock.now += 5
    typer.send({"type": "typing"})
    hub.tick()
    assert watcher.messages() == [{"type": "typing", "room": "general", "username": "t"}]


def test_typing_outside_a_room_is_an_error(hub: Harness) -> None:
    lone = hub.client()
    lone.send({"type": "typing"})
    assert [m["code"] for m in lone.messages()] == ["not_in_room"]


def test_a_refused_chat_with_an_id_names_it_in_the_error(hub: Harness) -> None:
    hub = Harness(rate_limit=1)
    client = hub.client()
    client.send({"type": "chat", "text": "x", "id": "c1"})
    client.join("ann")
    hub.tick()
    client.messages()
    client.send({"type": "chat", "text": "", "id": "c2"})
    client.send({"type": "chat", "text": "ok", "id": "c3"})
    client.send({"type": "chat", "text": "too fast", "id": "c4"})
    client.send({"type": "chat", "text": "no id either"})
    client.send({"type": "chat", "text": 5, "id": "c5"})
    hub.tick()
    errors = [m for m in client.messages() if m["type"] == "error"]
    assert [(e["code"], e.get("id")) for e in errors] == [
        ("empty_text", "c2"), ("rate_limited", "c4"), ("rate_limited", None),
        ("invalid_message", "c5"),
    ]


def test_each_room_flush_reports_its_size_and_the_wait_of_its_first_frame() -> None:
    from server.delivery import Delivery, Room  # noqa: PLC0415
    from server.state import Counters  # noqa: PLC0415

    clock = Clock()
    observed: list[tuple[int, float]] = []
    delivery = Delivery(Counters(), lambda: None, clock=clock,
                        delayed=lambda size, seconds: observed.append((size, seconds)))
    small, large = Room("small"), Room("large")
    for room, size in ((small, 3), (large, 150)):
        for _ in range(size):
            room.arriving += 1
            delivery.admit(room, Member(bytearray().extend), None)
    delivery.deliver(small, b"first")
    clock.now += 0.004
    delivery.deliver(small, b"second")  # the wait counts from the first frame of the tick
    delivery.deliver(large, b"only")
    clock.now += 0.001
    delivery.flush()
    # pytest.approx() compares equal to a float, which mypy's strict equality does not know
    assert observed == [  # type: ignore[comparison-overlap]
        (3, pytest.approx(0.005)), (150, pytest.approx(0.001))
    ]
    delivery.flush()  # nothing queued: nothing to report
    assert len(observed) == 2
