"""The package's layering: nothing lower imports anything higher, and no module import cycles.

Layers, low to high: kernels < model < quant < runtime < calib < the top-level modules and the
``__main__`` CLIs (cli, eval, train, load, pack, size). config, errors, io, budget, metrics,
resize, data, device, distributed, schedule and state are shared utilities any layer may import. Lazy imports inside functions count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "compsrt"
RANK = {"kernels": 0, "model": 1, "quant": 2, "runtime": 3, "calib": 4}
SHARED = {"config", "errors", "io", "budget", "metrics", "resize", "data", "device", "distributed", "schedule",
          "state"}


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("compsrt"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("compsrt"))
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    return {m: {t for t in _imports(p) if t in mods and t != m} for m, p in mods.items()}


def _rank(mod: str) -> int | None:
    parts = mod.split(".")
    if parts[-1] == "__main__":   # a CLI, whatever folder it sits in
        return 5
    if len(parts) > 1 and parts[1] in RANK:
        return RANK[parts[1]]
    if len(parts) > 1 and parts[1] in SHARED:
        return None
    return 5 if len(parts) > 1 else None


def test_nothing_lower_imports_anything_higher():
    bad = []
    for m, targets in _graph().items():
        r = _rank(m)
        for t in targets:
            rt = _rank(t)
            if r is not None and rt is not None and rt > r:
                bad.append(f"{m} -> {t}")
    assert not bad, bad


def test_no_import_cycles():
    g = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in g[m]:
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t] if t in stack else [m, t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m, [m])
    # a package __init__ importing its own submodules is not a cycle worth reporting
    cycles = [c for c in cycles if not all(x.startswith(c[0]) or c[0].startswith(x) for x in c)]
    assert not cycles, cycles
