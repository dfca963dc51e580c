"""The layout shows the architecture: no import cycles between packages, the Envoy adapter is
imported only by the server wiring, and the core never imports an adapter, a stage or the CLI."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import authz

ROOT = Path(authz.__file__).resolve().parent


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _imports(path: Path) -> set[str]:
    """``authz`` modules a file imports at run time (imports only for type checkers are left out)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("authz"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("authz"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def unit(module: str) -> str:
    """A package below the root is one unit; each module of the root is its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def graph() -> dict[str, set[str]]:
    names = {m for m, _ in _modules()}
    edges: dict[str, set[str]] = {}
    for module, path in _modules():
        src = unit(module)
        for target in _imports(path):
            while target not in names and "." in target:
                target = target.rsplit(".", 1)[0]
            dst = unit(target)
            if dst != src and target in names:
                edges.setdefault(src, set()).add(dst)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles_between_packages():
    assert _cycle(graph()) is None, " -> ".join(_cycle(graph()) or [])


def test_the_envoy_adapter_is_imported_only_by_the_server_wiring():
    importers = {src for src, dsts in graph().items() if "authz.envoy" in dsts}
    assert importers <= {"authz.server"}, importers


CORE = ("authz.model", "authz.errors", "authz.pipeline", "authz.request", "authz.matching", "authz.patterns",
        "authz.jsontext", "authz.responses")


def test_the_core_imports_no_adapter_stage_or_cli():
    edges = graph()
    outward = {"authz.envoy", "authz.server", "authz.cli", "authz.dev", "authz.policy", "authz.identity",
               "authz.limits", "authz.redaction", "authz.routing", "authz.audit", "authz.assembly",
               "authz.runtime"}
    for core in CORE:
        assert not edges.get(core, set()) & outward, (core, edges.get(core, set()) & outward)


def test_the_root_holds_entry_points_and_the_core_only():
    root = {p.stem for p in ROOT.glob("*.py")}
    assert root <= {"__init__", "__main__", "model", "errors", "pipeline", "assembly", "config", "schema",
                    "runtime", "server", "http", "responses", "metrics", "logs", "tracing", "jsontext", "jsonfast",
                    "patterns"}, root
