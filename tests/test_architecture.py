"""The layout rules of server/: imports flow one way, modules stay small and say what they own."""

from __future__ import annotations

import ast
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
    for candidate in (base / relative.with_suffix(".py"), base / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in sorted(SERVER.rglob("*.py"))}


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
    assert _cycle(graph) is None


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
    for path in sorted(SERVER.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path.relative_to(SERVER)} has {lines} lines"
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and len(docstring) > 30, f"{path.relative_to(SERVER)} has no docstring"


def test_the_core_is_pure_and_metrics_reads_only_the_server_state() -> None:
    graph = _graph()
    assert graph["server.metrics"] == {"server.state", "server.about"}  # about: a leaf
    pure_modules = (
        "server.core", "server.delivery", "server.names", "server.protocol", "server.reassembly",
        "server.admission", "server.auth", "server.deadlines", "server.state", "server.ratelimit",
    )
    for pure in pure_modules:
        source = (_path_of(pure) or Path()).read_text()
        tree = ast.parse(source)
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and not node.level
        }
        assert not imported & {"asyncio", "socket", "picows", "uvloop", "redis"}, pure
    # the core does not build a broker: it is handed one
    assert not {"server.broker", "server.redis"} & graph["server.core"]
