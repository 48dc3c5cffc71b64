"""Dependency direction is checked, not hoped for.

* ``anet/`` never imports kfp, ``components`` or ``pipelines``; ``components`` never imports ``pipelines``.
* Inside ``anet/`` the rooms form a declared order (:data:`ORDER`, lowest first): a module imports
  only from its own room or a lower one, so no arrow runs back up a layer and no folder loop exists.
* The core rooms never import mlflow, boto3, dvc, optuna or kfp, not even lazily; those live in
  ``anet/mlops`` (and above), and even there only inside functions (importing the library stays cheap).
* A function-local import of a project module needs a ``# lazy: <why>`` marker on its line.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"mlflow", "boto3", "botocore", "dvc", "optuna", "kfp"}
# anet's rooms, lowest first; rooms on one line may not import each other.
ORDER: list[tuple[str, ...]] = [
    ("errors", "io", "logs", "contract"),
    ("config",),
    ("model",),
    ("losses",),
    ("data",),
    ("train",),
    ("evaluation",),
    ("synthetic",),
    ("mlops",),
    ("search",),
    ("steps",),
    ("cli",),
    ("__main__",),
]
CORE = ("errors", "io", "logs", "contract", "config", "model", "losses", "data", "train", "evaluation", "synthetic")
PROJECT = ("anet", "components", "pipelines")


def _rank(room: str) -> int:
    return next(i for i, rooms in enumerate(ORDER) if room in rooms)


def _room(path: Path) -> str:
    parts = path.relative_to(ROOT / "anet").with_suffix("").parts
    return parts[0] if parts[0] != "__init__" else "errors"


def _module_room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "anet" and len(parts) > 1 else None


def _import_nodes(tree: ast.AST) -> list[tuple[ast.AST, bool]]:
    """Every import with whether it sits inside a function."""
    out: list[tuple[ast.AST, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.append((child, in_function))
            visit(child, inner)

    visit(tree, False)
    return out


def _modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == "anet":
            return [f"anet.{alias.name}" for alias in node.names]
        return [node.module]
    return []


def _py_files(*parts: str) -> list[Path]:
    files: list[Path] = []
    for part in parts:
        path = ROOT / part
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else [])
    return files


def _core_files() -> list[Path]:
    return [f for f in _py_files("anet") if _room(f) in CORE]


def test_anet_never_imports_kfp_or_the_pipeline_layers():
    offenders = {
        str(f.relative_to(ROOT)): sorted(bad)
        for f in _py_files("anet")
        if (bad := {m.split(".")[0] for n, _ in _import_nodes(ast.parse(f.read_text())) for m in _modules(n)}
            & {"kfp", "components", "pipelines"})
    }
    assert offenders == {}


def test_components_never_import_pipelines():
    offenders = [str(f.relative_to(ROOT)) for f in _py_files("components")
                 if any(m.split(".")[0] == "pipelines" for n, _ in _import_nodes(ast.parse(f.read_text()))
                        for m in _modules(n))]
    assert offenders == []


def test_anet_rooms_only_import_their_own_or_lower_rooms():
    offenders = []
    for f in _py_files("anet"):
        room = _room(f)
        for node, _ in _import_nodes(ast.parse(f.read_text())):
            for module in _modules(node):
                target = _module_room(module)
                if target and target != room and _rank(target) >= _rank(room):
                    offenders.append(f"{f.relative_to(ROOT)}:{node.lineno} ({room}) imports {module} ({target})")
    assert offenders == []


def test_core_rooms_never_import_mlops_libraries():
    offenders = [
        f"{f.relative_to(ROOT)}:{node.lineno} {module}"
        for f in _core_files()
        for node, _ in _import_nodes(ast.parse(f.read_text()))
        for module in _modules(node)
        if module.split(".")[0] in HEAVY
    ]
    assert offenders == []


def test_function_local_project_imports_say_why():
    offenders = []
    for f in _py_files("anet", "components", "pipelines", "bench"):
        lines = f.read_text().splitlines()
        for node, in_function in _import_nodes(ast.parse(f.read_text())):
            project = any(m.split(".")[0] in PROJECT for m in _modules(node))
            if in_function and project and "# lazy:" not in lines[node.lineno - 1]:
                offenders.append(f"{f.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert offenders == []


def test_importing_the_core_library_loads_no_mlops_library():
    modules = [".".join(f.relative_to(ROOT).with_suffix("").parts) for f in _core_files()
               if f.name != "__main__.py"]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m.removesuffix('.__init__'))\n"
        f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {sorted(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_declared_order_names_every_room():
    rooms = {_room(f) for f in _py_files("anet")}
    declared = {r for rooms_ in ORDER for r in rooms_}
    assert rooms <= declared, f"undeclared rooms: {sorted(rooms - declared)}"


def test_no_module_imports_the_package_it_belongs_to():
    """A package's ``__init__`` may import its modules; a module importing its own package back is a
    cycle (the dataset readers once needed a lazy import to break one: their helpers now live in
    ``anet.data.readers.common``). Lazy imports count too."""
    offenders = []
    for f in _py_files("anet"):
        if f.name in ("__init__.py", "__main__.py"):  # __main__: an entry point, no package imports it
            continue
        own = ".".join(f.relative_to(ROOT).parent.parts)
        submodules = {p.stem for p in f.parent.glob("*.py")} | {p.name for p in f.parent.iterdir() if p.is_dir()}
        for node, _ in _import_nodes(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == own and node.level == 0:
                names = [a.name for a in node.names if a.name not in submodules]
            else:
                names = [m for m in _modules(node) if m == own]
            if names:
                offenders.append(f"{f.relative_to(ROOT)}:{node.lineno} imports {', '.join(names)} from {own}")
    assert offenders == []
