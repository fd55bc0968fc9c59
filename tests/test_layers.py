"""The package's layering and its installed shape.

- ``tailsampler.common`` is the bottom layer: it imports nothing of ours;
- the policy engine and the storage exporters never import the running collector above them;
- every import of our own code goes through the ``tailsampler`` namespace;
- the built wheel installs one top-level package, ``tailsampler``, and nothing generic beside it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.collectors import REPO

STAGES = ("common", "collector", "policies", "storage", "loadgen")


def imported(path: Path) -> list[str]:
    """Every absolute module name a source file imports."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", sources("common"), ids=lambda p: p.name)
def test_the_bottom_layer_imports_nothing_of_ours(path: Path) -> None:
    assert [n for n in imported(path) if n.split(".")[0] in ("tailsampler", *STAGES)] == []


@pytest.mark.parametrize("path", sources("policies", "storage"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_policies_and_storage_never_import_the_collector(path: Path) -> None:
    assert [n for n in imported(path) if n.startswith("tailsampler.collector") or n.startswith("tailsampler.loadgen")] == []


@pytest.mark.parametrize("path", sources(*STAGES, "tests"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_our_code_is_imported_through_the_namespace(path: Path) -> None:
    assert [n for n in imported(path) if n.split(".")[0] in STAGES] == []


def test_the_wheel_installs_nothing_generic_at_the_top(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes into the tree it builds
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "*.db*"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = tmp_path.glob("tailsampler-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tailsampler"}
    names = zipfile.ZipFile(wheel).namelist()
    for stage in STAGES:
        assert f"tailsampler/{stage}/__init__.py" in names
