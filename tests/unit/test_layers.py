"""The house rule, read from the imports: the pure core does no I/O, a layer never imports one above it, no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "prewarm"

# Lowest first. A module may import its own layer's package and any layer below; net and aws are siblings that
# do not import each other. The testbed is a tool beside the product: it uses the core only, and only the CLI (which
# has ``prewarm testbed`` and ``prewarm demo``) uses it.
LAYERS: dict[str, int] = {
    "prewarm.core": 0, "prewarm.schema": 0, "prewarm.settings": 0,
    "prewarm.net": 1, "prewarm.aws": 1, "prewarm.client": 1,
    "prewarm.engine": 2, "prewarm.analysis": 2,
    "prewarm.api": 3,
    "prewarm.cli": 4,
}
TESTBED_MAY_IMPORT = ("prewarm.core", "prewarm.testbed")
PURE = ("prewarm.core", "prewarm.schema", "prewarm.settings")
# What the pure core must not reach: Ray, sockets and TLS, DNS, AWS, SQLite, threads and processes, HTTP.
BANNED_IN_PURE = ("ray", "socket", "ssl", "dns", "boto3", "botocore", "sqlite3", "threading", "subprocess",
                  "multiprocessing", "concurrent", "aiohttp", "http", "urllib.request", "requests")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
KNOWN = set(MODULES)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function; not those under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & KNOWN
            found.update(submodules)  # ``from pkg import module`` imports the module, not the package's names
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found




def layer_of(module: str) -> tuple[str, int] | None:
    for prefix, level in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, level
    return None


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def own_imports(module: str) -> set[str]:
    return {m for m in imports(MODULES[module]) if m in MODULES and m != module}


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if m != "prewarm" and layer_of(m) is None and not within(m, ("prewarm.testbed",))]
    assert unplaced == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if within(m, PURE)))
def test_the_pure_core_does_no_io(module: str) -> None:
    banned = sorted(m for m in imports(MODULES[module]) if within(m, BANNED_IN_PURE))
    assert banned == [], f"{module} imports {banned}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m)))
def test_no_layer_imports_one_above_it(module: str) -> None:
    home, level = layer_of(module)  # type: ignore[misc]
    wrong = []
    for target in own_imports(module):
        placed = layer_of(target)
        if placed is None:
            if within(target, ("prewarm.testbed",)) and home != "prewarm.cli":
                wrong.append(target)
            continue
        where, target_level = placed
        if target_level > level or (target_level == level and where != home and level > 0):
            wrong.append(target)
    assert sorted(wrong) == [], f"{module} (layer {level}) imports {sorted(wrong)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if within(m, ("prewarm.testbed",))))
def test_the_testbed_uses_the_core_only(module: str) -> None:
    wrong = sorted(t for t in own_imports(module) if t != "prewarm" and not within(t, TESTBED_MAY_IMPORT))
    assert wrong == [], f"{module} imports {wrong}"


def test_no_import_cycles() -> None:
    graph = {m: {t for t in own_imports(m) if t != "prewarm"} for m in MODULES}
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        path.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)


def test_the_checks_see_a_breach() -> None:
    """The readers above must find what they look for, or every test here passes vacuously."""
    assert "prewarm.core.results" in own_imports("prewarm.core.report")
    assert layer_of("prewarm.engine.state") == ("prewarm.engine", 2)
    assert within("ray.util", BANNED_IN_PURE) and not within("rayon", BANNED_IN_PURE)
    assert {"ray", "sqlite3"} <= imports(MODULES["prewarm.engine.store"]) | imports(MODULES["prewarm.engine.state"])
    assert "prewarm.api.app" in own_imports("prewarm.api.service")  # a layer-3 import the rule would refuse below


@pytest.mark.parametrize("module", ["prewarm.engine.fetcher", "prewarm.engine.coordinator"])
def test_an_actor_process_loads_no_pandas_and_no_boto3(module: str) -> None:
    code = (f"import sys, {module}; heavy = [m for m in ('pandas', 'boto3', 'botocore', 'matplotlib') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


def test_a_unit_test_cannot_start_ray() -> None:
    import ray

    with pytest.raises(RuntimeError, match="must not start Ray"):
        ray.init(num_cpus=1)
