"""The package's import structure: no cycles among moejet's modules, and no module imports from a higher layer.

Every module under src/moejet is parsed (not imported) with ``ast``; imports are read at module level and inside
functions, relative and absolute (``moejet.*``). Cycles are checked on module-level imports only (a function-level
import runs late and cannot deadlock a module's initialisation); layers on every import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "moejet"

# lower number = lower layer; a module may import only from its own or a lower layer (longest matching prefix)
LAYERS = {
    "moejet.errors": 0, "moejet.variants": 0, "moejet.options": 0, "moejet.malloc": 0, "moejet.device": 0,
    "moejet.io.files": 0, "moejet.configs": 0, "moejet.rundir": 0, "moejet.model_args": 0,
    "moejet.layers": 1,
    "moejet.models": 2,
    "moejet.io.weights": 3, "moejet.io": 3, "moejet.data": 3,
    "moejet.recycle": 4, "moejet.analysis": 4,
    "moejet.train": 5,
    "moejet.io.hub": 6, "moejet.io.export": 6, "moejet.io.convert": 6, "moejet.demo": 6, "moejet.predict": 6,
    "moejet.cli": 7, "moejet.__main__": 7,
}
EXEMPT = {"moejet"}  # the package root re-exports the public API


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str:
    """The moejet module an imported name lives in: ``name`` itself, or the longest module prefix of it (``from
    moejet.io import save_model`` -> ``moejet.io``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported moejet module, line, at module level)`` for every import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports inside module-level if / try blocks still run at import time
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # ... except under `if TYPE_CHECKING:`
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from . import build` imports a module; `from .api import recycle` a name of one
            names = [f"{prefix}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "moejet" or name.startswith("moejet."):
                found.append((resolve(name), node.lineno, id(node) in top_level))
    return found


def layer_of(module: str) -> int | None:
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(prefixes, key=len)] if prefixes else None


def test_every_module_has_a_layer():
    assert {m for m in MODULES if m not in EXEMPT and layer_of(m) is None} == set()
    assert len(MODULES) > 50


def test_the_parser_sees_relative_absolute_and_function_level_imports():
    run = {(m, top) for m, _, top in imports("moejet.train.run")}
    assert ("moejet.train.build", True) in run  # from . import build
    assert ("moejet.io.files", True) in run  # from ..io.files import ...
    cli = {m for m, _, top in imports("moejet.cli") if not top}
    assert "moejet.train.distributed" in cli  # a function-level import


def test_no_import_cycles_among_modules():
    graph = {m: sorted({dep for dep, _, top in imports(m) if top and dep != m and dep in MODULES}) for m in MODULES}
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def upward_imports() -> list[str]:
    bad = []
    for module in sorted(MODULES):
        if module in EXEMPT:
            continue
        own = layer_of(module)
        for dep, line, _ in imports(module):
            if dep in EXEMPT:
                bad.append(f"{module}:{line} imports the package root moejet")
                continue
            theirs = layer_of(dep)
            if theirs is not None and theirs > own:
                bad.append(f"{module} (layer {own}):{line} imports {dep} (layer {theirs})")
    return sorted(set(bad))


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports() == []


# (importer prefix, imported prefixes it must not use) beyond the layers: io/ reads and writes files, whoever wrote
# them; the names of a run directory and a recycle output are moejet.rundir's
FORBIDDEN = [("moejet.io", ("moejet.train", "moejet.recycle"))]


def test_io_imports_neither_train_nor_recycle():
    bad = [f"{module}:{line} imports {dep}" for prefix, banned in FORBIDDEN for module in sorted(MODULES)
           if module == prefix or module.startswith(prefix + ".")
           for dep, line, _ in imports(module) if any(dep == b or dep.startswith(b + ".") for b in banned)]
    assert bad == []


# what a user typed (a config's model kwargs, --successor-arg, --set) is checked by moejet.model_args, beside the CLI
# and the config; models/ holds models, which raise their own errors on an impossible construction
USER_INPUT_CHECKS = "moejet.model_args"
CHECK_HELPERS = {"check_model_kwargs", "MODEL_KWARG_RULES", "_PROBABILITY", "_POSITIVE", "_is_int", "_is_number",
                 "_ints", "_size", "_one_of"}


def top_level_names(module: str) -> set[str]:
    """The names ``module`` defines at module level (functions, classes, assignments)."""
    names = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_models_hold_no_user_input_validation():
    models = [m for m in sorted(MODULES) if m == "moejet.models" or m.startswith("moejet.models.")]
    assert len(models) > 3
    defined = [f"{m} defines {name}" for m in models for name in sorted(top_level_names(m) & CHECK_HELPERS)]
    imported = [f"{m}:{line} imports {dep}" for m in models for dep, line, _ in imports(m) if dep == USER_INPUT_CHECKS]
    assert defined + imported == []
    assert CHECK_HELPERS <= top_level_names(USER_INPUT_CHECKS)  # the helpers exist, where they belong


def test_the_user_input_checks_import_no_model_and_no_torch():
    tree = ast.parse(MODULES[USER_INPUT_CHECKS].read_text())
    third_party = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names}
    third_party |= {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and not node.level and node.module}
    assert third_party.isdisjoint({"torch", "timm"})
    assert all(layer_of(dep) == 0 for dep, _, _ in imports(USER_INPUT_CHECKS))


@pytest.mark.parametrize(("module", "layer"), [("moejet.io.files", 0), ("moejet.io", 3), ("moejet.io.weights", 3),
                                                ("moejet.io.hub", 6), ("moejet.cli.recycle", 7),
                                                ("moejet.recycle.api", 4), ("moejet.__main__", 7)])
def test_a_modules_layer_is_its_longest_prefix(module, layer):
    assert layer_of(module) == layer


def test_the_architecture_page_puts_every_module_in_its_layer():
    """docs/architecture.md's package map is LAYERS, written out: each entry in a row of its layer."""
    page = (SRC.parent / "docs" / "architecture.md").read_text()
    rows = [(int(layer), re.findall(r"`([\w/.]+)`", names))
            for layer, names in re.findall(r"^\| (\d+) \| (.+?) \|", page, flags=re.M)]
    for module, layer in LAYERS.items():
        path = module.removeprefix("moejet.").replace(".", "/")
        path += "/" if (PACKAGE / path).is_dir() else ".py"
        assert [n for n, names in rows if path in names] == [layer], f"{path} (layer {layer}) in docs/architecture.md"
