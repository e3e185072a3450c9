"""The import rules: a light core, imports pointing down only, no cycles, the root API.

The core (optimizers, schedules, per-example norms, in-jit diagnostics, models) imports
nothing from the tooling built on it (data, trainer, CLI, sweep, report, plotting), and
``import lars_jax`` loads none of the trainer's heavy dependencies.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lars_jax"
CORE = ("lars_jax.trust_ratio", "lars_jax.alias", "lars_jax.masks", "lars_jax.schedules",
        "lars_jax.per_example", "lars_jax.diagnostics", "lars_jax.models",
        "lars_jax.per_example_nnx", "lars_jax.flax_train_state", "lars_jax.testing")
HEAVY = ("orbax", "matplotlib", "grain", "tensorflow_datasets", "tensorstore", "tqdm",
         "array_record")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_core(name: str) -> bool:
    return name == "lars_jax" or any(name == c or name.startswith(c + ".") for c in CORE)


def _imports(name: str) -> set[str]:
    """The lars_jax modules `name` imports anywhere in its source (functions included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for a in node.names:  # `from pkg import submodule` imports the submodule
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in out if m == "lars_jax" or m.startswith("lars_jax.")}


GRAPH = {name: _imports(name) for name in MODULES}


def test_the_graph_sees_known_edges():
    """The parser finds real imports (so the rules below are not vacuous)."""
    assert "lars_jax.alias" in GRAPH["lars_jax"]
    assert "lars_jax.trust_ratio" in GRAPH["lars_jax.alias"]
    assert "lars_jax.train.build" in GRAPH["lars_jax.train.loop"]
    assert "lars_jax.train.parallel" in GRAPH["lars_jax.train.build"]
    assert "lars_jax.models" in GRAPH["lars_jax.train.build"]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _is_core(n)))
def test_core_imports_no_tooling(name):
    tooling = sorted(m for m in GRAPH[name] if not _is_core(m))
    assert not tooling, f"{name} (core) imports tooling: {tooling}"


def test_only_the_root_package_imports_the_root():
    """No module reaches back up through ``import lars_jax`` (it would load the core API)."""
    offenders = sorted(n for n, deps in GRAPH.items() if "lars_jax" in deps)
    assert offenders == [], offenders


def test_no_import_cycles():
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH.get(name, ())):
            if dep not in GRAPH:
                continue
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_import_lars_jax_is_light_and_exposes_the_train_subpackage():
    """``import lars_jax`` loads no trainer dependency; ``lars_jax.train`` is the subpackage.

    Before the redesign the root re-exported the function ``train``, so
    ``lars_jax.train.TrainConfig`` failed, and the root imported orbax and tensorstore.
    Before issue 30, ``lars_jax.testing`` raised AttributeError after ``import lars_jax``;
    it is now loaded on first access, like the tooling.
    """
    code = (
        "import json, sys\n"
        "import lars_jax\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "names = [n for n in lars_jax.__all__ if not hasattr(lars_jax, n)]\n"
        "eager = 'lars_jax.testing' in sys.modules\n"
        "testing = callable(lars_jax.testing.assert_matches_reference)\n"
        "cfg = lars_jax.train.TrainConfig(batch_size=128)\n"
        "print(json.dumps({'heavy': heavy, 'missing': names, 'batch': cfg.batch_size,\n"
        "                  'train_is_module': type(lars_jax.train).__name__,\n"
        "                  'fn': callable(lars_jax.train.train), 'testing': testing,\n"
        "                  'eager': eager}))\n"
    )
    env_path = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": env_path, "JAX_PLATFORMS": "cpu",
                                        "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"heavy": [], "missing": [], "batch": 128, "train_is_module": "module",
                   "fn": True, "testing": True, "eager": False}


def test_unknown_root_attribute_raises():
    import lars_jax

    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        lars_jax.trian  # noqa: B018
