"""The package as users get it: a wheel loads every spec; layering; the parameters cell sync."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_wheel_built_from_the_repo_loads_every_spec(tmp_path):
    """package-data must carry papers/*.toml and papers/protocols/*.toml: a non-editable
    install of a chapter that uses a protocol would fail otherwise."""
    from repro.papers import all_specs

    import shutil

    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "repro", src / "repro", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("repro-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import json, repro.papers as p; specs = p.all_specs(); "
            "print(json.dumps({'file': p.__file__, 'specs': [s.name for s in specs], "
            "'protocols': sorted({s.info['protocol'] for s in specs if s.info.get('protocol')})}))")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["file"].startswith(str(target))                       # the wheel's copy, not the checkout
    assert got["specs"] == [s.name for s in all_specs()]
    assert got["protocols"] == ["architecture", "distillation", "incremental", "robustness", "uncertainty"]


# Packages whose modules are algorithm code: they take typed configs, never the run.
BELOW_THE_SWEEP = ["repro/layers", "repro/losses", "repro/models", "repro/plots", "repro/data", "repro/train.py",
                   "repro/metrics.py", *[str(p.relative_to(ROOT)) for p in (ROOT / "repro" / "families").glob("*/arms")]]


def _modules(paths: list[str]) -> list[Path]:
    out = []
    for rel in paths:
        p = ROOT / rel
        out += [p] if p.is_file() else sorted(p.rglob("*.py"))
    return out


@pytest.mark.parametrize("path", _modules(BELOW_THE_SWEEP), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_below_the_sweep_imports_the_run(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = (node.module or "")
            names = {a.name for a in node.names}
            # the sweep's result types (Job, SweepResult) are data; the sweep function is not
            assert not (mod.endswith("run") or mod == "repro.records" or mod.endswith(".records")
                        or mod.endswith("sweep") and names - {"Job", "SweepResult", "JobFn"}
                        or "run" in names and mod in ("", "repro")), \
                f"{path.name} imports the run machinery ({mod} {sorted(names)})"
        if isinstance(node, ast.Import):
            assert not any(a.name in ("repro.run", "repro.sweep") for a in node.names), path.name
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [a.arg for a in node.args.args + node.args.kwonlyargs]
            assert "run" not in args, f"{path.name}:{node.lineno} {node.name}() takes the run"


def test_sync_rewrites_a_stale_parameters_cell(tmp_path, monkeypatch):
    from repro import notebooks
    from repro.papers import load_spec

    src = ROOT / "notebooks" / "35-msdropout.ipynb"
    copy = tmp_path / "notebooks" / src.name
    copy.parent.mkdir()
    nb = json.loads(src.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    code[0]["source"] = ["epochs = 1  # stale\n"]
    copy.write_text(json.dumps(nb))
    monkeypatch.setattr(notebooks, "project_root", lambda: tmp_path)
    assert notebooks.sync_parameters("msdropout") == copy
    fresh = json.loads(copy.read_text())
    first = [c for c in fresh["cells"] if c["cell_type"] == "code"][0]
    assert "".join(first["source"]) == load_spec("msdropout").parameters_source()
    assert notebooks.sync_parameters("msdropout") is None          # in step now: nothing to do


def _top_level_imports(path: Path, package: str) -> set[str]:
    """repro modules a module imports at load time (imports inside functions are lazy: skipped)."""
    tree = ast.parse(path.read_text())
    here = package.split(".")
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("repro"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("repro"))
    return out


def test_no_import_cycles():
    """Module-level imports of the package form no cycle (records ↔ train was one)."""
    modules = {}
    for p in (ROOT / "repro").rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        pkg = name if rel.name == "__init__" else name.rsplit(".", 1)[0]
        modules[name] = (p, pkg)
    graph = {m: {d for d in _top_level_imports(p, pkg) if d in modules and d != m} for m, (p, pkg) in modules.items()}
    # A package's __init__ importing its own submodules is not a cycle of the kind that bites.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
