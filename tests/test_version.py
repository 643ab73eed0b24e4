"""One version, defined in Cargo.toml: the package, the command line, the User-Agent and the
changelog all say the same."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import capi_fast
from capi_fast import CapiClient, MemoryStorage

ROOT = Path(__file__).resolve().parent.parent


def test_one_version_everywhere():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    assert capi_fast.__version__ == cargo
    done = subprocess.run([sys.executable, "-m", "capi_fast.cli", "--version"], capture_output=True, text=True)
    assert done.stdout.strip() == f"capi-fast {cargo}"
    client = CapiClient(user_agent="mywaf/1.0", scenarios=["mywaf/bf"], storage=MemoryStorage())
    try:
        assert client.user_agent.endswith(f"capi-fast/{cargo}")
    finally:
        client.close()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in pyproject.get("dynamic", []) and "version" not in pyproject, "maturin takes it from Cargo"


def test_the_changelog_has_a_section_for_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in text
    versions = re.findall(r"^## (\d+\.\d+\.\d+) - \d{4}-\d{2}-\d{2}$", text, flags=re.M)
    assert versions and versions[0] == capi_fast.__version__, "the newest section is the current version"


def test_the_pythons_said_supported_are_the_ones_tested():
    """pyproject's classifiers, the wheel tests' default and README name the same CPythons."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = [c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.fullmatch(r".* :: Python :: 3\.\d+", c)]
    classified = sorted(versions, key=lambda v: tuple(map(int, v.split("."))))
    tested = re.search(r'^PYTHONS=\$\{PYTHONS:-"([^"]+)"\}$', (ROOT / "scripts" / "test-wheel").read_text(), flags=re.M)
    assert tested is not None
    assert classified == tested[1].split()
    assert project["requires-python"] == f">={classified[0]}"
    readme = (ROOT / "README.md").read_text()
    assert f"CPython {', '.join(classified[:-1])} and {classified[-1]}" in readme
