"""The package layout's promises: modules small enough to read, imports flowing one way along the data path."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wildreid"
MAX_LINES = 400
# A package may import only packages of a lower rank (and its own modules); threads sits below all:
# wildreid/__init__.py imports it first, before anything loads torch.
RANK = {"threads": -1, "records": 0, "provenance": 0, "outputs": 0, "cards": 0, "embedding": 1, "matching": 2,
        "evaluation": 3, "training": 4, "identification": 4, "metrics": 5}
MODULES = sorted(PACKAGE.rglob("*.py"))


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


def test_readme_names_every_module():
    """The README's module table stays complete: each module, or a folder it sits in, has a row."""
    readme = (PACKAGE.parent / "README.md").read_text()
    missing = []
    for path in MODULES:
        relative = path.relative_to(PACKAGE)
        if relative.name in ("__init__.py", "__main__.py"):
            continue
        folders = [f"`{'/'.join(relative.parts[:depth])}/`" for depth in range(2, len(relative.parts))]
        if f"`{relative.as_posix()}`" not in readme and not any(folder in readme for folder in folders):
            missing.append(relative.as_posix())
    assert not missing, f"README's module table lacks {missing}"
