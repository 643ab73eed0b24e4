"""The installed package is the whole package: every file of the tree, one native module, the CLI.

Against an in-tree build (``make test-python``) the installed package is the tree itself and
these checks hold trivially. ``scripts/test-wheel`` sets ``CAPI_FAST_INSTALLED=1`` and runs the
suite against the wheel installed in a fresh venv: then the package imported must not be the
tree's, and a file the wheel lacks (``py.typed``, a ``.pyi``, ``capi_fast.testing``, the CLI's
entry point) fails here.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import capi_fast
from capi_fast import _native

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "python" / "capi_fast"
INSTALLED = Path(capi_fast.__file__).resolve().parent
FROM_WHEEL = os.environ.get("CAPI_FAST_INSTALLED") == "1"


def _tree_files() -> list[Path]:
    return sorted(
        p.relative_to(TREE)
        for p in TREE.rglob("*")
        if p.is_file() and (p.suffix in {".py", ".pyi"} or p.name == "py.typed") and "__pycache__" not in p.parts
    )


def test_the_package_under_test_is_the_installed_one_when_asked():
    if not FROM_WHEEL:
        pytest.skip("in-tree build: the package is the tree (CAPI_FAST_INSTALLED=1 tests a wheel)")
    assert not INSTALLED.is_relative_to(ROOT / "python"), f"imported the tree's capi_fast from {INSTALLED}"
    assert Path(_native.__file__).resolve().parent == INSTALLED


def test_every_file_of_the_tree_is_installed_unchanged():
    files = _tree_files()
    assert {Path("py.typed"), Path("_native.pyi"), Path("testing/__init__.py")} <= set(files)
    missing = [str(f) for f in files if not (INSTALLED / f).is_file()]
    assert not missing, f"not in the installed package: {missing}"
    changed = [str(f) for f in files if (INSTALLED / f).read_bytes() != (TREE / f).read_bytes()]
    assert not changed, f"installed files differ from the tree: {changed}"


def test_one_native_module_and_it_loads_on_this_python():
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    natives = sorted(p.name for p in INSTALLED.iterdir() if p.name.startswith("_native.") and p.name.endswith(suffixes))
    assert natives == [Path(_native.__file__).name], f"native modules installed: {natives}"
    if FROM_WHEEL:
        assert natives[0].endswith(".abi3.so"), f"the wheel's extension is not the stable-ABI build: {natives[0]}"


def test_the_command_line_entry_point_is_installed_and_runs():
    scripts = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "capi-fast"]
    assert [e.value for e in scripts] == ["capi_fast.cli:main"]
    path = Path(sysconfig.get_path("scripts")) / "capi-fast"
    assert path.is_file(), f"no capi-fast script in {path.parent}"
    done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"capi-fast {capi_fast.__version__}", done.stderr
    assert sys.version_info >= (3, 11)
