"""Every code example in README.md and in the documentation (docs/*.md) runs as written.

Each file's Python blocks run in order in one namespace of their own (a later block uses the
client an earlier one made, and every page is self-contained for a reader who copies it), with
top-level ``await`` allowed, against the bundled simulator; a line ending in ``# -> <literal>``
must evaluate to that literal. The only changes to the text: CAPI's default URL is the
simulator's, ``/var/lib/mywaf`` is a temporary directory, and the LAPI at
``http://127.0.0.1:8080/`` is a fake one. The command-line block runs line by line in a shell,
with ``CAPI_FAST_URL`` and ``CAPI_FAST_HOME`` set; a pipe into ``nft`` runs in a network
namespace the test creates (never the host's rules), and ``simulate``, which serves until
stopped, is stopped once it says where it listens. Every daemon configuration (TOML) shown must
load. Blocks that are deliberately not runnable use another fence (``toml``, ``ini``,
``console``, ``text``, ``py``).
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from capi_fast import RefreshReport, RemediationEngine
from capi_fast.batcher import SignalBatcher
from capi_fast.client import _BaseClient
from capi_fast.testing import CapiSimulator
from servers import FakeLapi, uvicorn_serving, waitress_serving

TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: README.md and every page of the documentation site.
DOCUMENTS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
RESULT = re.compile(r"^(?P<expr>\S.*?)\s+# -> (?P<value>.+?)(?:\s{2,}\(.*\))?$")


def blocks(language: str, document: Path = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", document.read_text(), flags=re.S | re.M)


def _name(document: Path) -> str:
    return str(document.relative_to(ROOT))


def _cli_block(document: Path) -> str | None:
    found = [b for b in blocks("sh", document) if "capi-fast register" in b or "capi-fast --scenario" in b]
    assert len(found) <= 1, f"{_name(document)}: one command-line block at most"
    return found[0] if found else None


WITH_PYTHON = [d for d in DOCUMENTS if blocks("python", d)]
WITH_CLI = [d for d in DOCUMENTS if _cli_block(d) is not None]


def with_checks(code: str) -> str:
    """``expr  # -> literal`` lines become assertions."""
    out = []
    for line in code.splitlines():
        m = RESULT.match(line)
        if m is not None:
            try:
                ast.literal_eval(m["value"])
            except (ValueError, SyntaxError):
                pass
            else:
                line = f"assert ({m['expr']}) == {m['value']}, {line!r}"
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.fixture
def sim():
    with CapiSimulator() as s:
        s.add_decisions(["203.0.113.7", "198.51.100.0/24"])
        s.add_blocklist("tor-exit", ["203.0.113.9"], remediation="captcha")
        yield s


@pytest.fixture
def lapi():
    with FakeLapi() as fake:
        yield fake


def test_the_documents_hold_their_examples():
    assert README in WITH_PYTHON, "README keeps its short example"
    assert len(WITH_PYTHON) >= 6, [_name(d) for d in WITH_PYTHON]
    assert sum(len(blocks("python", d)) for d in DOCUMENTS) >= 12
    assert len(WITH_CLI) == 1, "the command-line block lives on one page"


@pytest.mark.parametrize("document", WITH_PYTHON, ids=_name)
def test_python_examples_run_as_written(document, sim, lapi, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    import django_app  # noqa: F401 - Django's settings, which a real project's wsgi.py has

    defaults = dict(_BaseClient.__init__.__kwdefaults__ or {})
    monkeypatch.setattr(_BaseClient.__init__, "__kwdefaults__", {**defaults, "base_url": sim.url})
    namespace: dict[str, Any] = {"__name__": "readme"}
    signals_before = len(sim.signals)
    try:
        for number, code in enumerate(blocks("python", document), 1):
            code = code.replace("/var/lib/mywaf", str(tmp_path / "mywaf"))
            code = code.replace("http://127.0.0.1:8080/", lapi.url).replace("from cscli bouncers add", FakeLapi.KEY)
            where = f"{_name(document)} python block {number}"
            compiled = compile(with_checks(code), where, "exec", flags=TOP_LEVEL_AWAIT)
            result = eval(compiled, namespace)  # noqa: S307 - the project's own documentation
            if asyncio.iscoroutine(result):
                asyncio.run(result)
        reports = [v for v in namespace.values() if isinstance(v, RefreshReport)]
        assert all(r.performed for r in reports), reports
        if any(isinstance(v, SignalBatcher) for v in namespace.values()):
            own = namespace.get("sim")  # a page that starts a simulator of its own
            delivered = len(own.signals) if isinstance(own, CapiSimulator) else len(sim.signals) - signals_before
            assert delivered > 0, "the batcher example delivered its signals"
        if "app" in namespace and "flask_app" in namespace:
            _middleware_examples_protect_their_apps(namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, RemediationEngine):
                value.stop()


def _middleware_examples_protect_their_apps(ns: dict[str, Any]) -> None:
    """The middleware blocks' apps, served for real: the engine answers for 127.0.0.1."""
    engine = ns["engine"]
    assert isinstance(engine, RemediationEngine) and engine.health().running
    with uvicorn_serving(ns["app"]) as url:
        assert httpx.get(url + "/", timeout=10).json() == {"hello": "world"}
        engine.index.add("127.0.0.1", "ban", origin="cscli")
        assert httpx.get(url + "/", timeout=10).status_code == 403
        assert httpx.get(url + "/healthz", timeout=10).status_code == 404, "excluded: the app answers"
    for wsgi_app in (ns["flask_app"].wsgi_app, ns["application"]):
        with waitress_serving(wsgi_app) as url:
            assert httpx.get(url + "/", timeout=10).status_code == 403
    engine.index.remove("127.0.0.1")
    with waitress_serving(ns["flask_app"].wsgi_app) as url:
        assert httpx.get(url + "/", timeout=10).status_code == 404, "a Flask app without routes"


def _netns() -> str | None:
    """A fresh network namespace to run nft in, or None when nft or ip is missing or not root."""
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        return None
    name = f"capi-readme-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return None
    return name


@pytest.mark.parametrize("document", WITH_CLI, ids=_name)
def test_command_line_example_runs_as_written(document, sim, tmp_path):
    cli_block = _cli_block(document)
    assert cli_block is not None
    env = {
        **os.environ,
        "CAPI_FAST_URL": sim.url,
        "CAPI_FAST_HOME": str(tmp_path / "home"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    netns = _netns()
    try:
        for line in cli_block.splitlines():
            command = line.split("  #")[0].strip()
            if not command:
                continue
            if " simulate" in command:
                _serves_until_stopped(command, env)
                continue
            if "| nft" in command:
                if netns is None:  # no nft here: the script must still be produced
                    command = command.split("|")[0]
                else:
                    command = f"ip netns exec {netns} sh -c {command!r}"
            done = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=300)
            # `check` exits 1 when an address it was asked about is remediated (the example's is).
            expected = 1 if command.startswith("capi-fast check") else 0
            assert done.returncode == expected, f"{command}: {done.stdout}{done.stderr}"
            if command.startswith("capi-fast check"):
                assert done.stdout.splitlines()[0] == "203.0.113.7 ban"
    finally:
        if netns is not None:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)


def _serves_until_stopped(command: str, env: dict[str, str]) -> None:
    child = subprocess.Popen(command, shell=True, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().startswith("CAPI simulator at http://127.0.0.1:")
    finally:
        os.killpg(child.pid, signal.SIGINT)
        child.wait(30)


def test_daemon_configuration_examples_are_valid(tmp_path):
    from capi_fast.daemon_config import load_config

    key = tmp_path / "lapi.key"
    key.write_text("a-bouncer-key")
    key.chmod(0o600)
    shown = [(d, b) for d in DOCUMENTS for b in blocks("toml", d)]
    assert shown, "the daemon's configuration is shown somewhere"
    main = []
    for number, (document, block) in enumerate(shown):
        config = tmp_path / f"config-{number}.toml"
        config.write_text(block.replace("/etc/capi-fast/lapi.key", str(key)))
        try:
            loaded = load_config(config)
        except Exception as e:
            raise AssertionError(f"{_name(document)}: {e}") from e
        if loaded.firewall.backend == "nftables" and loaded.signals.inbox is not None:
            main.append(loaded)
    (loaded,) = main
    assert loaded.lapi_url == "http://127.0.0.1:8080/" and loaded.api_key == "a-bouncer-key"
    assert loaded.firewall.backend == "nftables" and loaded.firewall.hooks == ("input",)
    assert str(loaded.signals.inbox) == "/var/lib/capi-fast/inbox"


def test_the_operations_page_shows_the_systemd_unit_as_shipped():
    (shown,) = blocks("ini", ROOT / "docs" / "operations.md")
    assert shown == (ROOT / "contrib" / "capi-fast.service").read_text()
