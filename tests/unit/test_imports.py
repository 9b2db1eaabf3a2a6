"""The package's import graph has no cycle, and only the controller's driver does I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import tidewater

ROOT = Path(tidewater.__file__).parent


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every tidewater module ``path`` imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("tidewater"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("tidewater"):
                continue
            out.add(target)
            for a in node.names:  # `from . import admin` names a module
                out.add(f"{target}.{a.name}")
    return out


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: {i for i in imports(p) if i in mods and i != m} for m, p in mods.items()}


def test_no_import_cycle() -> None:
    g = graph()
    # Importing a package runs its __init__, which is not a cycle of modules.
    g = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in g.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


IO_MODULES = ("anyio", "aiohttp", "aiosqlite", "asyncpg", "sqlite3", "socket", "time",
              "websockets", "subprocess")


def test_only_the_driver_and_the_transport_do_io_in_the_controller() -> None:
    pure = {"admin", "effects", "state", "requests", "tasks", "pilots", "jobs", "registry",
            "notify", "staging", "access", "validate", "model", "dispatch", "leases", "auth",
            "timings"}
    offenders = {}
    for name in sorted(pure):
        tree = ast.parse((ROOT / "controller" / f"{name}.py").read_text())
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                used.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                used.add(node.module.split(".")[0])
            elif isinstance(node, ast.Await | ast.AsyncFunctionDef):
                used.add("await")
        bad = used & {*IO_MODULES, "await"}
        if bad:
            offenders[name] = sorted(bad)
    assert offenders == {}
