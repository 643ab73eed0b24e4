"""The capi-fast command line against the simulator."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from capi_fast.cli import main
from capi_fast.export import render
from capi_fast.testing import CapiSimulator


@pytest.fixture
def sim():
    with CapiSimulator() as s:
        s.add_decisions(["192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.0/24", "2001:db8::/48"])
        s.add_blocklist("tor", ["203.0.113.7"], remediation="captcha")
        yield s


def cli(capsys, sim, home, *args: str) -> tuple[int, str]:
    code = main(["--home", str(home), "--url", sim.url, "--scenario", "mywaf/x", *args])
    return code, capsys.readouterr().out


def test_register_refresh_check_status(capsys, sim, tmp_path):
    code, out = cli(capsys, sim, tmp_path, "register")
    assert code == 0 and out.startswith("machine ") and "registered" in out
    assert stat.S_IMODE(os.stat(tmp_path / "credentials.json").st_mode) == 0o600
    code, out = cli(capsys, sim, tmp_path, "refresh")
    assert code == 0 and out.startswith("refreshed: +6") and "['tor']" in out
    code, out = cli(capsys, sim, tmp_path, "refresh")
    assert code == 0 and "not refreshed: too soon" in out
    code, out = cli(capsys, sim, tmp_path, "check", "192.0.2.1", "203.0.113.7", "198.51.100.9", "10.0.0.1")
    assert out.split("\n")[:4] == ["192.0.2.1 ban", "203.0.113.7 captcha", "198.51.100.9 ban", "10.0.0.1 bypass"]
    code, out = cli(capsys, sim, tmp_path, "--json", "status")
    doc = json.loads(out)
    assert doc["registered"] and doc["decisions"] == 6 and doc["lists"] == ["tor"]
    assert sum(1 for r in sim.requests if r.path.endswith("/decisions/stream")) == 1


def test_export_formats(capsys, sim, tmp_path):
    cli(capsys, sim, tmp_path, "refresh")
    code, out = cli(capsys, sim, tmp_path, "export")
    assert out.split() == ["192.0.2.1/32", "192.0.2.2/31", "198.51.100.0/24", "2001:db8::/48"]
    code, out = cli(capsys, sim, tmp_path, "export", "--format", "nft", "--family", "4")
    assert "add set inet capi_fast capi_fast_ban_v4 { type ipv4_addr; flags interval; auto-merge; }" in out
    assert "add element inet capi_fast capi_fast_ban_v4 { 192.0.2.1/32, 192.0.2.2/31, 198.51.100.0/24 }" in out
    code, out = cli(capsys, sim, tmp_path, "export", "--format", "ipset", "--remediation", "captcha")
    assert out.splitlines()[:3] == [
        "create capi_fast_ban_v4 hash:net family inet maxelem 65536 -exist",
        "flush capi_fast_ban_v4",
        "add capi_fast_ban_v4 203.0.113.7/32",
    ]


def test_render_refuses_bad_names_and_formats():
    with pytest.raises(ValueError):
        render("nft", "bad name;drop", [], [])
    with pytest.raises(ValueError):
        render("iptables", "ok", [], [])


def test_errors_exit_2_with_a_message(capsys, tmp_path):
    code = main(
        ["--home", str(tmp_path), "--url", "http://127.0.0.1:9/", "--retries", "0", "--scenario", "a/b", "register"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "ServerError" in err and "cannot reach" in err


def test_simulate_serves(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "capi_fast.cli", "simulate", "--decisions", "100"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("CAPI simulator at http://127.0.0.1:")
        url = line.split(" at ")[1].strip()
        code = main(["--home", str(tmp_path), "--url", url, "--scenario", "mywaf/x", "refresh"])
        assert code == 0
    finally:
        proc.terminate()
        proc.wait(10)
