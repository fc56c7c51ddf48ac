"""The shape of the code: layers that import only downward, no import cycle, small modules, lint clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proxy", "logformats")
MAX_MODULE_LINES = 800


def _tool(name: str) -> list[str]:
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return [exe]


def test_layering_contracts_hold():
    """pyproject.toml's import-linter contracts: tools > driver > cluster > store > errors, and the
    layers inside each package; logformats never imports proxy."""
    result = subprocess.run([*_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_import_cycle_among_the_project_modules():
    """Imports that run: those under `if TYPE_CHECKING:` (annotations only) never execute."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_every_module_is_small():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
             for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    large = {path: lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not large, f"modules over {MAX_MODULE_LINES} lines: {large}"


def test_ruff_finds_nothing():
    """The rule set in pyproject.toml, over the code and the tests."""
    result = subprocess.run([*_tool("ruff"), "check", "--no-cache", *PACKAGES, "tests", "sample_dbs"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_paths_named_in_the_docs_exist():
    """Every `proxy/...py` or `logformats/...py` the documentation names is a file of the tree."""
    import re

    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in re.findall(r"\b((?:proxy|logformats)/[\w/]+\.py)\b", doc.read_text(encoding="utf-8")):
            if not (ROOT / path).is_file():
                missing.append(f"{doc.name}: {path}")
    assert not missing, "\n".join(missing)
