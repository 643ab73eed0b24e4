"""Every code example in README.md runs as written, against the bundled simulator.

The Python blocks run in order in one namespace (a later block uses the client an earlier one
made), with top-level ``await`` allowed; a line ending in ``# -> <literal>`` must evaluate to
that literal. The only changes to the text: CAPI's default URL is the simulator's, and
``/var/lib/mywaf`` is a temporary directory. The command-line block runs line by line in a
shell, with ``CAPI_FAST_URL`` and ``CAPI_FAST_HOME`` set; a pipe into ``nft`` runs in a network
namespace the test creates (never the host's rules), and ``simulate``, which serves until
stopped, is stopped once it says where it listens.
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

from capi_fast import RemediationEngine
from capi_fast.client import _BaseClient
from capi_fast.testing import CapiSimulator
from servers import FakeLapi, uvicorn_serving, waitress_serving

TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

README = Path(__file__).resolve().parent.parent / "README.md"
RESULT = re.compile(r"^(?P<expr>\S.*?)\s+# -> (?P<value>.+?)(?:\s{2,}\(.*\))?$")


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


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


def test_python_examples_run_as_written(sim, lapi, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "apps"))
    import django_app  # noqa: F401 - Django's settings, which a real project's wsgi.py has

    defaults = dict(_BaseClient.__init__.__kwdefaults__ or {})
    monkeypatch.setattr(_BaseClient.__init__, "__kwdefaults__", {**defaults, "base_url": sim.url})
    namespace: dict[str, Any] = {"__name__": "readme"}
    found = blocks("python")
    assert len(found) >= 5
    try:
        for number, code in enumerate(found, 1):
            code = code.replace("/var/lib/mywaf", str(tmp_path / "mywaf"))
            code = code.replace("http://127.0.0.1:8080/", lapi.url).replace("from cscli bouncers add", FakeLapi.KEY)
            compiled = compile(with_checks(code), f"README python block {number}", "exec", flags=TOP_LEVEL_AWAIT)
            result = eval(compiled, namespace)  # noqa: S307 - the project's own README
            if asyncio.iscoroutine(result):
                asyncio.run(result)
        assert namespace["report"].performed
        assert sim.signals, "the batcher example delivered its signals"
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


def test_command_line_example_runs_as_written(sim, tmp_path):
    (cli_block,) = [b for b in blocks("sh") if "capi-fast register" in b or "capi-fast --scenario" in b]
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


def test_daemon_configuration_example_is_valid(tmp_path):
    from capi_fast.daemon_config import load_config

    (block,) = blocks("toml")
    key = tmp_path / "lapi.key"
    key.write_text("a-bouncer-key")
    key.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(block.replace("/etc/capi-fast/lapi.key", str(key)))
    loaded = load_config(config)
    assert loaded.lapi_url == "http://127.0.0.1:8080/" and loaded.api_key == "a-bouncer-key"
    assert loaded.firewall.backend == "nftables" and loaded.firewall.hooks == ("input",)
    assert str(loaded.signals.inbox) == "/var/lib/capi-fast/inbox"
