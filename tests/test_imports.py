"""The import graph of ``src/textrec``: no cycle, and serving never imports the training code.

The graph is read from the source with ``ast`` (no module is imported), counting imports at module level
and inside functions alike: a function-level import hides a cycle from Python's import machinery, not from
the code's structure.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import textrec
import textrec.models
from textrec.models import MODELS

SRC = Path(__file__).resolve().parents[1] / "src"
TRAINING = ("textrec.train.loop", "textrec.train.run", "textrec.train.transfer", "textrec.train.newcatalogue")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The textrec modules ``module`` imports anywhere in its body (``from a import b``: ``a.b`` when it is a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    found.discard(module)
    return found


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    files = {_module_name(p, root): p for p in sorted((root / "textrec").rglob("*.py"))}
    known = set(files)
    return {m: _imports(ast.parse(p.read_text(encoding="utf-8")), m, p.name == "__init__.py", known) for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (ignoring a package importing its own submodules'
    parent, which Python resolves)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if m.startswith(n + "."):  # a submodule importing its own package's __init__: not a cycle of code
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in graph.get(m, ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "textrec.runs" in graph and graph["textrec.train.run"], "the graph was not read"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_serve_imports_nothing_from_train():
    graph = import_graph()
    serve = [m for m in graph if m == "textrec.serve" or m.startswith("textrec.serve.")]
    assert serve
    direct = {(m, n) for m in serve for n in graph[m] if n == "textrec.train" or n.startswith("textrec.train.")}
    assert not direct, f"serve imports train: {sorted(direct)}"
    # nor through another module: loading a run for serving never loads the training loop or the recipes
    for m in serve:
        assert not reachable(graph, m) & set(TRAINING), f"{m} reaches {sorted(reachable(graph, m) & set(TRAINING))}"


def test_runs_does_not_reach_the_training_loop():
    assert not reachable(import_graph(), "textrec.runs") & set(TRAINING)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "textrec" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_cycle_hidden_in_a_function_level_import_is_found(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "",
        "train/__init__.py": "",
        "train/run.py": "from textrec.train.loop import fit\n",
        "train/loop.py": "def fit():\n    from textrec.train import run\n",
        "other.py": "import textrec.train.loop\n",
    })
    graph = import_graph(root)
    assert "textrec.train.run" in graph["textrec.train.loop"]
    assert find_cycle(graph) in (["textrec.train.loop", "textrec.train.run", "textrec.train.loop"],
                                 ["textrec.train.run", "textrec.train.loop", "textrec.train.run"])


@pytest.mark.parametrize("line", ["from textrec.train.run import load_run", "from ..train import run",
                                  "import textrec.train.loop as loop"])
def test_a_serve_to_train_import_is_found(tmp_path, line):
    root = _write(tmp_path, {"__init__.py": "", "train/__init__.py": "", "train/run.py": "", "train/loop.py": "",
                             "serve/__init__.py": "", "serve/app.py": f"def handler():\n    {line}\n"})
    graph = import_graph(root)
    assert graph["textrec.serve.app"] & {"textrec.train", "textrec.train.run", "textrec.train.loop"}
    assert find_cycle(graph) is None


# ---- the registry ------------------------------------------------------------------------------------
def test_importing_the_registry_imports_no_model_module():
    probe = ("import textrec.models, sys; print('textrec.models.vqrec' in sys.modules); "
             "print([m for m in sys.modules if m.startswith('textrec.models.') and m != 'textrec.models.spec'])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["False", "[]"]


def _sources(*parts: str) -> list[Path]:
    root = Path(textrec.__file__).parent
    files = []
    for part in parts:
        path = root / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert files
    return files


def test_no_model_module_imports_the_training_code():
    for path in _sources("models"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "textrec.train" or n.startswith("textrec.train.") for n in names), f"{path.name}: {names}"


HELP_KEYWORDS = ("help", "description", "epilog")  # argparse text may name models (and the "unisrec" data format)


def _prose(tree) -> set[int]:
    """ids of the string constants that are docstrings or argparse help text: allowed to name a model."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg in HELP_KEYWORDS:
            ids.update(id(n) for n in ast.walk(node.value) if isinstance(n, ast.Constant))
    return ids


def test_generic_code_has_no_model_name_switch():
    pattern = re.compile(rf"\b({'|'.join(map(re.escape, MODELS))})\b")
    offenders = []
    for path in _sources("train", "serve", "cli.py"):
        text = path.read_text()
        assert not re.search(r"\.model\s*(==|!=|\bin\b)", text), f"{path.name} switches on the model name"
        tree = ast.parse(text)
        prose = _prose(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                if pattern.search(node.value):
                    offenders.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not offenders, offenders
