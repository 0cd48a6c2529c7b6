"""JWT authentication at the WebSocket upgrade. Pure logic: no sockets, no files, no event loop.

A token travels in one of three places, looked up in this order:

1. ``Authorization: Bearer <token>`` (non-browser clients);
2. ``Sec-WebSocket-Protocol: roomcast.jwt, <token>`` (browsers cannot set headers, but they can
   offer subprotocols: ``new WebSocket(url, ["roomcast.jwt", token])``); the server then answers
   ``Sec-WebSocket-Protocol: roomcast.jwt``, as RFC 6455 requires it to pick one offered protocol;
3. ``?token=<token>`` in the request path (what the browser page does; note that URLs end up in
   proxy logs, so prefer the other two where possible).

Verification uses PyJWT with an explicit algorithm allowlist. The key is chosen by the family of
the token's ``alg`` header (HMAC algorithms use ``--jwt-secret``, asymmetric ones the public key),
so a token signed with HS256 using the *public key* as the HMAC secret (the classic algorithm
confusion attack) is never checked against the public key, and ``none`` is never allowed.

The identity a token gives: the username (``name``, else ``sub``), an optional ``rooms`` claim
(room names or ``fnmatch`` glob patterns such as ``team-*``) limiting which rooms the holder may
join, and the expiry (``exp``), after which the server closes the connection with 4001.

The times (``exp``, ``nbf``, ``iat``) are checked here, not by PyJWT: PyJWT 2.x reads them with
``int()``, so it accepts ``"exp": "1795000000"`` (a string, which the identity then ignored and
the connection outlived) and ``10**400`` (which later failed to become a float: a 500). A time
must be a JSON number (not a boolean, not a string) from 0 to ``MAX_NUMERIC_DATE`` (the end of
year 9999), else the token is refused (401) with a reason naming the claim.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_plus

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .identity import AuthError, Identity, RoomPatterns
from .names import clean_name

__all__ = ["AuthError", "Identity", "RoomPatterns", "Verifier"]

SUBPROTOCOL = "roomcast.jwt"

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_HMAC = ("HS256",)
DEFAULT_ASYMMETRIC = ("RS256", "ES256", "EdDSA")

# RFC 6750 b64token plus the JWT's own alphabet; anything else in a header is not a token.
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


class Headers(Protocol):
    def get(self, key: str, /) -> Any: ...


# ---- where the token is -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Presented:
    token: str
    subprotocol: str | None  # the subprotocol to echo in the 101 response, if the token came so


def extract_token(path: str, headers: Headers) -> Presented | None:
    """The token the client presented, or None when there is none at all."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = str(authorization).strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return Presented(value.strip(), None)
    offered = headers.get("sec-websocket-protocol")
    if offered:
        items = [item.strip() for item in str(offered).split(",")]
        if SUBPROTOCOL in items:
            for item in items:
                if item != SUBPROTOCOL and item and _TOKEN_SHAPE.match(item):
                    return Presented(item, SUBPROTOCOL)
    # The target is origin-form (path?query); parsed by hand because urlsplit and parse_qs raise
    # on inputs a client controls ("//[x", more fields than a limit), and a peer's odd query is
    # not our error. The first ``token`` field counts, as with parse_qs.
    query = path.partition("?")[2].partition("#")[0]
    for field in query.split("&"):
        key, has_value, value = field.partition("=")
        if has_value and value and unquote_plus(key) == "token":
            return Presented(unquote_plus(value), None)
    return None


# ---- what the token says ----------------------------------------------------------------------


MAX_ROOM_PATTERNS = 100
# 9999-12-31T23:59:59Z: the last second every date library can represent (RFC 7519's NumericDate
# has no bound; nothing later is a time anyone means, and a float holds it to the microsecond).
MAX_NUMERIC_DATE = 253_402_300_799
TIME_CLAIMS = ("exp", "nbf", "iat")


def numeric_date(claims: dict[str, Any], claim: str) -> float | None:
    """The claim as seconds since the epoch, None when absent; AuthError when it is not a time."""
    if claim not in claims:
        return None
    value = claims[claim]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0 <= value <= MAX_NUMERIC_DATE)  # False for NaN too
    ):
        raise AuthError(f"token {claim} must be a number of seconds from 1970 to 9999")
    return float(value)  # in range, so finite and never an OverflowError


def identity_from_claims(claims: dict[str, Any], max_username_length: int) -> Identity:
    """The identity of verified claims; raises AuthError when the claims are unusable."""
    raw_name = claims.get("name")
    if raw_name is None or raw_name == "":
        raw_name = claims.get("sub")
    if not isinstance(raw_name, str) or not raw_name.strip():
        raise AuthError("token has no name or sub")
    name = clean_name(raw_name, "", max_username_length)
    if not name:
        raise AuthError("token name is too long or has control or invisible characters")
    rooms: RoomPatterns | None = None
    if "rooms" in claims:
        raw_rooms = claims["rooms"]
        if isinstance(raw_rooms, str):
            raw_rooms = [raw_rooms]
        if (
            not isinstance(raw_rooms, list)
            or len(raw_rooms) > MAX_ROOM_PATTERNS
            or not all(isinstance(item, str) for item in raw_rooms)
        ):
            raise AuthError(f"rooms claim must be a list of at most {MAX_ROOM_PATTERNS} strings")
        rooms = RoomPatterns(raw_rooms)
    return Identity(name, rooms, numeric_date(claims, "exp"))


# ---- verification -----------------------------------------------------------------------------


def check_public_key(pem: str) -> None:
    """Raises ValueError unless `pem` is a PEM public key PyJWT can use (RSA, EC, Ed25519/448)."""
    try:
        load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm
        raise ValueError(f"unsupported public key: {exc}") from None


def parse_algorithms(text: str, *, has_secret: bool, has_public_key: bool) -> tuple[str, ...]:
    """The allowlist from ``--jwt-algorithms`` (comma-separated), or the defaults for the keys.

    Raises ValueError for ``none``, unknown names, or an algorithm whose key is not configured.
    """
    names = tuple(item.strip() for item in text.split(",") if item.strip())
    if not names:
        defaults: tuple[str, ...] = ()
        if has_secret:
            defaults += DEFAULT_HMAC
        if has_public_key:
            defaults += DEFAULT_ASYMMETRIC
        return defaults
    for name in names:
        if name.lower() == "none":
            raise ValueError("the 'none' algorithm can never be allowed")
        if name in HMAC_ALGORITHMS:
            if not has_secret:
                raise ValueError(f"{name} needs --jwt-secret")
        elif name in ASYMMETRIC_ALGORITHMS:
            if not has_public_key:
                raise ValueError(f"{name} needs --jwt-public-key")
        else:
            raise ValueError(f"unknown JWT algorithm {name!r}")
    return names


class Verifier:
    """Checks tokens against the configured keys, allowlist, audience, issuer and leeway."""

    def __init__(
        self,
        *,
        secret: str = "",
        public_key: str = "",
        algorithms: Sequence[str] = (),
        audience: str = "",
        issuer: str = "",
        leeway: float = 5.0,
        max_username_length: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret and not public_key:
            raise ValueError("a Verifier needs a secret or a public key")
        self._secret = secret
        self._public_key = public_key
        self.algorithms = tuple(algorithms) or parse_algorithms(
            "", has_secret=bool(secret), has_public_key=bool(public_key)
        )
        self._audience = audience or None
        self._issuer = issuer or None
        self.leeway = leeway
        self._max_username_length = max_username_length
        self._clock = clock

    def verify(self, token: str) -> Identity:
        """The identity of a valid token; raises AuthError with a short reason otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError("token algorithm not allowed")
        # The key follows the algorithm's family: an HMAC token is never checked against the
        # public key (algorithm confusion), an asymmetric one never against the secret.
        key = self._secret if alg in HMAC_ALGORITHMS else self._public_key
        if not key:
            raise AuthError("token algorithm not allowed")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                # The times are checked below: PyJWT's int() accepts strings (see the docstring).
                options={
                    "verify_aud": self._audience is not None,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise AuthError("wrong token audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks {exc.claim}") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong token issuer") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad token signature") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        self._check_times(claims)
        return identity_from_claims(claims, self._max_username_length)

    def _check_times(self, claims: dict[str, Any]) -> None:
        """PyJWT's rules (expired once ``exp`` is `leeway` or more in the past; ``nbf`` or
        ``iat`` more than `leeway` ahead is not yet valid), on times known to be numbers."""
        exp, nbf, iat = (numeric_date(claims, claim) for claim in TIME_CLAIMS)
        now = self._clock()
        if exp is not None and exp <= now - self.leeway:
            raise AuthError("token expired")
        if (nbf is not None and nbf > now + self.leeway) or (
            iat is not None and iat > now + self.leeway
        ):
            raise AuthError("token not yet valid")

    def authenticate(self, path: str, headers: Headers) -> tuple[Identity, str | None]:
        """The identity and the subprotocol to echo; raises AuthError (401) otherwise."""
        presented = extract_token(path, headers)
        if presented is None:
            raise AuthError("token required")
        return self.verify(presented.token), presented.subprotocol
