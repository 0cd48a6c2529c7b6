"""The layout rules of server/: imports flow one way, modules stay small and say what they own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "server"
MAX_LINES = 500


def _module_name(path: Path, root: Path = SERVER) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, root: Path = SERVER) -> set[str]:
    """server.* modules `path` imports at run time: module level and inside functions alike,
    except under ``if TYPE_CHECKING:``."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking_block(node):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("server"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("server"):
                found.add(target)
                for alias in node.names:  # `from . import settings` imports a module
                    candidate = f"{target}.{alias.name}"
                    if _path_of(candidate, root) is not None:
                        found.add(candidate)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(module)
    return {name for name in found if _path_of(name, root) is not None}


def _path_of(module: str, root: Path = SERVER) -> Path | None:
    relative = Path(*module.split("."))
    base = root.parent
    for candidate in (
        base / relative.with_suffix(".py"),
        base / relative.with_suffix(".pyx"),  # compiled (fastpath): a module all the same
        base / relative / "__init__.py",
    ):
        if candidate.exists():
            return candidate
    return None


_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+(\S+)\s+c?import|c?import\s+(\S+))", re.MULTILINE)


def _cython_imports(path: Path) -> set[str]:
    """Every module a .pyx imports or cimports (Cython is no Python: read line by line)."""
    return {m.group(1) or m.group(2) for m in _CYTHON_IMPORT.finditer(path.read_text())}


def _modules(root: Path = SERVER) -> list[Path]:
    return sorted([*root.rglob("*.py"), *root.rglob("*.pyx")])


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in _modules():
        if path.suffix == ".pyx":
            graph[_module_name(path)] = {
                name for name in _cython_imports(path) if name.startswith("server")
            }
        else:
            graph[_module_name(path)] = _imports(path)
    return graph


def _libraries(path: Path) -> set[str]:
    """The top-level packages outside server/ that `path` imports, at run time or not."""
    if path.suffix == ".pyx":
        return {name.split(".")[0] for name in _cython_imports(path) if not name.startswith(".")}
    tree = ast.parse(path.read_text())
    return {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and not node.level
    }


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# The layers of docs/architecture.md, top first: a module imports from its own layer (the graph
# has no cycle) or from those below it, never from one above. A new module must be placed here.
LAYERS: list[tuple[str, set[str]]] = [
    ("entry", {"__main__", "supervisor", "fleet"}),
    ("wiring", {"app", "settings"}),
    ("adapters", {
        "front", "connection", "acceptor", "listening", "http", "gate", "metrics", "retention",
        "heartbeat", "security", "logs", "httpclient", "aggregate", "redis", "redis.broker",
        "redis.joins", "redis.subscriptions", "redis.leases", "redis.repairs", "redis.outage",
        "redis.registry", "redis.positions", "redis.pipeline", "redis.scripts", "redis.link",
        "redis.wire",
    }),
    ("core", {"broker", "core", "history", "delivery"}),
    ("pure parts", {
        "auth", "identity", "admission", "reassembly", "deadlines", "http1", "ratelimit",
    }),
    ("bottom", {
        "state", "protocol", "names", "config", "addresses", "about", "fastpath", "",
    }),
]


def _layer_of(module: str) -> int:
    short = module.removeprefix("server").removeprefix(".")
    for index, (_, members) in enumerate(LAYERS):
        if short in members:
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS (and docs/architecture.md)")


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} ({LAYERS[_layer_of(module)][0]}) imports {target} "
        f"({LAYERS[_layer_of(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if _layer_of(target) < _layer_of(module)
    ]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_the_import_graph_finds_a_planted_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_flow_one_way() -> None:
    graph = _graph()
    assert "server.core" in graph and graph["server.app"], "the graph was read"
    assert "server.fastpath" in graph["server.delivery"], "compiled modules are in the graph"
    assert _cycle(graph) is None


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    graph = _graph()
    assert _upward(graph) == []
    planted = {**graph, "server.names": {"server.metrics"}}  # the bottom reaching up
    assert _upward(planted) == ["server.names (bottom) imports server.metrics (adapters)"]


def test_every_module_is_drawn_in_the_architecture_page() -> None:
    page = (SERVER.parent / "docs" / "architecture.md").read_text()
    drawn = page[page.index("## Layers") : page.index("## The path of a connection")]
    for _, members in LAYERS:
        for module in members - {""}:
            assert re.search(rf"(?<![\w./]){re.escape(module.split('.')[-1])}(?![\w])", drawn), (
                f"{module} is not in docs/architecture.md's layers"
            )


def test_function_local_imports_count_and_type_checking_ones_do_not(tmp_path: Path) -> None:
    root = tmp_path / "server"
    (root / "sub").mkdir(parents=True)
    for name in ("__init__", "b", "c", "sub/__init__", "sub/d"):
        (root / f"{name}.py").write_text("")
    (root / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .c import y\n"
        "def f():\n    from .b import x\n"
        "def g():\n    from .sub import d\n"
    )
    (root / "sub" / "e.py").write_text("from ..b import x\n")
    assert _imports(root / "a.py", root) == {"server.b", "server.sub", "server.sub.d"}
    assert _imports(root / "sub" / "e.py", root) == {"server.b"}


def test_no_module_is_over_the_size_limit_and_each_says_what_it_owns() -> None:
    for path in _modules():
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path.relative_to(SERVER)} has {lines} lines"
        if path.suffix == ".pyx":
            opens = path.read_text().lstrip().startswith(('"""', "#"))
            assert opens, f"{path.relative_to(SERVER)} does not open with what it owns"
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and len(docstring) > 30, f"{path.relative_to(SERVER)} has no docstring"


IO = {"asyncio", "socket", "picows", "uvloop", "redis", "ssl", "selectors"}
# Checking options at start resolves --host and parses --redis-url with redis-py's own parser;
# the parts below only read the Config that produced.
CHECKED_AT_START = {"server.addresses"}


def test_the_core_is_pure_and_metrics_reads_only_the_server_state() -> None:
    """What decides what a client sees reaches no I/O library through anything it imports; the
    core's one way out is the fan-out's send(), in the compiled server.fastpath, which delivery
    hands socket numbers (and which member writers stand in for in the core's tests)."""
    graph = _graph()
    assert graph["server.metrics"] == {"server.state", "server.about"}  # about: a leaf
    pure_modules = (
        "server.names", "server.protocol", "server.reassembly", "server.admission",
        "server.auth", "server.identity", "server.deadlines", "server.state", "server.ratelimit",
        "server.http1", "server.history",
    )
    for pure in pure_modules:
        for module in _reachable(graph, pure) - CHECKED_AT_START:
            used = _libraries(_path_of(module) or Path()) & IO
            assert not used, f"{pure} reaches {sorted(used)} through {module}"
    for decider in ("server.core", "server.delivery", "server.broker"):
        for module in _reachable(graph, decider) - CHECKED_AT_START - {"server.fastpath"}:
            used = _libraries(_path_of(module) or Path()) & IO
            assert not used, f"{decider} reaches {sorted(used)} through {module}"
    assert _libraries(SERVER / "fastpath.pyx") & IO == {"picows"}  # the seam, and only it
    # the core does not build a broker: it is handed one
    assert not {"server.broker", "server.redis"} & graph["server.core"]
