"""Dependency direction of keras_clmr, read from the source with ``ast`` (nothing is imported).

Layers, lowest first (DESIGN.md): foundations (io, audio, layers, losses, metrics, optimizers,
distributed) -> models and data -> presets (data only) and the pure card renderer -> hub ->
conversion / inference / evaluation / export / interpret / pretraining -> writing cards into
folders / publish -> command line (cli, commands) and the package facade (``__init__.py``).
A module may import, at module level, only modules of its own layer or below, and module-level
imports form no cycle. Imports of a higher layer inside a function (lazy) are allowed only where
LAZY_UPWARD lists them, with the reason.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "keras_clmr")

# Module prefix -> layer; the longest matching prefix wins.
LAYERS = {
    "keras_clmr._optional": 0,
    "keras_clmr.io": 0,
    "keras_clmr.download": 0,
    "keras_clmr.audio": 0,
    "keras_clmr.layers": 0,
    "keras_clmr.losses": 0,
    "keras_clmr.losses_cpc": 0,
    "keras_clmr.metrics": 0,
    "keras_clmr.optimizers": 0,
    "keras_clmr.distributed": 0,
    "keras_clmr.batching": 0,
    "keras_clmr.progress": 0,
    "keras_clmr.torch_memory": 0,
    "keras_clmr.models": 1,
    "keras_clmr.data": 1,
    "keras_clmr.presets": 2,
    # The card renderer is pure (metadata + registry data -> text), so hub can render the
    # default card of save_preset; writing cards into folders is keras_clmr.export.card.
    "keras_clmr.cards": 2,
    "keras_clmr.hub": 3,
    "keras_clmr.conversion": 4,
    "keras_clmr.inference": 4,
    "keras_clmr.hear": 4,
    "keras_clmr.evaluation": 4,
    "keras_clmr.export": 4,
    "keras_clmr.interpret": 4,
    "keras_clmr.pretraining": 4,
    "keras_clmr.model_card": 5,
    "keras_clmr.export.card": 5,
    "keras_clmr.export.cards": 5,
    "keras_clmr.publish": 5,
    "keras_clmr.export.publish": 5,
    "keras_clmr.cli": 6,
    "keras_clmr.commands": 6,
    "keras_clmr": 6,  # the facade: re-exports the public API from every layer
}
LAYER_NAMES = [
    "foundations",
    "models/data",
    "presets/cards",
    "hub",
    "conversion/inference/evaluation/export",
    "cards/publish",
    "command line",
]

# KNOWN VIOLATIONS, to be removed (not design): (importer, imported): what is wrong.
ALLOWED_UPWARD: dict = {}

# Function-level (lazy) imports of a higher layer that are part of the design: (importer
# prefix, imported prefix): why.
LAZY_UPWARD = {
    ("keras_clmr.hub", "keras_clmr.conversion"): (
        "a registry preset without a published Hub copy is converted on first use; the builder "
        "is named by a dotted path in the preset data and imported only then"
    ),
    ("keras_clmr.models.backbone", "keras_clmr.hub"): (
        "Backbone.from_preset / save_to_preset (the KerasHub API) delegate to hub on use"
    ),
}
# Importers allowed to import any module lazily: they resolve a dotted path from preset data.
LAZY_ANY = {"keras_clmr.hub.resolution"}
# A lazy ``import keras_clmr`` (for ``__version__``) costs nothing and creates no order: the
# package is always imported before any of its modules runs. Module-level ones are still checked.
LAZY_FACADE = "keras_clmr"


def module_files():
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
                is_package = parts[-1] == "__init__"
                if is_package:
                    parts = parts[:-1]
                yield ".".join(parts), path, is_package


MODULES = {name: (path, is_package) for name, path, is_package in module_files()}


def layer_of(module):
    parts = module.split(".")
    for end in range(len(parts), 1, -1):  # "keras_clmr" alone is the facade, not a prefix
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return LAYERS.get(module)


def _resolve(module, is_package, node):
    """The keras_clmr modules an Import/ImportFrom node depends on (parent packages, which every
    import runs first, are not counted)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "keras_clmr"]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "keras_clmr":
        return []
    # ``from pkg import submodule`` depends on the submodule; any other name is pkg's attribute.
    submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    attributes = len(submodules) < len(node.names)
    return submodules + ([target] if attributes else [])


def imports(module):
    """(module-level imports, function-level imports) of ``module``, as sets of module names."""
    path, is_package = MODULES[module]
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), path)
    top, lazy = read_imports(tree, module, is_package)
    return top - {module}, lazy - {module}


def read_imports(tree, module, is_package):
    top, lazy = set(), set()
    functions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else top).update(_resolve(module, is_package, child))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                visit(child, True)  # only for type checkers: never executed
            elif isinstance(child, ast.If) and _is_main_guard(child.test):
                continue  # a script entry point: the command line layer, run only as __main__
            else:
                visit(child, in_function or isinstance(child, functions))

    visit(tree, False)
    return top, lazy


def _is_main_guard(test):
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, f"add these modules to LAYERS in {__file__}: {missing}"


def _upward(imported_by_layer):
    found = []
    for module, targets in imported_by_layer.items():
        for target in sorted(targets):
            if layer_of(target) is not None and layer_of(target) > layer_of(module):
                found.append((module, target))
    return found


def _describe(pairs):
    return "\n".join(
        f"  {a} ({LAYER_NAMES[layer_of(a)]}) imports {b} ({LAYER_NAMES[layer_of(b)]})"
        for a, b in pairs
    )


def test_module_level_imports_point_down():
    upward = [
        pair
        for pair in _upward({m: top for m, (top, _) in GRAPH.items()})
        if pair not in ALLOWED_UPWARD
    ]
    assert not upward, "module-level imports of a higher layer:\n" + _describe(upward)


def test_lazy_upward_imports_are_the_listed_ones():
    def listed(module, target):
        if module in LAZY_ANY or target == LAZY_FACADE:
            return True
        return any(module.startswith(a) and target.startswith(b) for a, b in LAZY_UPWARD)

    upward = [
        (m, t)
        for m, t in _upward({m: lazy for m, (_, lazy) in GRAPH.items()})
        if not listed(m, t) and (m, t) not in ALLOWED_UPWARD
    ]
    assert not upward, (
        "function-level imports of a higher layer (move the code down, or list the "
        "import in LAZY_UPWARD with the reason):\n" + _describe(upward)
    )


def test_no_import_cycles():
    edges = {m: {t for t in top if t in MODULES} for m, (top, _) in GRAPH.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            connect(module)
    assert not cycles, f"module-level import cycles: {cycles}"


@pytest.mark.parametrize(
    "source, top, lazy",
    [
        ("from keras_clmr.hub import folder", {"keras_clmr.hub.folder"}, set()),
        (
            "from keras_clmr.hub import x, folder",
            {"keras_clmr.hub", "keras_clmr.hub.folder"},
            set(),
        ),
        ("from . import io", {"keras_clmr.io"}, set()),
        ("from keras_clmr import load_pretrained", {"keras_clmr"}, set()),
        ("import keras_clmr.models.clmr", {"keras_clmr.models.clmr"}, set()),
        (
            "try:\n    import keras_clmr.cli\nexcept ImportError:\n    x = 0",
            {"keras_clmr.cli"},
            set(),
        ),
        ("def f():\n    from keras_clmr import cli", set(), {"keras_clmr.cli"}),
        ("class A:\n    def f(self):\n        import keras_clmr.hub", set(), {"keras_clmr.hub"}),
        ("if TYPE_CHECKING:\n    import keras_clmr.hub", set(), {"keras_clmr.hub"}),
        ("if __name__ == '__main__':\n    import keras_clmr.cli", set(), set()),
        ("import numpy", set(), set()),
    ],
)
def test_the_import_reader_itself(source, top, lazy):
    """The checks above are only as good as this reader: known sources give known imports."""
    assert read_imports(ast.parse(source), "keras_clmr.audio", False) == (top, lazy)


def test_known_violations_still_exist():
    """An entry of ALLOWED_UPWARD that no longer occurs must be deleted, so the list stays true."""
    every = {(m, t) for m, (top, lazy) in GRAPH.items() for t in top | lazy}
    stale = sorted(pair for pair in ALLOWED_UPWARD if pair not in every)
    assert not stale, f"fixed, so delete from ALLOWED_UPWARD in {__file__}: {stale}"


def test_layer_lookup():
    """Longest prefix wins; an unlisted top-level module has no layer (the facade is no prefix)."""
    assert layer_of("keras_clmr.hub.folder") == LAYERS["keras_clmr.hub"]
    assert layer_of("keras_clmr.export.card") == LAYERS["keras_clmr.export.card"]
    assert layer_of("keras_clmr") == LAYERS["keras_clmr"]
    assert layer_of("keras_clmr.not_listed_anywhere") is None
