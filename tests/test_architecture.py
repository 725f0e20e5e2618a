"""The package's structure: imports form no cycle (checked over every import, top-level or not)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> import name: the repository's `models/` folder installs as `meo_profile.models`
PACKAGES = {"models": "meo_profile.models", "meo_profile": "meo_profile"}


def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for cli.py and every module of the project's packages."""
    modules = {"cli": ROOT / "cli.py"}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = (package, *path.relative_to(ROOT / folder).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under `if TYPE_CHECKING:`: names for annotations, never run."""
    return {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
            and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
            for stmt in block.body for node in ast.walk(stmt)}


def imported(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in its body, functions included (`from a
    import b` counts as a.b when that is a module, else as a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotations_only = type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_project():
    graph = import_graph()
    assert "meo_profile.sweep.run" in graph and graph["cli"]  # the graph was read
    assert find_cycle(graph) is None


# Layers from the bottom up: a module imports only from its own package or a lower layer.
# Packages on one layer (check, report) do not import each other.
LAYERS = (("meo_profile.models",), ("meo_profile.core",), ("meo_profile.results",), ("meo_profile.measure",),
          ("meo_profile.check", "meo_profile.report"), ("meo_profile.sweep",),
          ("meo_profile.terminal",), ("cli",))
MAX_LINES = 450


def home(module: str) -> tuple[int, str]:
    """(layer, package) of a module."""
    for level, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return level, package
    raise AssertionError(f"{module} belongs to no layer")


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in import_graph().items():
        if module == "meo_profile":  # the package's face
            continue
        level, package = home(module)
        for target in targets:
            if target == "meo_profile":
                continue
            t_level, t_package = home(target)
            if t_package != package and t_level >= level:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_meo_profile_is_subpackages_and_no_module_is_long():
    top = [p.name for p in (ROOT / "meo_profile").glob("*.py") if p.name != "__init__.py"]
    assert top == []
    long = {name: n for name, path in project_modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_every_package_folder_is_installed_under_its_import_name():
    """pyproject.toml lists the packages (see its comment): a new subpackage must be listed, or
    an installed (non-editable) copy would lack it."""
    import tomllib

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {name for name, path in project_modules().items() if path.name == "__init__.py"}
    assert set(listed["packages"]) == folders
    assert listed["package-dir"] == {"meo_profile.models": "models"}


def test_the_model_family_imports_from_a_folder_holding_its_own_models_package(tmp_path):
    """A user's `models/` in the working directory (common in ML projects) is not this tool's."""
    import subprocess
    import sys

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("raise ImportError('the user models')\n")
    code = "from meo_profile.models import Spec; print(Spec().variant)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "meo"
