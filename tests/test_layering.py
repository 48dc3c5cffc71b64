"""Dependency direction is checked, not hoped for.

anet/ never imports kfp (nor components/pipelines); the model, data, losses, engine and evaluation
modules never import mlflow, boto3, dvc or optuna at module level (the MLOps code lives in
anet/mlops and is imported lazily by callers).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"mlflow", "boto3", "botocore", "dvc", "optuna", "kfp"}
CORE = ["anet/model", "anet/data", "anet/losses.py", "anet/engine.py", "anet/evaluation", "anet/config.py"]


def _imports(tree: ast.AST, module_level_only: bool) -> set[str]:
    found: set[str] = set()
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif module_level_only and isinstance(node, (ast.If, ast.Try, ast.With)):
            # imports under a module-level if/try still run at import time
            stack.extend(getattr(node, "body", []) + getattr(node, "orelse", []))
            stack.extend(h for handler in getattr(node, "handlers", []) for h in handler.body)
    return found


def _py_files(*parts: str) -> list[Path]:
    files: list[Path] = []
    for part in parts:
        path = ROOT / part
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else [])
    return files


def test_anet_never_imports_kfp_or_the_pipeline_layers():
    offenders = {
        str(f.relative_to(ROOT)): sorted(bad)
        for f in _py_files("anet")
        if (bad := _imports(ast.parse(f.read_text()), module_level_only=False) & {"kfp", "components", "pipelines"})
    }
    assert offenders == {}


def test_core_modules_do_not_import_mlops_libraries_at_module_level():
    offenders = {
        str(f.relative_to(ROOT)): sorted(bad)
        for f in _py_files(*CORE)
        if (bad := _imports(ast.parse(f.read_text()), module_level_only=True) & HEAVY)
    }
    assert offenders == {}


def test_importing_the_core_library_loads_no_mlops_library():
    modules = [
        ".".join(f.relative_to(ROOT).with_suffix("").parts)
        for f in _py_files(*CORE)
        if f.name != "__main__.py"
    ]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m.removesuffix('.__init__'))\n"
        f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {sorted(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
