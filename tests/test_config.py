"""Options and their environment variables."""

from __future__ import annotations

import os
import pathlib
import signal
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
        (["--port", "99999"], {}, "--port 99999: must be an integer >= 0 and <= 65535"),
        (["--ping-interval", "nan"], {}, "--ping-interval nan: must be a number >= 0.1 and"),
        (["--max-buffered-bytes", "lots"], {}, "--max-buffered-bytes lots: must be an integer"),
        (["--log-level", "loud"], {}, "--log-level loud: must be one of debug, info"),
        ([], {"ROOMCAST_LOG_LEVEL": "loud"}, "ROOMCAST_LOG_LEVEL=loud: must be one of"),
        ([], {"ROOMCAST_LOG_FORMAT": "xml"}, "ROOMCAST_LOG_FORMAT=xml: must be one of text, json"),
        ([], {"ROOMCAST_REDIS_CLUSTER": "maybe"}, "ROOMCAST_REDIS_CLUSTER=maybe: must be true or"),
        (["--certfile", "/no/such.pem", "--keyfile", "/no/such.pem"], {},
         "--certfile /no/such.pem: no such file"),
        (["--jwt-public-key", "/no/key.pem"], {}, "--jwt-public-key /no/key.pem: no such file"),
        # checked where the objects are built (server/security.py), still named as given
        ([], {"ROOMCAST_JWT_PUBLIC_KEY": "/no/key.pem"},
         "ROOMCAST_JWT_PUBLIC_KEY=/no/key.pem: no such file"),
        ([], {"ROOMCAST_TRUSTED_PROXIES": "banana"}, "ROOMCAST_TRUSTED_PROXIES=banana: "),
        (["--allowed-origins", "ht!tp://x"], {}, "--allowed-origins ht!tp://x: bad scheme"),
        ([], {"ROOMCAST_ALLOWED_ORIGINS": "https://exa mple.com"},
         "ROOMCAST_ALLOWED_ORIGINS=https://exa mple.com: not an origin"),
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
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # that line alone
    assert "Traceback" not in done.stderr


BIG = "99999999999999999999999"


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        # numbers past what the server can use: an OverflowError or a huge allocation at run time
        (["--max-message-bytes", BIG], {}, f"--max-message-bytes {BIG}: must be an integer >= 1 "
         "and <= 1073741824"),
        (["--max-users-list", BIG], {}, f"--max-users-list {BIG}: must be an integer >= 0 and "
         "<= 10000"),
        (["--rate-limit", BIG], {}, f"--rate-limit {BIG}: must be an integer >= 0 and <= 10000"),
        (["--rate-limit", "10000000"], {}, "--rate-limit 10000000: must be an integer"),
        ([], {"ROOMCAST_JOIN_RATE_LIMIT": BIG}, f"ROOMCAST_JOIN_RATE_LIMIT={BIG}: must be an "
         "integer >= 0 and <= 10000"),
        (["--handshake-rate", BIG], {}, f"--handshake-rate {BIG}: must be an integer"),
        (["--max-connections", BIG], {}, f"--max-connections {BIG}: must be an integer"),
        (["--max-buffered-bytes", BIG], {}, f"--max-buffered-bytes {BIG}: must be an integer"),
        (["--history-max-bytes", BIG], {}, f"--history-max-bytes {BIG}: must be an integer"),
        # durations: a TTL Redis cannot take, timers that spin
        (["--node-ttl", "1e16"], {}, "--node-ttl 1e16: must be a number >= 1 and <= 86400"),
        (["--ping-interval", "0.000001"], {}, "--ping-interval 0.000001: must be a number >= 0.1"),
        (["--token-sweep-interval", "1e-300"], {}, "--token-sweep-interval 1e-300: must be a "
         "number >= 0.1 and <= 3600"),
        (["--ping-timeout", "1e300"], {}, "--ping-timeout 1e300: must be a number"),
        (["--history-ttl", "1e300"], {}, "--history-ttl 1e300: must be a number >= 0 and <="),
        (["--rate-window", "1e-300"], {}, "--rate-window 1e-300: must be a number >= 0.1"),
        (["--handshake-timeout", "0"], {}, "--handshake-timeout 0: must be a number >= 0.1"),
        # plain digits only: int() and float() also take 8_0 and non-ASCII digits
        (["--port", "8_0"], {}, "--port 8_0: must be an integer"),
        ([], {"ROOMCAST_PORT": "\u0668\u0660"}, "ROOMCAST_PORT=\u0668\u0660: must be an integer"),
        (["--ping-interval", "1_0"], {}, "--ping-interval 1_0: must be a number"),
        # Redis URLs that redis-py would take and retry forever
        (["--redis-url", "redis://127.0.0.1:notaport"], {},
         "--redis-url redis://127.0.0.1:notaport: Port could not be cast to integer"),
        (["--redis-url", "redis://127.0.0.1:99999"], {},
         "--redis-url redis://127.0.0.1:99999: Port out of range"),
        (["--redis-url", "redis://127.0.0.1:0"], {},
         "--redis-url redis://127.0.0.1:0: port must be from 1 to 65535"),
        (["--redis-url", "redis://127.0.0.1:6379/99999"], {},
         "--redis-url redis://127.0.0.1:6379/99999: the database must be a number from 0 to 15"),
        (["--redis-url", "redis://127.0.0.1:6379/abc"], {},
         "--redis-url redis://127.0.0.1:6379/abc: the database (the path) must be a number"),
        (["--redis-url", "redis://127.0.0.1:6379/1/2"], {}, "the database (the path) must be"),
        (["--redis-url", "unix:///tmp/redis.sock?db=-1"], {}, "the database must be a number"),
        (["--redis-url", "redis://"], {}, "--redis-url redis://: must name the Redis host"),
        (["--redis-url", "unix://"], {}, "--redis-url unix://: must name the socket file"),
        (["--redis-url", "redis://127.0.0.1?nosuch=1"], {}, "unknown parameter 'nosuch'"),
        (["--redis-url", "redis://127.0.0.1/1", "--redis-cluster", "true"], {},
         "--redis-url redis://127.0.0.1/1: a Redis Cluster has only database 0"),
        # an option that would do nothing is refused, not ignored
        (["--redis-url", "redis://127.0.0.1", "--history-max-bytes", "1000"], {},
         "--history-max-bytes 1000: caps one node's memory and does nothing with --redis-url"),
        ([], {"ROOMCAST_REDIS_URL": "redis://127.0.0.1", "ROOMCAST_HISTORY_MAX_BYTES": "1000"},
         "ROOMCAST_HISTORY_MAX_BYTES=1000: caps one node's memory"),
        # a misspelt variable is no silent default (here: authentication off); its value unshown
        ([], {"ROOMCAST_JWT_SECERT": "hush"},
         "ROOMCAST_JWT_SECERT: is not a roomcast option; did you mean ROOMCAST_JWT_SECRET?"),
        ([], {"ROOMCAST_PROT": "9000"}, "ROOMCAST_PROT: is not a roomcast option; did you mean "
         "ROOMCAST_PORT?"),
        ([], {"ROOMCAST_QQQQQQQQ": "1"}, "ROOMCAST_QQQQQQQQ: is not a roomcast option"),
        # the rest
        (["--host", "a\nb"], {}, "--host a\\nb: must be an IP address or a host name"),
        (["--host", "a\tb\u202ec"], {}, "--host a\\tb\\u202ec: must be"),
        (["--allowed-origins", "https://a.example:99999"], {},
         "--allowed-origins https://a.example:99999: port 99999 of https://a.example:99999 "
         "must be from 1 to 65535"),
        (["--allowed-origins", "*.a.example,http://[::1]:70000"], {}, "port 70000 of"),
        (["--echo-path", "/ e"], {}, "--echo-path / e: must be a path starting with / of"),
        (["--echo-path", "/echo?x"], {}, "--echo-path /echo?x: must be a path"),
        (["--echo-path", "/\u00e9"], {}, "must be a path starting with / of printable ASCII"),
        (["--echo-path", "echo"], {}, "--echo-path echo: must be a path starting with /"),
        (["--certfile", "/tmp", "--keyfile", "/etc/hostname"], {},
         "--certfile /tmp: is a directory, not a file"),
        (["--jwt-public-key", "/dev/null"], {},
         "--jwt-public-key /dev/null: is not a regular file"),
    ],
)
def test_what_would_break_the_server_at_run_time_is_refused_at_start(
    args: list[str], env: dict[str, str], says: str
) -> None:
    test_a_bad_option_is_one_line_naming_it_and_exit_2(args, env, says)


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-message-bytes", str(1 << 30), "--max-users-list", "10000"],
        ["--rate-limit", "10000", "--join-rate-limit", "10000", "--handshake-rate", "10000"],
        ["--ping-interval", "0.1", "--ping-timeout", "0.1", "--token-sweep-interval", "0.1"],
        ["--node-ttl", "1", "--history-ttl", "0.5", "--handshake-timeout", "0.2"],
        ["--ping-interval", "1e3", "--rate-window", ".5", "--port", "0"],
        ["--redis-url", "redis://127.0.0.1:6379/15"],
        ["--redis-url", "rediss://:pw@[::1]:6380/0?ssl_cert_reqs=none&health_check_interval=5"],
        ["--redis-url", "unix:///run/redis.sock?db=3"],
        ["--redis-url", "redis://localhost/", "--redis-cluster", "true"],
        ["--allowed-origins", "https://a.example:8443,*.b.example,http://[::1]:8080"],
        ["--echo-path", "/echo"],
    ],
)
def test_the_limits_themselves_are_allowed(argv: list[str]) -> None:
    load_config(argv, env={"ROOMCAST_WORKER_OF": "127.0.0.1:1", "ROOMCAST_FUZZ_SEED": "1"})


def test_a_history_file_that_is_no_regular_file_is_refused(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "history.fifo"
    os.mkfifo(fifo)  # reading it back at start would hang
    done = run("--history-file", str(fifo))
    assert done.returncode == 2, done.stderr
    assert f"--history-file {fifo}: is not a regular file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(["--history-file", str(tmp_path)], env={})
    assert load_config(["--history-file", str(tmp_path / "h.bin")], env={}).history_file


MAKE_RUN = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("make_args", "env", "port_of"),
    [
        (["ARGS=--port {port}"], {}, "ARGS"),
        ([], {"ROOMCAST_PORT": "{port}"}, "ROOMCAST_PORT"),
        (["PORT={port}"], {}, "PORT"),
        (["PORT=1", "ARGS=--port {port}"], {}, "ARGS over PORT"),
    ],
)
def test_make_run_listens_where_its_arguments_say_and_says_so(
    make_args: list[str], env: dict[str, str], port_of: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    given = [a.replace("{port}", str(port)) for a in make_args]
    environment = {**os.environ, **{k: v.replace("{port}", str(port)) for k, v in env.items()}}
    environment.pop("PORT", None)
    environment.pop("HOST", None)
    proc = subprocess.Popen(
        ["make", "-s", "run", *given], cwd=MAKE_RUN, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "listening on" in line:
                break
        assert f"roomcast listening on http://127.0.0.1:{port}/" in "".join(seen), (port_of, seen)
        assert not any(":8080" in line for line in seen), seen  # no banner naming another port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_shipped_environment_file_loads_and_sets_what_the_proxy_configs_ask_for() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    lines = (root / "deploy" / "roomcast.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    config = load_config([], env=env)
    # nginx.conf and the Caddyfile tell the operator to start roomcast with these two
    assert (config.trusted_proxies, config.metrics_listen) == ("127.0.0.1/32", "127.0.0.1:9100")
    for proxy in ("nginx.conf", "Caddyfile"):
        text = (root / "deploy" / proxy).read_text()
        assert "--trusted-proxies 127.0.0.1/32" in text
        assert "--metrics-listen 127.0.0.1:9100" in text
