"""The engine's module structure: no import circle, inference never needs the training loop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "gan_core" / "engine"


def _imports(py: Path) -> set[str]:
    """Every module a file imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(py.read_text(), str(py))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _engine_graph() -> dict[str, set[str]]:
    mods = {p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for m in mods:
        imps = _imports(ENGINE / f"{m}.py")
        assert "gan_core.engine" not in imps, f"engine/{m}.py imports the package: import its modules"
        graph[m] = {d for d in mods if f"gan_core.engine.{d}" in imps}
    return graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    return seen


def test_engine_modules_have_no_import_circle():
    graph = _engine_graph()
    assert {"checkpoint", "infer", "loop", "validate"} <= set(graph)
    for m in graph:
        assert m not in _reach(graph, m), f"import circle through gan_core.engine.{m}"
    assert "loop" not in _reach(graph, "infer") and "loop" not in _reach(graph, "validate")
    assert _reach(graph, "checkpoint") == set()


def test_engine_stays_pure_pytorch_and_below_it_nothing_imports_it():
    banned = ("ray", "mlflow", "kfp", "components")
    for py in ENGINE.glob("*.py"):
        bad = [i for i in _imports(py) if i.split(".")[0] in banned]
        assert not bad, f"{py.name} imports {bad}"
    for sub in ("frameworks", "tasks", "data", "models"):
        for py in (ROOT / "gan_core" / sub).rglob("*.py"):
            bad = [i for i in _imports(py) if i.startswith("gan_core.engine")]
            assert not bad, f"{py.relative_to(ROOT)} imports {bad} (the engine sits above it)"


def test_the_old_modules_are_gone():
    assert not (ROOT / "gan_core" / "train.py").exists()
    assert not (ROOT / "gan_core" / "translate.py").exists()
    import gan_core.engine as engine

    for name in engine.__all__:
        assert hasattr(engine, name), name
