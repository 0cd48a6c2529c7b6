"""The security options, parsed and checked once at start: JWT verifier, Origin policy, proxies,
TLS context.

``Security.load`` reads the public key file once and builds every derived object; a bad option is
a ConfigError naming it, reported before anything starts (server/settings.py).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .admission import IPNetwork, OriginPolicy, parse_networks
from .config import Config, ConfigError

if TYPE_CHECKING:
    from .auth import Verifier


@dataclass(frozen=True, slots=True)
class Security:
    """The security options, parsed and checked once."""

    verifier: Verifier | None
    origins: OriginPolicy
    proxies: tuple[IPNetwork, ...]
    tls: ssl.SSLContext | None  # --certfile/--keyfile: serve wss:// directly

    @classmethod
    def load(cls, config: Config) -> Security:
        """Builds the derived objects; raises ConfigError naming the option at fault."""
        verifier = None
        if config.auth_enabled or config.jwt_algorithms:
            verifier = _verifier(config)
        try:
            origins = OriginPolicy.from_option(
                config.allowed_origins, allow_all=not config.auth_enabled
            )
        except ValueError as exc:
            raise ConfigError("allowed_origins", config.allowed_origins, str(exc)) from None
        try:
            proxies = parse_networks(config.trusted_proxies)
        except ValueError as exc:
            raise ConfigError("trusted_proxies", config.trusted_proxies, str(exc)) from None
        return cls(verifier, origins, proxies, _tls_context(config))


def _verifier(config: Config) -> Verifier | None:
    """The JWT verifier. Imported only here: a server without authentication never loads
    PyJWT and cryptography (about 9 MB per process, measured with /proc/self/status)."""
    from .auth import Verifier, check_public_key, parse_algorithms  # noqa: PLC0415

    public_key = ""
    if config.jwt_public_key:
        try:
            with open(config.jwt_public_key, encoding="utf-8") as file:
                public_key = file.read()
            check_public_key(public_key)
        except (OSError, ValueError) as exc:
            raise ConfigError("jwt_public_key", config.jwt_public_key, str(exc)) from None
    try:
        algorithms = parse_algorithms(
            config.jwt_algorithms,
            has_secret=bool(config.jwt_secret),
            has_public_key=bool(public_key),
        )
    except ValueError as exc:
        raise ConfigError("jwt_algorithms", config.jwt_algorithms, str(exc)) from None
    if not config.auth_enabled:
        return None
    return Verifier(
        secret=config.jwt_secret,
        public_key=public_key,
        algorithms=algorithms,
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
        leeway=config.jwt_leeway,
        max_username_length=config.max_username_length,
    )


def _tls_context(config: Config) -> ssl.SSLContext | None:
    if not config.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except ssl.SSLError as exc:
        raise ConfigError(
            "certfile", config.certfile, f"cannot load it with --keyfile {config.keyfile}: {exc}"
        ) from None
    except OSError as exc:
        raise ConfigError("certfile", config.certfile, exc.strerror or str(exc)) from None
    return context
