"""Options and their environment variables."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from server.config import Config, parse_config

REQUIRED = [
    "--host", "--port", "--rate-limit", "--rate-window", "--max-message-bytes",
    "--ping-interval", "--ping-timeout", "--log-level",
]


def test_defaults_are_the_seeds() -> None:
    config = parse_config([], env={})
    assert (config.port, config.rate_limit, config.rate_window) == (8080, 10, 10.0)
    assert config.max_message_bytes == 65536 and config.ping_interval == 30
    assert config.max_text_length == 4000 and config.max_username_length == 32
    assert config.max_room_length == 64 and config.max_buffered_bytes == 1 << 20


def test_every_option_is_documented_in_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in out
        assert "ROOMCAST_" + f.name.upper() in out
    for flag in REQUIRED:
        assert flag in out


def test_environment_sets_options_and_flags_override_it() -> None:
    env = {"ROOMCAST_PORT": "9123", "ROOMCAST_RATE_LIMIT": "0", "ROOMCAST_LOG_LEVEL": "DEBUG"}
    config = parse_config([], env=env)
    assert (config.port, config.rate_limit, config.log_level) == (9123, 0, "debug")
    assert parse_config(["--port", "7000"], env=env).port == 7000


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--port", "-1"], {}),
        (["--ping-interval", "0"], {}),
        ([], {"ROOMCAST_PORT": "eighty"}),
        (["--log-level", "loud"], {}),
        (["--max-text-length", "0"], {}),
        (["--join-rate-limit", "-1"], {}),
        ([], {"ROOMCAST_JOIN_RATE_LIMIT": "ten"}),
    ],
)
def test_bad_options_are_refused(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv, env=env)
    assert exc.value.code == 2


def test_the_join_rate_limit_is_on_by_default_and_apart_from_the_chat_limit() -> None:
    assert parse_config([], env={}).join_rate_limit == 10
    chats_off = parse_config(["--rate-limit", "0"], env={})
    assert (chats_off.rate_limit, chats_off.join_rate_limit) == (0, 10)
    joins_off = parse_config([], env={"ROOMCAST_JOIN_RATE_LIMIT": "0"})
    assert (joins_off.rate_limit, joins_off.join_rate_limit) == (10, 0)
