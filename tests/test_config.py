"""Options and their environment variables."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
from dataclasses import fields

import pytest

from server.config import Config, ConfigError, load_config, parse_config

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


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=30,
        env={**os.environ, **(env or {})}, check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--port", "99999"], {}, "--port 99999: must be an integer from 0 to 65535"),
        (["--ping-interval", "nan"], {}, "--ping-interval nan: must be a number > 0"),
        (["--max-buffered-bytes", "lots"], {}, "--max-buffered-bytes lots: must be an integer"),
        (["--log-level", "loud"], {}, "--log-level loud: must be one of debug, info"),
        ([], {"ROOMCAST_LOG_LEVEL": "loud"}, "ROOMCAST_LOG_LEVEL=loud: must be one of"),
        ([], {"ROOMCAST_LOG_FORMAT": "xml"}, "ROOMCAST_LOG_FORMAT=xml: must be one of text, json"),
        ([], {"ROOMCAST_REDIS_CLUSTER": "maybe"}, "ROOMCAST_REDIS_CLUSTER=maybe: must be true or"),
        (["--certfile", "/no/such.pem", "--keyfile", "/no/such.pem"], {},
         "--certfile /no/such.pem: no such file"),
        (["--jwt-public-key", "/no/key.pem"], {}, "--jwt-public-key /no/key.pem: no such file"),
        (["--certfile", "/etc/hostname"], {}, "--certfile /etc/hostname: needs --keyfile too"),
        (["--metrics-listen", "9100"], {}, "--metrics-listen 9100: must be HOST:PORT"),
        (["--host", "999.1.1.1"], {}, "--host 999.1.1.1: must be an IP address or a host name"),
        ([], {"ROOMCAST_HOST": "bad/host"}, "ROOMCAST_HOST=bad/host: must be an IP address or"),
        (["--metrics-listen", "999.9.9.9:9100"], {},
         "--metrics-listen 999.9.9.9:9100: must be an IP address or a host name"),
        (["--no-such-option"], {}, "unrecognized arguments: --no-such-option"),
        (["--port"], {}, "argument --port: expected one argument"),
    ],
)
def test_a_bad_option_is_one_line_naming_it_and_exit_2(
    args: list[str], env: dict[str, str], says: str
) -> None:
    done = run(*args, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # not 27 lines of usage
    assert lines[0].startswith("roomcast: error: ") and says in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_an_unreadable_file_is_named(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key.pem"
    key.write_text("x")
    # the tests run as root, who reads every file whatever its mode: make it unreadable here
    monkeypatch.setattr(os, "access", lambda path, mode: path != str(key))
    with pytest.raises(ConfigError, match=r"--jwt-public-key .*key.pem: file is not readable"):
        load_config(["--jwt-public-key", str(key)], env={})


@pytest.mark.parametrize(
    ("option", "workers"),
    [("--port", False), ("--metrics-listen", False), ("--port", True), ("--metrics-listen", True)],
)
def test_an_address_in_use_is_reported_with_the_option_that_named_it(
    option: str, workers: bool
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["--host", "127.0.0.1", "--port", str(port) if option == "--port" else "0"]
        if option == "--metrics-listen":
            args += ["--metrics-listen", f"127.0.0.1:{port}"]
        if workers:  # the supervisor binds both itself; Redis is never reached
            args += ["--workers", "2", "--redis-url", "redis://127.0.0.1:1"]
        done = run(*args)
    named = "--host and --port" if option == "--port" else "--metrics-listen"
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (from {named}): Address already in use" in (
        done.stderr
    ), done.stderr
    assert "Traceback" not in done.stderr
