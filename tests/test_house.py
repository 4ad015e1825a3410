"""The house rules: the import graph, and the public API's docstring examples as doctests.

- gan_core imports no ray / mlflow / kfp / components (it is the pure-PyTorch engine);
- gan_core has no import circles, and ``gan_core.config`` imports nothing from gan_core;
- every ``>>>`` example in gan_core and components runs (those marked ``+SKIP`` need a cluster).
"""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("ray", "mlflow", "kfp", "components", "pipelines")


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports, at top level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _modules(package: str) -> dict[str, Path]:
    mods = {}
    for f in (ROOT / package).rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = f
    return mods


GAN_CORE = _modules("gan_core")


def test_gan_core_imports_no_orchestration():
    bad = {m: sorted(i for i in _imports(f) if i.split(".")[0] in FORBIDDEN)
           for m, f in GAN_CORE.items()}
    assert not {m: v for m, v in bad.items() if v}


def test_config_is_a_leaf():
    deps = {i for i in _imports(GAN_CORE["gan_core.config"]) if i.split(".")[0] == "gan_core"}
    assert not deps, f"gan_core.config imports {sorted(deps)}"


def test_gan_core_has_no_import_circle():
    edges = {m: {d for d in _imports(f) if d in GAN_CORE and d != m} for m, f in GAN_CORE.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def dfs(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in edges[u]:
            if state.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif v not in state:
                dfs(v)
        stack.pop()
        state[u] = 2

    for m in sorted(edges):
        if m not in state:
            dfs(m)
    assert not cycles, "\n".join(cycles)


def _doctest_modules() -> list[str]:
    names = []
    for pkg in ("gan_core", "components"):
        for name, f in _modules(pkg).items():
            if ">>>" in f.read_text():
                names.append(name)
    return sorted(names)


@pytest.mark.parametrize("module", _doctest_modules())
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    mod = importlib.import_module(module)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {module}"
