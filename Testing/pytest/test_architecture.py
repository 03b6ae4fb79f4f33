"""The package layout keeps its promises: the select-and-apply path never imports training, imports form no
cycle, no module reaches for another's private names, modules and functions stay readable, and only the
task runtimes branch on the task type."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ModelSelectorLib"
SLICER_MODULE = ROOT / "ModelSelector"
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 100


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        out[_module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return out


SOURCES = _sources()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if node.level == 0:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> set[str]:
    """Every ModelSelectorLib module that ``module`` imports, at any depth of the code (function-level
    imports included); ``from pkg import sub`` counts as importing ``pkg.sub`` when ``sub`` is a module."""
    path, tree = SOURCES[module]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            if not target.startswith("ModelSelectorLib"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in SOURCES}
            out |= subs or {target}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ModelSelectorLib")}
    return {m for m in out if m in SOURCES and m != module}


def test_selecting_and_applying_import_no_training_code():
    code = (
        "import sys\n"
        "import ModelSelectorLib.selection.selector, ModelSelectorLib.apply, ModelSelectorLib.demo\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('ModelSelectorLib.training', "
        "'ModelSelectorLib.ranking', 'ModelSelectorLib.starter_zoo')))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_import_cycle():
    graph = {m: _imports(m) for m in SOURCES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_private_names_imported_from_other_modules():
    offenders = []
    for module, (path, tree) in SOURCES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _resolve(module, path, node).startswith(
                "ModelSelectorLib"
            ):
                offenders += [
                    f"{module}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__version__"
                ]
    assert offenders == []


@pytest.mark.parametrize("folder", [PACKAGE, SLICER_MODULE], ids=["library", "slicer-module"])
def test_modules_and_functions_stay_readable(folder):
    long_modules, long_functions = [], []
    for path in sorted(folder.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        n_lines = len(text.splitlines())
        if n_lines > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)} ({n_lines})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.name} ({n})")
    assert long_modules == [] and long_functions == []


def test_only_the_runtimes_branch_on_task_type():
    """No comparison with a task type name outside ModelSelectorLib.models (and the Slicer module has none)."""
    from ModelSelectorLib.models import task_types

    names = set(task_types())
    offenders = []
    files = [(m, p, t) for m, (p, t) in SOURCES.items() if not m.startswith("ModelSelectorLib.models")]
    files += [
        (str(p), p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(SLICER_MODULE.rglob("*.py"))
    ]
    for _module, path, tree in files:
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                consts += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts
                           if isinstance(e, ast.Constant)]  # fmt: skip
                if any(c.value in names for c in consts):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_shared_constants_are_defined_once():
    defined: dict[str, list[str]] = {}
    for module, (_path, tree) in SOURCES.items():
        for node in tree.body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for t in targets:
                if isinstance(t, ast.Name) and t.id.isupper() and not t.id.startswith("_"):
                    defined.setdefault(t.id, []).append(module)
    # a module-level name may recur only where it means something different in each place
    allowed = {"FORMAT"}
    repeated = {k: v for k, v in defined.items() if len(v) > 1 and k not in allowed}
    assert repeated == {}


def test_slicer_module_file_stays_small():
    """``ModelSelector.py`` holds the Module, Widget, Logic and Test classes; the job runner, dependencies and
    self-test data live in ``ModelSelectorSupport/`` beside it."""
    n_lines = len((SLICER_MODULE / "ModelSelector.py").read_text(encoding="utf-8").splitlines())
    assert n_lines < 700
