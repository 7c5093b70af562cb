"""The package layout's promises: modules small enough to read, imports flowing one way along the data path and
no import cycle inside a package; docs/architecture.md names every module."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wildreid"
MAX_LINES = 400
# A package may import only packages of a lower rank (and its own modules); threads sits below all:
# wildreid/__init__.py imports it first, before anything loads torch; worker_processes beside it, since pool
# workers import it before anything heavy.
RANK = {"threads": -1, "worker_processes": -1, "records": 0, "provenance": 0, "outputs": 0, "safe_text": 0,
        "cards": 0, "embedding": 1, "matching": 2, "evaluation": 3, "training": 4, "identification": 5, "metrics": 5}
# default_model/ is data: the shipped model folder, whose remote code is a copy of modeling_wildreid.
MODULES = sorted(path for path in PACKAGE.rglob("*.py") if "default_model" not in path.parts)


def _part(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    """The wildreid sub-packages that `path` imports (absolute or relative imports)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # folders between wildreid/ and the module
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name.removeprefix("wildreid.") for alias in node.names if alias.name.startswith("wildreid.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("wildreid."):
            names.append(node.module.removeprefix("wildreid."))
        elif isinstance(node, ast.ImportFrom) and node.level > depth:  # relative, reaching wildreid/ itself
            names += [node.module] if node.module else [alias.name for alias in node.names]
    return {name.split(".")[0] for name in names}


def test_every_module_is_known_to_the_layering():
    assert {_part(path) for path in MODULES} - {"__init__"} <= set(RANK)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_size_and_import_direction(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it (limit {MAX_LINES})"
    own = _part(path)
    upward = {part for part in _imported_parts(path) if part != own and RANK[part] >= RANK.get(own, 0)}
    assert not upward, f"{path.relative_to(PACKAGE)} imports {sorted(upward)}: imports must flow down the data path"


def _module_name(path: Path) -> str:
    """Dotted name of a module below wildreid/ ("matching.methods"; a package's __init__ is the package)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sibling_imports(path: Path, known: set[str]) -> set[str]:
    """The modules of `path`'s own package that it imports (any import: top level, in a function or under
    TYPE_CHECKING), as dotted names below wildreid/."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name.removeprefix("wildreid.") for alias in node.names if alias.name.startswith("wildreid.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("wildreid."):
                    continue
                base = node.module.removeprefix("wildreid.")
            else:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from .pkg import module` names a module; `from .module import thing` names its module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.rpartition(".")[0] == package:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle_inside_a_package():
    """Inside a package the data flows one way too: no two modules import each other, even lazily or only
    for type checking (matching.methods and matching.union_fusion once did)."""
    known = {_module_name(path) for path in MODULES}
    graph = {_module_name(path): _sibling_imports(path, known) for path in MODULES}
    assert not _cycles(graph), f"import cycles inside a package: {_cycles(graph)}"


def test_the_cycle_check_sees_a_cycle():
    assert _cycles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}) == [["a.x", "a.y", "a.z"]]
    assert _cycles({"a.x": {"a.y"}, "a.y": set()}) == []


def test_architecture_page_names_every_module():
    """The module table of docs/architecture.md stays complete: each module, or a folder it sits in, has a row."""
    readme = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = []
    for path in MODULES:
        relative = path.relative_to(PACKAGE)
        if relative.name in ("__init__.py", "__main__.py"):
            continue
        folders = [f"`{'/'.join(relative.parts[:depth])}/`" for depth in range(2, len(relative.parts))]
        if f"`{relative.as_posix()}`" not in readme and not any(folder in readme for folder in folders):
            missing.append(relative.as_posix())
    assert not missing, f"the module table of docs/architecture.md lacks {missing}"
