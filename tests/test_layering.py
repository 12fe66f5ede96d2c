"""The package's layering, read from its import statements: what one subpackage may take from another.

curvature ← optimizers ← hooks ← integrations / cli, loggers a leaf (docs/design.md). What a
subpackage needs of another is that one's public API: no module imports a private module or a
private name across a subpackage boundary, and no two modules import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "edgewatch"

#: What each subpackage (or top-level module) may import from edgewatch besides itself.
ALLOWED = {
    "curvature": {"distributed"},
    "optimizers": {"curvature"},
    "hooks": {"curvature", "optimizers", "loggers", "distributed", "names", "version"},
    "loggers": {"extras", "names"},
    "integrations": {"hooks", "loggers", "curvature", "extras", "names"},
    "cli": {"hooks", "loggers", "extras", "names", "version"},
    "distributed": set(),
    "extras": set(),
    "names": set(),
    "version": set(),
    "probing": {"curvature"},
    "run": {"cli", "extras", "names"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def edgewatch_imports():
    """(importing module, imported module, imported names) for every import of edgewatch, wherever
    it is: at the top, in a function, or for type checking only."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        importer = module_name(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgewatch":
                yield importer, node.module, [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "edgewatch":
                        yield importer, alias.name, []


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_module_or_name_crosses_a_subpackage_boundary():
    crossing = []
    for importer, imported, names in edgewatch_imports():
        if subpackage(imported) in (None, subpackage(importer)):
            continue
        if any(private(part) for part in imported.split(".")[1:]) or any(private(name) for name in names):
            crossing.append(f"{importer}: from {imported} import {', '.join(names)}")
    assert not crossing, "\n".join(crossing)


def test_subpackages_import_only_what_the_layering_allows():
    wrong = []
    for importer, imported, names in edgewatch_imports():
        source = subpackage(importer)
        target = subpackage(imported)
        if source is None or target in (None, source) or source == "__main__":
            continue
        targets = {target} if imported != "edgewatch" else set(names)
        if not targets <= ALLOWED[source]:
            wrong.append(f"{importer} imports {imported} ({', '.join(names)})")
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_import_each_other():
    """Not even through a function-local import or one for type checking only: each hides a
    dependency both ways."""
    modules = {module_name(path) for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for importer, imported, names in edgewatch_imports():  # function-local and TYPE_CHECKING ones too
        if importer == imported:
            continue
        # "from package import submodule" imports the submodule; other names come from the package itself.
        targets = {f"{imported}.{name}" for name in names if f"{imported}.{name}" in modules} or {imported}
        graph.setdefault(importer, set()).update(target for target in targets if target in modules)
    # A package's __init__ gathers its submodules; an edge into a package from inside it is not a layer.
    cycles = []
    for module, targets in graph.items():
        for target in targets:
            if module in graph.get(target, set()) and not (module.startswith(target + ".") or target.startswith(module + ".")):
                cycles.append(f"{module} <-> {target}")
    assert not cycles, "\n".join(sorted(cycles))
