"""The house: packages by stage, imports only downward, no cycles, no module too long to read in a
sitting. Read from the package's own imports (``ast``: nothing is run)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "vlmqc"
# the stages, lowest first (README's Architecture): a module may import its own stage's modules and
# lower ones, never a higher one
STAGES = [
    ("vlmqc.labels", "vlmqc.files", "vlmqc.console"),
    ("vlmqc.metrics",),
    ("vlmqc.config",),
    ("vlmqc.devices", "vlmqc.prompts", "vlmqc.answers", "vlmqc.choice", "vlmqc.tasks"),
    ("vlmqc.models", "vlmqc.data"),
    ("vlmqc.preflight", "vlmqc.features", "vlmqc.collate"),
    ("vlmqc.runs",),
    ("vlmqc.evaluation",),
    ("vlmqc.training",),
    ("vlmqc.inspector", "vlmqc.preview"),
    ("vlmqc.compare", "vlmqc.serve"),
    ("vlmqc.cli",),
    ("vlmqc.train", "vlmqc.predict", "vlmqc.inspect", "vlmqc.rescore", "vlmqc.__main__"),  # python -m vlmqc.<command>
]
MAX_LINES = 450


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports() -> dict[str, set[str]]:
    """Each module's vlmqc imports, as the modules they resolve to."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith("vlmqc") and (r := resolve(t)) and r != name and not name.startswith(r + "."):
                    found.add(r)
        edges[name] = found
    return edges


def stage(module: str) -> int:
    if module.endswith(".__main__"):  # python -m vlmqc.data / .serve / .compare: the command's entry
        return len(STAGES) - 1
    for i, names in enumerate(STAGES):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module}: in no stage of tests/test_house.py (and README's Architecture)")


def test_every_import_runs_downward_or_within_its_stage():
    upward = [
        f"{a} -> {b}"
        for a, targets in imports().items()
        if a != "vlmqc"
        for b in targets
        if b != "vlmqc" and stage(b) > stage(a)
    ]
    assert upward == []


def test_no_import_cycles():
    edges = imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(v: str, trail: list[str]) -> None:
        state[v] = 1
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                cycles.append(" -> ".join([*trail[trail.index(w) :], w]))
            elif w not in state:
                visit(w, [*trail, w])
        state[v] = 2

    for v in sorted(edges):
        if v not in state:
            visit(v, [v])
    assert cycles == []


def test_no_module_is_over_450_lines():
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
