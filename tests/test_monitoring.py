"""The monitoring files against promtool, the server's real /metrics and a real Prometheus.

deploy/alerts.yml (recording and alerting rules), deploy/alerts.test.yml (their promtool unit
tests) and deploy/grafana-dashboard.json are checked here: the rules load and pass their unit
tests, each rule is pinned by those tests (a rule that never matches, or an alert without its
`for:`, fails them), every metric name they and the dashboard use is one a real server exports,
and a real Prometheus started from docs/operations.md's scrape config scrapes a real server,
evaluates the rules, answers every dashboard query with data and raises the Redis alerts when
Redis goes away. promtool and prometheus come from Debian's `prometheus` package
(scripts/ensure-system-packages.sh).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import websocket
import yaml

from server.state import RefusalReason
from tests.redis_support import RedisServer, start_redis
from tests.support import ServerProcess, free_port, running_server, start_server, stop_process

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# Series that Prometheus makes itself for every target, not the server.
PROMETHEUS_SERIES = {"up"}
# What the dashboard must show (issue 15): each topic by the metric it is read from.
DASHBOARD_TOPICS = {
    "connections": "roomcast_connections",
    "deliveries/s": "roomcast_deliveries_total",
    "CPU per delivery": "process_cpu_seconds_total",
    "flush quantiles": "roomcast_fanout_flush_seconds_bucket",
    "loop-lag quantiles": "roomcast_event_loop_lag_seconds_bucket",
    "slow consumers watched": "roomcast_slow_consumers_watched",
    "slow consumers dropped": "roomcast_slow_consumers_dropped_total",
    "refusals by reason": "roomcast_handshakes_refused_total",
    "Redis link up": "roomcast_broker_up",
    "Redis outages": "roomcast_broker_outages_total",
    "Redis backlog": "roomcast_broker_backlog",
    "Redis round trip": "roomcast_broker_roundtrip_seconds_bucket",
}


def tool(name: str) -> str:
    """The path of a Prometheus binary; a clear failure (never a skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} not found: install the Debian package prometheus "
            "(scripts/ensure-system-packages.sh does)"
        )
    return path


# ---- PromQL names -----------------------------------------------------------------------------

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, labels or durations)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)  # label lists of by (...), on (...), ...
    names = set()
    for match in _IDENT.finditer(text):
        if text[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def label_values(expr: str, label: str) -> set[str]:
    """Values a PromQL expression matches for `label` with = or =~ (alternatives of a regex)."""
    values: set[str] = set()
    for op, value in re.findall(rf'\b{label}\s*(=~|=)\s*"([^"]*)"', expr):
        values.update(value.split("|") if op == "=~" else [value])
    return values


def exposition_names(text: str) -> set[str]:
    """Every series name an exposition declares or carries (a family with no samples yet, such
    as refusals before the first one, counts by its # TYPE line)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def load_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every panel target."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel["targets"]
    ]


def dashboard_variable_metrics(dashboard: dict[str, Any]) -> set[str]:
    names = set()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable
            names.add(match.group(1))
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{job="x", le=~"0.1|1"}'
        '[$__rate_interval]))) / on (instance) group_left (reason) (b_total offset 5m > 1e-3)'
        ' or label_replace(c, "dst", "$1", "src", "(.*)") unless d:recorded:rate5m'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d:recorded:rate5m"}
    assert metric_names("sum(rate(roomcast_deliveries_totl[5m]))") == {"roomcast_deliveries_totl"}
    assert label_values('x{reason=~"origin|unauthorized"} + y{reason="per_ip"}', "reason") == {
        "origin", "unauthorized", "per_ip",
    }
    exposition = (
        "# TYPE h histogram\nh_bucket{le=\"1\"} 0\n# TYPE c_total counter\n"
        "# TYPE g gauge\ng 1.0\n"
    )
    assert exposition_names(exposition) == {"h", "h_bucket", "h_sum", "h_count", "c_total", "g"}


# ---- promtool ---------------------------------------------------------------------------------


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_alert_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in done.stdout


def test_alert_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_rule_is_pinned_by_the_unit_tests(tmp_path: Path) -> None:
    """alerts.test.yml fails when any rule stops matching, or any alert loses its `for:`: each
    alert has a case where it fires, and each `for:` a case evaluated before it elapses."""
    original = yaml.safe_load(ALERTS.read_text())
    mutants: list[tuple[str, dict[str, Any]]] = []
    for g, group in enumerate(original["groups"]):
        for r, rule in enumerate(group["rules"]):
            name = rule.get("alert") or rule["record"]
            never = copy.deepcopy(original)
            never["groups"][g]["rules"][r]["expr"] = "vector(0) > 1"
            mutants.append((f"{name} never matching", never))
            if "for" in rule:
                hasty = copy.deepcopy(original)
                del hasty["groups"][g]["rules"][r]["for"]
                mutants.append((f"{name} without for", hasty))

    def survives(index: int, rules: dict[str, Any]) -> bool:
        workdir = tmp_path / str(index)
        workdir.mkdir()
        (workdir / "alerts.yml").write_text(yaml.safe_dump(rules))
        shutil.copy(ALERT_TESTS, workdir / "alerts.test.yml")
        return promtool("test", "rules", "alerts.test.yml", cwd=workdir).returncode == 0

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(survives, range(len(mutants)), [m for _, m in mutants]))
    assert len(mutants) > len(load_rules())
    assert [name for (name, _), passed in zip(mutants, results, strict=True) if passed] == []


def test_operations_doc_explains_every_alert() -> None:
    section = OPERATIONS.read_text().split("## Monitoring", 1)[1]
    alerts = [rule["alert"] for rule in load_rules() if "alert" in rule]
    assert len(alerts) >= 10
    assert [name for name in alerts if f"`{name}`" not in section] == []


# ---- the dashboard ----------------------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    panels = dashboard_panels(dashboard)
    assert len(panels) >= 12
    for panel in panels:
        assert panel["datasource"] == source, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source and target["expr"].strip(), panel["title"]
    shown = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dashboard)))
    assert {topic: m for topic, m in DASHBOARD_TOPICS.items() if m not in shown} == {}
    assert any(
        "process_cpu_seconds_total" in expr and "roomcast_deliveries_total" in expr
        for _, expr in dashboard_queries(dashboard)
    ), "CPU per delivery: rate(process_cpu_seconds_total) / rate(roomcast_deliveries_total)"


# ---- names against a real server --------------------------------------------------------------


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def upgrade_status(url: str, **options: Any) -> int:
    """101 when the upgrade succeeded (the socket is closed again), else the HTTP status."""
    try:
        websocket.create_connection(url, timeout=5, **options).close()
    except websocket.WebSocketBadStatusException as refused:
        return int(refused.status_code)
    return 101


def test_referenced_metrics_are_exported_by_a_real_server() -> None:
    """Every name the rules and the dashboard use, scraped from servers: one linked to a real
    Redis with auth and limits on (after refusals of each reason the rules match), and one with
    `make run`'s defaults, which must carry everything but the broker's metrics."""
    rules = load_rules()
    dashboard = load_dashboard()
    exprs = [rule["expr"] for rule in rules] + [expr for _, expr in dashboard_queries(dashboard)]
    used = set().union(*(metric_names(expr) for expr in exprs)) | dashboard_variable_metrics(
        dashboard
    )
    recorded = {rule["record"] for rule in rules if "record" in rule}
    assert {name for name in used if ":" in name} <= recorded
    wanted = used - recorded - PROMETHEUS_SERIES
    reasons = set().union(*(label_values(expr, "reason") for expr in exprs))
    assert {"max_connections", "unauthorized", "origin"} <= reasons

    secret = "monitoring-test-secret-of-32-bytes-at-least"
    allowed = "http://allowed.test"
    redis = start_redis()
    try:
        with running_server(
            "--redis-url", redis.url, "--jwt-secret", secret, "--allowed-origins", allowed,
            "--max-connections", "1", "--log-level", "warning",
        ) as server:
            token = jwt.encode({"sub": "ops"}, secret, algorithm="HS256")
            bearer: dict[str, Any] = {
                "origin": allowed, "header": [f"Authorization: Bearer {token}"]
            }
            assert upgrade_status(server.ws_url, origin="http://evil.test") == 403
            assert upgrade_status(server.ws_url, origin=allowed) == 401
            holder = websocket.create_connection(server.ws_url, timeout=5, **bearer)
            try:
                assert upgrade_status(server.ws_url, **bearer) == 503
                deadline = time.monotonic() + 10
                while "roomcast_broker_roundtrip_seconds_count 0.0" in (text := scrape(server)):
                    assert time.monotonic() < deadline, "no Redis round trip was probed"
                    time.sleep(0.1)
            finally:
                holder.close()
    finally:
        redis.close()
    exported = exposition_names(text)
    assert sorted(wanted - exported) == []
    scraped_reasons = set(re.findall(r'roomcast_handshakes_refused_total\{reason="(\w+)"\}', text))
    assert sorted(reasons - scraped_reasons) == []

    with running_server("--log-level", "warning") as plain:
        single = exposition_names(scrape(plain))
    missing = wanted - single  # the broker's gauges exist only with --redis-url
    assert "roomcast_broker_up" in missing
    assert any(n.startswith("roomcast_broker_roundtrip_seconds") for n in missing)  # no probe
    assert sorted(n for n in missing if not n.startswith("roomcast_broker_")) == []


# ---- a real Prometheus ------------------------------------------------------------------------


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as failed:
            body = json.loads(failed.read())
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def stop(self) -> None:
        stop_process(self.proc)


def documented_prometheus_config() -> str:
    """The prometheus.yml block of docs/operations.md's monitoring section."""
    section = OPERATIONS.read_text().split("## Monitoring", 1)[1]
    blocks: list[str] = [
        b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "scrape_configs" in b
    ]
    assert len(blocks) == 1, "one prometheus.yml block in docs/operations.md#monitoring"
    return blocks[0]


def replace_once(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} not in the documented config"
    return text.replace(old, new)


@contextlib.contextmanager
def running_prometheus(targets: list[str], workdir: Path) -> Iterator[Prometheus]:
    """Prometheus with the documented config, scraping `targets` and evaluating deploy/alerts.yml
    every second, listening on a free loopback port, its storage in `workdir`."""
    config = documented_prometheus_config()
    config = replace_once(config, "scrape_interval: 15s", "scrape_interval: 1s")
    config = replace_once(config, "evaluation_interval: 15s", "evaluation_interval: 1s")
    documented = yaml.safe_load(config)["scrape_configs"][0]["static_configs"][0]["targets"]
    assert len(documented) == 1, documented
    config = replace_once(config, f'"{documented[0]}"', ", ".join(f'"{t}"' for t in targets))
    rule_file = yaml.safe_load(config)["rule_files"][0]
    shutil.copy(ALERTS, workdir / rule_file)
    (workdir / "prometheus.yml").write_text(config)
    check = promtool("check", "config", str(workdir / "prometheus.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    log = workdir / "prometheus.log"
    for _ in range(3):  # the free port may be taken before Prometheus binds it
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                ],
                stdout=out, stderr=subprocess.STDOUT,
            )
        prometheus = Prometheus(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        else:
            prometheus.stop()
            if "address already in use" in log.read_text():
                continue
            raise RuntimeError(f"prometheus did not become ready:\n{log.read_text()[-3000:]}")
        try:
            yield prometheus
        finally:
            prometheus.stop()
        return
    raise RuntimeError("no free port for prometheus after 3 attempts")


def poll(what: str, check: Any, timeout: float = 30.0) -> Any:
    """Calls `check` until it returns something truthy; fails with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


class Chatter:
    """Three joined clients; one chats every 0.1 s in a thread, so deliveries keep coming."""

    def __init__(self, url: str) -> None:
        self.clients = []
        for i in range(3):
            ws = websocket.create_connection(url, timeout=5)
            ws.send(json.dumps({"type": "join", "room": "monitoring", "username": f"m{i}"}))
            while "users" not in json.loads(ws.recv()):  # the joiner's own notice
                pass
            self.clients.append(ws)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.1):
            self.clients[0].send(json.dumps({"type": "chat", "text": "watched"}))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for ws in self.clients:
            ws.close()


def refuse_one_upgrade(server: ServerProcess) -> None:
    """A malformed upgrade (no Sec-WebSocket-Key): refused with 400, counted as bad_request."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 400")


@dataclass
class Stack:
    """Two roomcast nodes, each linked to its own redis-server, scraped by one Prometheus:
    `server` carries traffic; `island` is the one whose Redis the outage test stops, so the
    tests do not depend on their order."""

    redis: RedisServer
    server: ServerProcess
    island_redis: RedisServer
    island: ServerProcess
    prometheus: Prometheus

    @property
    def target(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    @property
    def island_target(self) -> str:
        return f"{self.island.host}:{self.island.port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack, scraped at least once, with chat deliveries all along on `server` and one
    upgrade it refused."""
    with contextlib.ExitStack() as cleanup:

        def node() -> tuple[RedisServer, ServerProcess]:
            redis = start_redis()
            cleanup.callback(redis.close)
            server = start_server(
                "--redis-url", redis.url, "--rate-limit", "0", "--log-level", "warning"
            )
            cleanup.callback(server.stop)
            return redis, server

        (redis, server), (island_redis, island) = node(), node()
        targets = [f"{s.host}:{s.port}" for s in (server, island)]
        prometheus = cleanup.enter_context(
            running_prometheus(targets, tmp_path_factory.mktemp("prometheus"))
        )
        stack = Stack(redis, server, island_redis, island, prometheus)
        poll("the first scrapes", lambda: len(prometheus.query('up{job="roomcast"} == 1')) == 2)
        chatter = Chatter(stack.server.ws_url)
        cleanup.callback(chatter.close)
        refuse_one_upgrade(stack.server)
        yield stack


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


@pytest.mark.timeout(90)
def test_prometheus_scrapes_a_server_and_evaluates_the_rules(stack: Stack) -> None:
    prometheus = stack.prometheus
    targets = prometheus.api("targets")["activeTargets"]
    assert sorted((t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets) == (
        sorted([("roomcast", stack.target, "up"), ("roomcast", stack.island_target, "up")])
    )
    rules = load_rules()

    def all_rules_evaluated() -> list[dict[str, Any]] | None:
        loaded = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return loaded if all(r["health"] == "ok" for r in loaded) else None

    loaded = poll("every rule evaluated", all_rules_evaluated)
    assert sorted(r["name"] for r in loaded) == sorted(
        r.get("alert") or r["record"] for r in rules
    )
    selector = f'{{job="roomcast", instance="{stack.target}"}}'

    def recorded(name: str) -> list[float]:
        return values(poll(f"{name} to have data", lambda: prometheus.query(name + selector)))

    # The first evaluations may see only scrapes from before the chatter started (a rate of 0):
    # wait for the deliveries to show, which they must within the poll's timeout.
    deliveries = "roomcast:deliveries:rate5m" + selector
    delivering = poll(
        "roomcast:deliveries:rate5m above 0",
        lambda: [v for v in values(prometheus.query(deliveries)) if v > 0],
    )
    assert len(delivering) == 1
    cpu = recorded("roomcast:cpu_seconds_per_delivery:rate5m")
    # (0 is possible on a busy machine: CPU time moves in 10 ms ticks between two scrapes)
    assert len(cpu) == 1 and 0 <= cpu[0] < 1 and math.isfinite(cpu[0])
    for name in (
        "roomcast:event_loop_lag_seconds:p99_5m", "roomcast:broker_roundtrip_seconds:p99_5m"
    ):
        p99 = recorded(name)
        assert len(p99) == 1 and 0 <= p99[0] < 1, (name, p99)
    # the island delivers nothing: no CPU-per-delivery series for it (no division by zero)
    assert prometheus.query(
        f'roomcast:cpu_seconds_per_delivery:rate5m{{instance="{stack.island_target}"}}'
    ) == []
    # every alert's expression is valid in this Prometheus; a healthy node raises no Redis alert
    for rule in rules:
        prometheus.query(rule["expr"])
    alerts = prometheus.api("alerts")["alerts"]
    assert [
        a for a in alerts
        if a["labels"]["alertname"].startswith("RoomcastRedis")
        and a["labels"]["instance"] == stack.target
    ] == []


@pytest.mark.timeout(90)
def test_every_dashboard_query_returns_data_in_prometheus(stack: Stack) -> None:
    """Each panel's queries, with the variables set as Grafana would with `server` picked."""
    dashboard = load_dashboard()
    queries = [
        (title, expr.replace("$__rate_interval", "30s").replace("$instance", stack.target))
        for title, expr in dashboard_queries(dashboard)
    ]
    assert not [expr for _, expr in queries if "$" in expr]
    for name in dashboard_variable_metrics(dashboard):
        series = stack.prometheus.api("series", **{"match[]": name})
        assert sorted(s["instance"] for s in series) == sorted([stack.target, stack.island_target])

    def empty() -> list[tuple[str, str]]:
        return [(title, expr) for title, expr in queries if not stack.prometheus.query(expr)]

    missing = empty()
    deadline = time.monotonic() + 30
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = empty()
    assert missing == []
    connections = stack.prometheus.query(
        next(expr for title, expr in queries if title == "Open connections")
    )
    assert [(s["metric"], s["value"][1]) for s in connections] == [
        ({"instance": stack.target}, "3")
    ]
    refused = stack.prometheus.query(
        next(expr for title, expr in queries if title.startswith("Upgrades refused"))
    )
    # every reason has its series from the first scrape (0 until it happens)
    assert sorted(s["metric"]["reason"] for s in refused) == sorted(RefusalReason)


@pytest.mark.timeout(90)
def test_the_first_refusal_of_its_kind_rises_in_increase(stack: Stack) -> None:
    """Its reason was scraped at 0 before it happened, so increase() sees the one refusal; a
    series born at 1 reads 0 there for ever, and an alert such as RoomcastAtConnectionLimit
    (``increase(...{reason="max_connections"}[5m]) > 0``) would miss the first refusal."""
    series = f'roomcast_handshakes_refused_total{{instance="{stack.target}", reason="bad_request"}}'
    risen = poll("the refusal in increase()",
                 lambda: stack.prometheus.query(f"increase({series}[1m]) > 0"))
    assert [s["metric"]["reason"] for s in risen] == ["bad_request"]


@pytest.mark.timeout(90)
def test_redis_outage_raises_the_redis_alerts_in_prometheus(stack: Stack) -> None:
    prometheus = stack.prometheus
    island = f'{{instance="{stack.island_target}"}}'
    assert values(prometheus.query(f"roomcast_broker_up{island}")) == [1]
    stack.island_redis.stop()

    def raised() -> set[str]:
        return {
            a["labels"]["alertname"]
            for a in prometheus.api("alerts")["alerts"]
            if a["labels"].get("instance") == stack.island_target and a["state"] == "pending"
        }

    # both have a `for:` of a minute or more: pending is what a few seconds can show
    poll("RoomcastRedisLinkDown and RoomcastNotReady pending",
         lambda: {"RoomcastRedisLinkDown", "RoomcastNotReady"} <= raised())
    down = prometheus.query("roomcast_broker_up == 0")
    assert [s["metric"]["instance"] for s in down] == [stack.island_target]
