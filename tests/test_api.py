"""The public surface: exports, typing files, stubs in step with the native class, the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import capi_fast
from capi_fast import DecisionIndex
from capi_fast.reference import ReferenceIndex

PKG = Path(capi_fast.__file__).parent


def test_all_lists_exactly_the_public_names():
    public = {
        n for n, v in vars(capi_fast).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } - {"annotations"}
    assert set(capi_fast.__all__) - {"__version__"} == public


def test_typing_files_ship():
    assert (PKG / "py.typed").exists()
    assert (PKG / "_native.pyi").exists()


def stub_methods(cls: str) -> set[str]:
    tree = ast.parse((PKG / "_native.pyi").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return {n.name for n in node.body if isinstance(n, ast.FunctionDef)}


def test_stub_matches_native_class():
    native = {n for n in dir(DecisionIndex) if not n.startswith("_")} | {"__len__", "__contains__"}
    assert native == stub_methods("DecisionIndex") - {"__init__"}


def test_reference_has_the_same_api():
    public = {n for n in dir(DecisionIndex) if not n.startswith("_")}
    assert public <= set(dir(ReferenceIndex))


def test_demo_runs():
    out = subprocess.run(
        [sys.executable, "-m", "capi_fast.cli", "demo", "--decisions", "3000"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "registered and logged in as demo" in out
    assert "startup refresh: +" in out and "lists ['firehol-level1', 'office']" in out
    assert "-> bypass (allowlisted)" in out
    assert "refresh again at once: refused (too soon)" in out
    assert "CAPI holds 1000" in out and "delivered in 4 calls" in out
    assert "restart from snapshot" in out and "export_cidrs" in out


def test_client_options_typed_for_type_checkers_are_exactly_what_the_clients_take():
    """``**config: Unpack[...Options]``: type checkers see every setting; none missing, none extra."""
    import inspect
    import typing

    from capi_fast.capi_protocol import CapiClientOptions, _BaseClient
    from capi_fast.lapi import LapiClientOptions, _LapiRules

    for options, base, required in (
        (CapiClientOptions, _BaseClient, {"user_agent", "scenarios"}),
        (LapiClientOptions, _LapiRules, set()),
    ):
        params = inspect.signature(base.__init__).parameters.values()
        keywords = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        hints = typing.get_type_hints(options, include_extras=True)
        assert set(hints) == set(keywords), options.__name__
        marked = {n for n, h in hints.items() if typing.get_origin(h) is typing.Required}
        assert marked == required == {n for n, p in keywords.items() if p.default is p.empty}
