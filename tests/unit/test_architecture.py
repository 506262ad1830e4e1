"""The import rules of docs/architecture.md, checked on the code itself.

Why a test: an import cycle (even through an import hidden inside a function) means two modules
cannot be understood, tested or replaced apart; the issue that untangled them (#12) asks that
none come back. The complexity ceiling keeps the pure decision and protection code readable.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"


def _modules(root: Path, package: Path) -> dict[str, Path]:
    mods = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def import_graph(root: Path = ROOT, package: Path = PACKAGE) -> dict[str, set[str]]:
    """module → modules of the package it imports, anywhere in the file (functions included).

    Importing `a.b.c` runs the package `a.b` first, so that edge counts too."""
    mods = _modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                # the packages a target lives in run first
                chain = target.split(".")
                for i in range(1, len(chain) + 1):
                    step = ".".join(chain[:i])
                    if step in mods and step != name and not name.startswith(step + "."):
                        graph[name].add(step)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_a_cycle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_checker_reads_imports_inside_functions_and_packages(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg import a\n")
    (pkg / "a.py").write_text("def late():\n    from . import b\n    return b\n")
    (pkg / "b.py").write_text("import pkg.sub.c\n")
    (pkg / "sub" / "c.py").write_text("X = 1\n")
    graph = import_graph(tmp_path, pkg)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub"]]


def test_no_import_cycles_between_gateway_modules() -> None:
    assert cycles(import_graph()) == []


def test_delivery_does_not_import_the_pipeline() -> None:
    """Delivery moves prepared bytes; it never decides or protects (issue 12)."""
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("gateway.delivery"):
            assert not {t for t in targets if t.startswith(("gateway.pipeline", "gateway.stages"))}, name


def test_pure_layers_do_not_import_the_server_spool_or_delivery() -> None:
    graph = import_graph()
    io_layers = ("gateway.server", "gateway.spool", "gateway.delivery", "gateway.runner", "gateway.app",
                 "gateway.commands", "gateway.intake", "gateway.ops", "gateway.console")
    for name, targets in graph.items():
        if name.startswith(("gateway.smime", "gateway.legacy", "gateway.routing", "gateway.stages")):
            assert not {t for t in targets if t.startswith(io_layers)}, name


def _importers(graph: dict[str, set[str]], prefix: str) -> set[str]:
    return {name for name, targets in graph.items() if not name.startswith(prefix)
            and any(t == prefix or t.startswith(prefix + ".") for t in targets)}


def test_operations_read_state_and_sit_above_the_message_path() -> None:
    """Issue 16 (docs/architecture.md, sections 3 and 9): the doors, the queue and delivery call
    the counters of `gateway.ops.metrics` and nothing else of `ops`; only `gateway.app` starts the
    metrics listener and the console; `ops` and `console` read state, they never decide about or
    move a message, and `ops` never imports the console."""
    graph = import_graph()
    started_by = {"gateway.app", "gateway.ops", "gateway.ops.httpd", "gateway.console", "gateway.console.web"}
    for name in _importers(graph, "gateway.ops"):
        if name in started_by or name.startswith("gateway.commands"):
            continue
        assert {t for t in graph[name] if t.startswith("gateway.ops")} <= {"gateway.ops", "gateway.ops.metrics"}, name
    assert _importers(graph, "gateway.console") <= {"gateway.app"}
    deciding = ("gateway.pipeline", "gateway.stages", "gateway.delivery", "gateway.runner", "gateway.queueworker",
                "gateway.intake", "gateway.cisis", "gateway.lps", "gateway.app", "gateway.workers")
    for name, targets in graph.items():
        if name.startswith(("gateway.ops", "gateway.console")):
            assert not {t for t in targets if t.startswith(deciding)}, name
        if name.startswith("gateway.ops"):
            assert not {t for t in targets if t.startswith("gateway.console")}, name


def test_the_counters_sit_below_the_code_that_calls_them() -> None:
    """`gateway.ops.metrics` is called by the SMTP server, the intake doors, the runner and delivery:
    it (and the inventory it reads lazily, `ops.status`) imports only the ground and the S/MIME
    library, never a door, the queue or the running gateway."""
    graph = import_graph()
    allowed = ("gateway.config", "gateway.logs", "gateway.errors", "gateway.smime", "gateway.ops.status")
    for name in ("gateway.ops.metrics", "gateway.ops.status"):
        assert {t for t in graph[name] if not t.startswith(allowed)} == set(), name


#: The CI-SIS profile's pure part (reading, deciding, building): no I/O layer, no ledger or sender.
CISIS_PURE = ("gateway.cisis.model", "gateway.cisis.reader", "gateway.cisis.matrix", "gateway.cisis.plan",
              "gateway.cisis.mssmail", "gateway.cisis.cdapdf", "gateway.cisis.zam", "gateway.cisis.returns")


def test_the_cisis_decisions_are_pure() -> None:
    graph = import_graph()
    forbidden = ("gateway.server", "gateway.spool", "gateway.delivery", "gateway.runner", "gateway.app",
                 "gateway.commands", "gateway.intake", "gateway.stages", "gateway.smime", "gateway.cisis.ledger",
                 "gateway.cisis.zamsender", "gateway.cisis.gestionnaire")
    for name in CISIS_PURE:
        assert name in graph, name
        assert not {t for t in graph[name] if t.startswith(forbidden)}, name


#: What the libraries may import outside their own package (docs/architecture.md, section 3).
LIBRARY_IMPORTS = {
    "gateway.smime": {"gateway.errors", "gateway.rawmime", "gateway.filemodes"},
    "gateway.routing": {"gateway.errors", "gateway.safexml"},
    "gateway.safexml": set(),
    "gateway.legacy": {"gateway.errors", "gateway.rawmime", "gateway.filemodes", "gateway.fsutil", "gateway.logs"},
    "gateway.pipeline": set(),
    "gateway.spool": {"gateway.errors", "gateway.fsutil", "gateway.filemodes", "gateway.logs"},
    "gateway.rawmime": {"gateway.errors"},
    "gateway.fsutil": {"gateway.filemodes"},
    "gateway.errors": set(),
    "gateway.sdnotify": set(),
}


@pytest.mark.parametrize("package", sorted(LIBRARY_IMPORTS))
def test_libraries_import_only_the_ground_below_them(package: str) -> None:
    graph = import_graph()
    outside = {t for name, targets in graph.items() if name == package or name.startswith(package + ".")
               for t in targets if t != package and not t.startswith(package + ".")}
    assert outside <= LIBRARY_IMPORTS[package], sorted(outside - LIBRARY_IMPORTS[package])


def test_stages_and_smime_stay_below_complexity_15() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is needed (it is in the test extras)")
    result = subprocess.run(
        [ruff, "check", "--no-cache", "--select", "C901", "--config", "lint.mccabe.max-complexity=15",
         "--output-format", "concise", "gateway/stages", "gateway/smime"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
