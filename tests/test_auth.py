"""JWT authentication: the pure verifier, then every refusal over a real socket."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.auth import (
    MAX_NUMERIC_DATE,
    SUBPROTOCOL,
    AuthError,
    Verifier,
    extract_token,
    identity_from_claims,
    parse_algorithms,
)
from server.settings import load as load_settings
from tests.conftest import Launch
from tests.handshake import upgrade
from tests.rawws import RawClient
from tests.support import ServerProcess

SECRET = "test-secret-that-is-long-enough-for-hs256!"
AUDIENCE = "roomcast-test"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand, so that tests can make tokens PyJWT refuses to make."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{_b64(signature)}"


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def claims(**extra: Any) -> dict[str, Any]:
    """Valid claims; tokens built from them at collection time must outlive a long suite."""
    now = int(time.time())
    return {"sub": "user-1", "aud": AUDIENCE, "iat": now, "exp": now + 86400, **extra}


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


# ---- the pure parts ----------------------------------------------------------------------------


def test_the_token_is_found_in_each_documented_place() -> None:
    bearer = extract_token("/", {"authorization": "Bearer abc.def.ghi"})
    assert bearer is not None and (bearer.token, bearer.subprotocol) == ("abc.def.ghi", None)
    offered = extract_token("/", {"sec-websocket-protocol": f"{SUBPROTOCOL}, abc.def.ghi"})
    assert offered is not None and (offered.token, offered.subprotocol) == (
        "abc.def.ghi",
        SUBPROTOCOL,
    )
    query = extract_token("/ws?room=x&token=abc.def.ghi", {})
    assert query is not None and (query.token, query.subprotocol) == ("abc.def.ghi", None)
    assert extract_token("/", {}) is None
    assert extract_token("/?token=", {"authorization": "Basic dXNlcjpwYXNz"}) is None
    # a subprotocol list without ours is not a token
    assert extract_token("/", {"sec-websocket-protocol": "chat, abc.def.ghi"}) is None


@pytest.mark.parametrize(
    ("target", "token"),
    [
        ("//[x", None),  # urlsplit: "Invalid IPv6 URL"
        ("/?" + "&".join(f"a{i}=1" for i in range(40)) + "&token=abc", "abc"),  # parse_qs: >32
        ("/?token=a%2Bb+c&token=second", "a+b c"),  # the first one, decoded as a form field
        ("/?tok%65n=abc", "abc"),
        ("/?token=%ff", "\ufffd"),  # undecodable bytes are replaced, never an exception
        ("/?token", None),
        ("/#token=abc", None),
    ],
)
def test_any_query_a_client_sends_gives_a_token_or_none(target: str, token: str | None) -> None:
    presented = extract_token(target, {})
    assert (presented.token if presented else None) == token


def test_valid_tokens_give_name_rooms_and_expiry() -> None:
    verifier = Verifier(secret=SECRET, audience=AUDIENCE)
    identity = verifier.verify(hs256(claims(name="Alice", rooms=["lobby", "team-*"])))
    assert identity.name == "Alice"
    assert identity.rooms is not None
    assert "lobby" in identity.rooms and "team-red" in identity.rooms
    assert "general" not in identity.rooms and "lobby2" not in identity.rooms
    assert identity.expires_at is not None and identity.expires_at > time.time()
    assert verifier.verify(hs256(claims())).name == "user-1"  # no name: sub
    assert verifier.verify(hs256(claims())).rooms is None  # no rooms claim: every room


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not-a-token", "malformed token"),
        (hs256(claims(), secret="some-other-secret-of-enough-length!!"), "bad token signature"),
        (forge({"alg": "none", "typ": "JWT"}, claims(), None), "token algorithm not allowed"),
        (forge({"alg": "HS512", "typ": "JWT"}, claims(), SECRET.encode()), "algorithm not allowed"),
        (hs256(claims(exp=int(time.time()) - 3600)), "token expired"),
        # built at collection time: far enough in the future for a long suite
        (hs256(claims(nbf=int(time.time()) + 3600)), "token not yet valid"),
        (hs256(claims(aud="someone-else")), "wrong token audience"),
        (hs256({k: v for k, v in claims().items() if k != "aud"}), "token lacks aud"),
        (hs256({k: v for k, v in claims().items() if k != "sub"}), "token has no name or sub"),
        (hs256(claims(name="x" * 33)), "token name is too long"),
        (hs256(claims(name="evil\u202ename")), "control or invisible characters"),
        (hs256(claims(name="ali\u200dce")), "control or invisible characters"),  # joiner
        (hs256(claims(name="\u3164")), "control or invisible characters"),  # Hangul filler
        (hs256(claims(sub="bob\U000e0041")), "control or invisible characters"),  # a tag
        (hs256(claims(rooms=[1, 2])), "rooms claim"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token: str, reason: str) -> None:
    verifier = Verifier(secret=SECRET, audience=AUDIENCE)
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    assert reason in caught.value.reason


def test_leeway_tolerates_small_clock_skew() -> None:
    verifier = Verifier(secret=SECRET, audience=AUDIENCE, leeway=30)
    assert verifier.verify(hs256(claims(exp=int(time.time()) - 5))).name == "user-1"
    assert verifier.verify(hs256(claims(nbf=int(time.time()) + 5))).name == "user-1"


def test_issuer_is_checked_when_configured() -> None:
    verifier = Verifier(secret=SECRET, audience=AUDIENCE, issuer="https://issuer.test")
    assert verifier.verify(hs256(claims(iss="https://issuer.test"))).name == "user-1"
    with pytest.raises(AuthError, match="issuer"):
        verifier.verify(hs256(claims(iss="https://evil.test")))


def test_hs_rs_confusion_is_refused(rsa_keys: tuple[bytes, bytes]) -> None:
    private, public = rsa_keys
    rs = jwt.encode(claims(), private, algorithm="RS256")
    # HS256 "signed" with the public key as the HMAC secret: the classic confusion attack
    confused = forge({"alg": "HS256", "typ": "JWT"}, claims(), public)
    only_rsa = Verifier(public_key=public.decode(), audience=AUDIENCE)
    assert only_rsa.verify(rs).name == "user-1"
    with pytest.raises(AuthError, match="algorithm not allowed"):
        only_rsa.verify(confused)
    # even with both kinds of keys configured, an HMAC token is checked against the secret only
    both = Verifier(
        secret=SECRET, public_key=public.decode(), algorithms=("HS256", "RS256"), audience=AUDIENCE
    )
    assert both.verify(rs).name == "user-1"
    with pytest.raises(AuthError, match="bad token signature"):
        both.verify(confused)


def test_other_asymmetric_keys_work() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = Verifier(public_key=public.decode(), audience=AUDIENCE)
    assert verifier.verify(jwt.encode(claims(name="ec"), key, algorithm="ES256")).name == "ec"


def test_the_algorithm_allowlist_is_validated() -> None:
    assert parse_algorithms("", has_secret=True, has_public_key=False) == ("HS256",)
    assert "RS256" in parse_algorithms("", has_secret=False, has_public_key=True)
    assert parse_algorithms("HS256, HS512", has_secret=True, has_public_key=False) == (
        "HS256",
        "HS512",
    )
    for bad, message in [
        ("none", "never"),
        ("NONE", "never"),
        ("RS256", "needs --jwt-public-key"),
        ("MD5", "unknown"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_algorithms(bad, has_secret=True, has_public_key=False)


# ---- exp, nbf and iat: numbers in a sane range, enforced whatever PyJWT thinks of them -------

NOT_TIMES: list[Any] = [
    "1795000000",  # PyJWT's int() accepts it; the identity ignored it (issue 12, defect 7)
    " 1795000000 ",
    10**400,  # int too large to convert to float: a 500 (defect 6)
    float("inf"),  # json.dumps writes Infinity, and PyJWT's json.loads reads it back
    float("-inf"),
    float("nan"),
    True,  # a bool is an int to Python, not a number to JSON
    False,
    None,
    -1,
    MAX_NUMERIC_DATE + 1,
    [1795000000],
    {"seconds": 1795000000},
]


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", NOT_TIMES, ids=lambda value: repr(value)[:24])
def test_a_time_claim_that_is_not_a_sane_number_is_refused(claim: str, value: Any) -> None:
    verifier = Verifier(secret=SECRET, audience=AUDIENCE)
    with pytest.raises(AuthError) as caught:
        verifier.verify(hs256(claims(**{claim: value})))
    assert caught.value.reason == f"token {claim} must be a number of seconds from 1970 to 9999"


def test_times_are_enforced_with_the_leeway_by_our_clock() -> None:
    verifier = Verifier(secret=SECRET, audience=AUDIENCE, leeway=5, clock=lambda: 1_000_000.0)
    base = {"sub": "u", "aud": AUDIENCE}
    assert verifier.verify(hs256({**base, "exp": 999_995.5})).expires_at == 999_995.5
    for exp in (999_995, 999_000, 0):
        with pytest.raises(AuthError, match="token expired"):
            verifier.verify(hs256({**base, "exp": exp}))
    assert verifier.verify(hs256({**base, "nbf": 1_000_005, "iat": 1_000_005.0})).name == "u"
    for claim in ("nbf", "iat"):
        with pytest.raises(AuthError, match="token not yet valid"):
            verifier.verify(hs256({**base, claim: 1_000_005.001}))
    far = verifier.verify(hs256({**base, "exp": MAX_NUMERIC_DATE, "iat": 0, "nbf": 0}))
    assert far.expires_at == float(MAX_NUMERIC_DATE)


def test_identity_from_claims_refuses_an_exp_it_cannot_enforce() -> None:
    assert identity_from_claims({"sub": "a", "exp": 17.5}, 32).expires_at == 17.5
    assert identity_from_claims({"sub": "a"}, 32).expires_at is None
    with pytest.raises(AuthError, match="token exp"):
        identity_from_claims({"sub": "a", "exp": "17"}, 32)


claim_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**53, MAX_NUMERIC_DATE, MAX_NUMERIC_DATE + 1])
    | st.floats()  # NaN and the infinities included
    | st.text(max_size=20)
    | st.integers(0, 2**40).map(str),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
claim_names = st.sampled_from(
    ["exp", "nbf", "iat", "name", "sub", "aud", "iss", "rooms", "jti", "x"]
)
header_extras = st.dictionaries(
    st.sampled_from(["typ", "kid", "crit", "b64", "cty", "jku", "zip"]), claim_values, max_size=3
)


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(claim_names, claim_values, max_size=7), header_extras)
def test_verify_raises_only_auth_error_for_any_claims(
    payload: dict[str, Any], header: dict[str, Any]
) -> None:
    """Signed with the right key (forged by hand: PyJWT's encode refuses some of these)."""
    verifier = Verifier(secret=SECRET, leeway=5, clock=lambda: 1_800_000_000.0)
    payload = {"sub": "user-1", **payload}  # so that many tokens pass and their identity is checked
    token = forge({"alg": "HS256", **header}, payload, SECRET.encode())
    try:
        identity = verifier.verify(token)
    except AuthError as refusal:
        assert refusal.reason
        return
    for claim in ("exp", "nbf", "iat"):
        if claim in payload:
            value = payload[claim]
            assert type(value) in (int, float) and 0 <= value <= MAX_NUMERIC_DATE, (claim, value)
    if "exp" in payload:
        assert identity.expires_at == float(payload["exp"])
        assert identity.expires_at > 1_800_000_000.0 - 5
    else:
        assert identity.expires_at is None


def test_a_single_room_string_claim_is_accepted() -> None:
    identity = identity_from_claims({"sub": "bob", "rooms": "lobby"}, 32)
    assert identity.rooms is not None and "lobby" in identity.rooms
    assert "general" not in identity.rooms


# ---- over real sockets -------------------------------------------------------------------------


async def refused(server: ServerProcess, path: str = "/", **headers: str) -> tuple[int, str]:
    """The status and body of a refused upgrade."""
    answer = await upgrade(server.host, server.port, path, headers)
    assert answer.status != 101, answer
    if answer.status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer"), answer
    return answer.status, answer.body.decode()


async def join(client: RawClient, room: str = "general", username: str = "x") -> dict[str, Any]:
    client.send_json({"type": "join", "room": room, "username": username})
    message: dict[str, Any] = await client.recv_json()
    return message


async def healthy(server: ServerProcess, token: str) -> None:
    """A well-behaved client can still connect, join and chat."""
    client = await RawClient.connect(server.host, server.port, f"/?token={token}")
    welcome = await join(client, "health")
    assert welcome["type"] == "system", welcome
    client.send_json({"type": "chat", "text": "still here"})
    message = await client.recv_json()
    assert message["type"] == "chat" and message["text"] == "still here"
    await client.close()


@pytest.fixture
def auth_server(launch: Launch) -> ServerProcess:
    return launch("--jwt-secret", SECRET, "--jwt-audience", AUDIENCE, "--rate-limit", "0")


@pytest.mark.usefixtures("raw_clients")
@pytest.mark.parametrize(
    ("case", "token"),
    [
        ("no token", None),
        ("bad signature", hs256(claims(), secret="another-secret-of-enough-length-x!")),
        ("alg none", forge({"alg": "none", "typ": "JWT"}, claims(), None)),
        ("expired", hs256(claims(exp=int(time.time()) - 3600))),
        ("not yet valid", hs256(claims(nbf=int(time.time()) + 3600))),
        ("wrong audience", hs256(claims(aud="another-service"))),
        ("garbage", "%00%ff.."),
        ("exp too big for a float", hs256(claims(exp=10**400))),  # was a 500
        ("exp a string", hs256(claims(exp=str(int(time.time()) + 300)))),  # was accepted
        ("name with a joiner", hs256(claims(name="ali\u200dce"))),  # was accepted
    ],
)
async def test_each_refusal_is_a_401_before_the_upgrade(
    auth_server: ServerProcess, case: str, token: str | None
) -> None:
    path = "/" if token is None else f"/?token={token}"
    status, reason = await refused(auth_server, path)
    assert status == 401, (case, reason)
    assert reason.strip(), case  # a short reason, never an empty answer
    # also in the header forms
    if token is not None:
        status, _ = await refused(auth_server, "/", Authorization=f"Bearer {token}")
        assert status == 401, case
        protocols = f"{SUBPROTOCOL}, {token}"
        status, _ = await refused(auth_server, "/", **{"Sec-WebSocket-Protocol": protocols})
        assert status == 401, case
    await healthy(auth_server, hs256(claims(name="healthy")))


@pytest.mark.usefixtures("raw_clients")
async def test_hs_rs_confusion_over_the_wire(
    launch: Launch, tmp_path: Path, rsa_keys: tuple[bytes, bytes]
) -> None:
    private, public = rsa_keys
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(public)
    server = launch("--jwt-public-key", str(key_file), "--jwt-audience", AUDIENCE)
    confused = forge({"alg": "HS256", "typ": "JWT"}, claims(), public)
    status, response = await refused(server, f"/?token={confused}")
    assert status == 401 and "algorithm not allowed" in response
    await healthy(server, jwt.encode(claims(), private, algorithm="RS256"))


@pytest.mark.usefixtures("raw_clients")
async def test_the_tokens_name_is_what_others_see(auth_server: ServerProcess) -> None:
    watcher = await RawClient.connect(
        auth_server.host, auth_server.port, f"/?token={hs256(claims(name='watcher'))}"
    )
    assert (await join(watcher, username="whatever"))["username"] == "watcher"
    alice = await RawClient.connect(
        auth_server.host,
        auth_server.port,
        "/",
        {"Authorization": f"Bearer {hs256(claims(name='alice'))}"},
    )
    welcome = await join(alice, username="mallory")
    assert welcome["username"] == "alice" and welcome["text"] == "alice joined #general"
    assert sorted(welcome["users"]) == ["alice", "watcher"]
    notice = await watcher.recv_json()
    assert notice["username"] == "alice" and "mallory" not in json.dumps(notice)
    alice.send_json({"type": "chat", "text": "hi"})
    chat = await watcher.recv_json()
    assert (chat["username"], chat["text"]) == ("alice", "hi")


async def test_the_subprotocol_form_works_for_browsers(auth_server: ServerProcess) -> None:
    """What `new WebSocket(url, ["roomcast.jwt", token])` sends; the server echoes roomcast.jwt."""
    token = hs256(claims(name="browser"))
    async with websockets.connect(
        auth_server.ws_url,
        subprotocols=[SUBPROTOCOL, token],  # type: ignore[list-item]
        open_timeout=5,
    ) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        await ws.send(json.dumps({"type": "join", "username": "ignored"}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["username"] == "browser"


@pytest.mark.usefixtures("raw_clients")
async def test_a_rooms_claim_forbids_other_rooms(auth_server: ServerProcess) -> None:
    token = hs256(claims(name="teamster", rooms=["team-*", "lobby"]))
    client = await RawClient.connect(auth_server.host, auth_server.port, f"/?token={token}")
    error = await join(client, "general")
    assert error["type"] == "error" and error["code"] == "forbidden_room", error
    assert (await join(client, "team-red"))["text"] == "teamster joined #team-red"
    error = await join(client, "secret")
    assert error["code"] == "forbidden_room"
    client.send_json({"type": "chat", "text": "still in team-red"})
    assert (await client.recv_json())["text"] == "still in team-red"  # the refusal left it there
    assert (await join(client, "lobby"))["room"] == "lobby"


@pytest.mark.usefixtures("raw_clients")
async def test_an_expiring_token_closes_the_connection_with_4001(launch: Launch) -> None:
    server = launch("--jwt-secret", SECRET, "--jwt-leeway", "0", "--token-sweep-interval", "0.1")
    short = hs256({"sub": "brief", "exp": int(time.time()) + 2})
    long = hs256({"sub": "lasting", "exp": int(time.time()) + 300})
    brief = await RawClient.connect(server.host, server.port, f"/?token={short}")
    lasting = await RawClient.connect(server.host, server.port, f"/?token={long}")
    await join(brief)
    assert sorted((await join(lasting))["users"]) == ["brief", "lasting"]
    close = await brief.expect_close(timeout=6)
    assert close.close_code == 4001, close
    assert b"token expired" in close.payload
    assert await brief.wait_eof()
    notice = await lasting.recv_json()
    assert notice["event"] == "leave" and notice["username"] == "brief"
    lasting.send_json({"type": "chat", "text": "alive"})
    assert (await lasting.recv_json())["text"] == "alive"
    metrics = await asyncio.to_thread(_metrics_text, server)
    assert "roomcast_tokens_expired_total 1.0" in metrics


def _metrics_text(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.usefixtures("raw_clients")
async def test_without_auth_tokens_are_ignored_and_names_are_free(server: ServerProcess) -> None:
    client = await RawClient.connect(server.host, server.port, "/?token=whatever")
    assert (await join(client, username="free"))["username"] == "free"


def test_bad_security_options_are_refused_at_startup(tmp_path: Path) -> None:
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("hello")
    for argv in (
        ["--jwt-secret", "s", "--jwt-algorithms", "none"],
        ["--jwt-secret", "s", "--jwt-algorithms", "RS256"],
        ["--jwt-algorithms", "HS256"],  # no key at all
        ["--jwt-public-key", str(tmp_path / "missing.pem")],
        ["--jwt-public-key", str(not_a_key)],
        ["--allowed-origins", "https://*"],
        ["--trusted-proxies", "not-an-address"],
        ["--token-sweep-interval", "0"],
    ):
        with pytest.raises(SystemExit):
            load_settings(argv, env={})
    config = load_settings(["--jwt-secret", "s"], env={"ROOMCAST_JWT_AUDIENCE": "aud"}).config
    assert config.auth_enabled and config.jwt_audience == "aud"
    assert not load_settings([], env={}).config.auth_enabled


async def test_refusals_are_counted_by_reason(auth_server: ServerProcess) -> None:
    assert (await refused(auth_server))[0] == 401
    assert (await refused(auth_server, "/?token=not.a.jwt"))[0] == 401
    metrics = await asyncio.to_thread(_metrics_text, auth_server)
    assert 'roomcast_handshakes_refused_total{reason="unauthorized"} 2.0' in metrics


def _auth_check(server: ServerProcess, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=5) as response:
            return response.status, response.read().decode(), response.headers["Cache-Control"]
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), error.headers["Cache-Control"]


async def test_auth_check_tells_a_browser_why_its_token_is_refused(
    auth_server: ServerProcess, server: ServerProcess
) -> None:
    good = hs256(claims(name="ok"))
    expired = hs256(claims(exp=int(time.time()) - 3600))
    cases = [
        (f"/auth/check?token={good}", 200, "ok"),
        (f"/auth/check?token={expired}", 401, "token expired"),
        ("/auth/check", 401, "token required"),
        (f"/auth/check?token={good[:-3]}abc", 401, "bad token signature"),
    ]
    for path, status, body in cases:
        got = await asyncio.to_thread(_auth_check, auth_server, path)
        assert got == (status, body + "\n", "no-store"), path
    # without authentication every token (and none) would be accepted
    assert await asyncio.to_thread(_auth_check, server, "/auth/check") == (200, "ok\n", "no-store")
