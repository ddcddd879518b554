"""The package's modules import one way only: each layer uses the layers below it, never above,
so the README's picture of the stack stays true (and there are no import cycles)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "squeezenet"

# Bottom to top. A module may import modules of lower layers only (the data package is one layer
# with its own order below).
LAYERS = [
    ["errors"],
    ["files", "device", "timing"],
    ["model"],
    ["zoo", "summary", "optim"],
    ["data"],
    ["runs", "plots", "recipes"],
    ["modelfile"],
    ["checkpoint", "splits", "config", "evaluate", "schedule"],
    ["rundir", "distributed", "info"],
    ["train"],
    ["export"],
    ["lowering"],
    ["quantize", "compress"],
    ["cengine"],
    ["runtime", "web", "mobile"],
    ["bench", "predict"],
    ["httpd"],
    ["serve"],
    ["cli"],
    ["__main__", "__init__"],
]
DATA = ["images", "sets", "store", "augment", "folder", "synthetic", "readers", "loader", "__init__"]


def imports(path: Path, package: str) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if node.level == 0 and not module.startswith("squeezenet"):
                continue
            names = [module + "." + a.name for a in node.names] if node.module is None else [module]
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("squeezenet"))
    return found


def layer_of(module: str) -> int:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {"data"}
    placed = {m for layer in LAYERS for m in layer}
    assert modules == placed, f"unplaced: {modules - placed}, gone: {placed - modules}"
    assert {p.stem for p in (PACKAGE / "data").glob("*.py")} == set(DATA)


def test_imports_go_down_the_stack_only():
    wrong = []
    for path in PACKAGE.glob("*.py"):
        me = f"squeezenet.{path.stem}"
        for target in imports(path, me if path.stem != "__init__" else "squeezenet.__init__"):
            if target == "squeezenet" or path.stem in ("__init__", "__main__"):
                continue
            if layer_of(target) >= layer_of(me):
                wrong.append(f"{path.stem} -> {target}")
    for path in (PACKAGE / "data").glob("*.py"):
        me = f"squeezenet.data.{path.stem}"
        for target in imports(path, me):
            if target.startswith("squeezenet.data."):
                sub = target.split(".")[2]
                if DATA.index(sub) >= DATA.index(path.stem):
                    wrong.append(f"data.{path.stem} -> {target}")
            elif layer_of(target) >= layer_of("squeezenet.data"):
                wrong.append(f"data.{path.stem} -> {target}")
    assert not wrong, "imports up the stack (or sideways): " + ", ".join(sorted(wrong))


def test_functions_fit_on_a_screen():
    long = []
    for path in list(PACKAGE.glob("*.py")) + list((PACKAGE / "data").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= 90:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long
