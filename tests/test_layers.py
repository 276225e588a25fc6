"""The package's layers: each imports only itself and the layers below it, and only the command
line reads the settings files (fast: reads the source, runs nothing)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deepfm"
# Lowest first. A module may import from its own layer and from the layers before it.
LAYERS = ("core", "models", "prep", "training", "serving", "evaluation", "ops", "cli")


def layer_of(module: str) -> str | None:
    """``deepfm.<layer>...`` -> ``<layer>``; None for the package's own top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "deepfm" and parts[1] in LAYERS else None


def deepfm_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``deepfm`` import in ``path``, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("deepfm")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deepfm"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, name if layer_of(name) else node.module) for name in names]
    return found


def modules() -> list[tuple[str, Path]]:
    return [(layer, path) for layer in LAYERS for path in sorted((PACKAGE / layer).rglob("*.py"))]


def test_every_module_lives_in_a_layer():
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top_level == ["__init__.py", "__main__.py"]
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(
        (*LAYERS, "conf")
    )


@pytest.mark.parametrize(("layer", "path"), modules(), ids=lambda v: str(v).rsplit("deepfm/", 1)[-1])
def test_a_layer_imports_only_itself_and_the_layers_below(layer, path):
    upward = [
        f"{path.name}:{line} imports {module}"
        for line, module in deepfm_imports(path)
        if (target := layer_of(module)) and LAYERS.index(target) > LAYERS.index(layer)
    ]
    assert not upward, f"{layer} may import only {LAYERS[: LAYERS.index(layer) + 1]}: {upward}"


def test_only_the_command_line_reads_settings_files():
    readers = [
        str(path.relative_to(PACKAGE))
        for layer, path in modules()
        if layer != "cli" and ("import yaml" in path.read_text() or "load_defaults" in path.read_text())
    ]
    assert readers == []
