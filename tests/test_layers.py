"""The package's layers point only down: ``core`` (the pipeline every API shares) imports nothing
of this package above it, ``schemas`` (one module per API) imports only ``core``, and the wiring
(``apis``: which APIs exist), the settings and the adapter sit above both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "filter" / "buffered_stream"
# What each layer may import from the package (relative to ``buffered_stream``).
ALLOWED = {"core": {"core"}, "schemas": {"core", "schemas"}}


def package_imports(path: Path, package: Path = PACKAGE) -> set[str]:
    """The package's own first-level modules ``path`` imports (``core``, ``schemas``, ``apis``...)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb from the module's package
                parts = list(path.relative_to(package).parts[:-1])
                base = parts[: len(parts) - (node.level - 1)] if node.level - 1 <= len(parts) else []
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not target:  # ``from .. import x``: the names are modules of the package
                    found |= {alias.name for alias in node.names}
                else:
                    found.add(target[0])
            elif node.module and node.module.startswith("buffered_stream"):
                found.add((node.module.split(".") + [""])[1] or "buffered_stream")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("buffered_stream."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_lies_below(layer: str) -> None:
    modules = sorted((PACKAGE / layer).glob("*.py"))
    assert modules
    for module in modules:
        above = package_imports(module) - ALLOWED[layer]
        assert not above, f"{module.relative_to(PACKAGE)} imports {sorted(above)}: {layer} must not"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: upward imports in a core-shaped module are found."""
    module = tmp_path / "buffered_stream" / "core" / "m.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from ..apis import api_named\nfrom .. import settings\nfrom .spec import AUTO\n"
        "import buffered_stream.adapter.service\n"
    )
    assert package_imports(module, tmp_path / "buffered_stream") == {"apis", "settings", "core", "adapter"}
