"""The capi-fast command line against the simulator."""

from __future__ import annotations

import json
import os
import re
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


# -- the command line never fails open, and never answers with a traceback ------------------------


def call(sim, home, *args: str) -> int:
    return main(["--home", str(home), "--url", sim.url, "--scenario", "mywaf/x", *args])


def one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "", "nothing on stdout (a script piped to nft must not run)"
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "directory"])
def test_without_a_usable_snapshot_every_reader_exits_non_zero(capsys, sim, tmp_path, damage):
    assert cli(capsys, sim, tmp_path, "refresh")[0] == 0
    snap = tmp_path / "decisions.snap"
    whole = snap.read_bytes()
    snap.unlink()
    if damage == "garbage":
        snap.write_bytes(b"\x00" * 100)
    elif damage == "truncated":
        snap.write_bytes(whole[: len(whole) // 2])
    elif damage == "directory":
        snap.mkdir()
    for args in (["check", "192.0.2.1"], ["export"], ["export", "--format", "nft"], ["export", "--format", "ipset"]):
        assert call(sim, tmp_path, *args) == 2, args
        assert "refresh" in one_line_error(capsys), "the line says what to do"
    code, out = cli(capsys, sim, tmp_path, "status")
    assert code == 1 and "snapshot_error: " in out and "snapshot_error: None" not in out


def test_export_never_empties_a_set_unless_asked(capsys, tmp_path):
    with CapiSimulator() as sim:
        sim.add_decisions(["192.0.2.1", "198.51.100.0/24"])  # IPv4 only
        assert cli(capsys, sim, tmp_path, "refresh")[0] == 0
        code = call(sim, tmp_path, "export", "--format", "nft")
        out, err = capsys.readouterr()
        assert code == 0 and "flush set inet capi_fast capi_fast_ban_v4" in out
        assert "flush set inet capi_fast capi_fast_ban_v6" not in out, "the empty IPv6 set is left as it is"
        assert "IPv6" in err
        code, out = cli(capsys, sim, tmp_path, "export", "--format", "ipset", "--family", "4")
        assert code == 0 and "_v6" not in out, "a family not asked for is not touched"
        for fmt in ("nft", "ipset", "plain"):
            code = call(sim, tmp_path, "export", "--format", fmt, "--family", "6")
            assert code == 2 and "--allow-empty" in one_line_error(capsys)
        code, out = cli(capsys, sim, tmp_path, "export", "--format", "nft", "--family", "6", "--allow-empty")
        assert code == 0 and "flush set inet capi_fast capi_fast_ban_v6" in out, "asked for explicitly"
        code = call(sim, tmp_path, "export", "--remediation", "bann")
        assert code == 2 and "it holds ban, captcha" in one_line_error(capsys)


def test_render_leaves_an_empty_family_alone():
    script = render("nft", "s", ["192.0.2.0/24"], [])
    assert "flush set inet capi_fast s_v4" in script and "flush set inet capi_fast s_v6" not in script
    assert "s_v6" not in render("ipset", "s", ["192.0.2.0/24"], None)
    assert "flush s_v6" in render("ipset", "s", [], [], allow_empty=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["--retries", "-5", "refresh"],
        ["--retries", "many", "refresh"],
        ["export", "--set-name", "1bad"],
        ["export", "--set-name", "x" * 40],
        ["export", "--remediation", ""],
        ["export", "--family", "5"],
        ["export", "--format", "iptables"],
        ["simulate", "--port", "99999"],
        ["simulate", "--port", "-1"],
        ["simulate", "--decisions", "-1"],
        ["demo", "--decisions", "-1"],
        ["demo", "--decisions", "0"],
        ["check"],
    ],
)
def test_bad_option_values_are_usage_errors(capsys, tmp_path, argv):
    with pytest.raises(SystemExit) as exit_:
        main(["--home", str(tmp_path), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err or "error: the following" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "ftp://x", "--scenario", "a/b", "register"],
        ["--scenario", "bad scenario", "register"],
        ["--scenario", "a/b", "--prefix", "x\ny", "register"],
        ["--scenario", "a/b", "--user-agent", "a\nb", "register"],
        ["--scenario", "a/b", "enroll", "bad key"],
        ["--lapi-url", "http://127.0.0.1:9/", "refresh"],
        ["--lapi-url", "notaurl", "--api-key", "k", "refresh"],
        ["--lapi-url", "http://127.0.0.1:9/", "--api-key-file", "/nonexistent/key", "refresh"],
    ],
)
def test_bad_settings_are_one_line_errors(capsys, tmp_path, argv):
    assert main(["--home", str(tmp_path / "home"), *argv]) == 2
    one_line_error(capsys)


def test_a_home_that_cannot_be_written_is_a_storage_error(capsys, tmp_path):
    home = tmp_path / "a-file"
    home.write_text("")  # root writes anywhere: a file where the directory should be is refused to all
    assert main(["--home", str(home), "--url", "http://127.0.0.1:9/", "--scenario", "a/b", "register"]) == 2
    assert "StorageError" in one_line_error(capsys)


def test_a_port_in_use_is_a_one_line_error(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["simulate", "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot serve on 127.0.0.1" in one_line_error(capsys)


def test_a_refresh_whose_snapshot_cannot_be_written_exits_1(capsys, sim, tmp_path):
    (tmp_path / "decisions.snap").mkdir()
    code, out = cli(capsys, sim, tmp_path, "refresh")
    assert code == 1 and "snapshot not saved" in out


def test_the_library_refuses_negative_retries_and_timeouts():
    from capi_fast import CapiClient, ConfigurationError, LapiClient

    for bad in ({"retries": -1}, {"retries": 1.5}, {"timeout": 0}, {"backoff": -1}, {"metrics_interval": 0}):
        with pytest.raises(ConfigurationError):
            CapiClient(user_agent="x/1", scenarios=["a/b"], **bad)
    with pytest.raises(ConfigurationError):
        LapiClient("http://127.0.0.1:9/", api_key="k", retries=-1)


def test_a_tiny_demo_runs(capsys):
    assert main(["demo", "--decisions", "1"]) == 0
    assert "get_ip_remediation" in capsys.readouterr().out


def test_check_exit_code_json_anywhere_version_dates_and_remembered_url(capsys, sim, tmp_path):
    home = str(tmp_path)
    assert main(["--home", home, "--url", sim.url, "--scenario", "mywaf/x", "register"]) == 0
    capsys.readouterr()
    # No --url, no --scenario: register's are remembered (CAPI_FAST_URL unset in this test).
    assert main(["--home", home, "refresh"]) == 0
    assert any(r.path.endswith("/decisions/stream") for r in sim.requests), "the simulator was asked"
    capsys.readouterr()
    assert main(["--home", home, "check", "10.0.0.1"]) == 0
    assert main(["--home", home, "check", "10.0.0.1", "192.0.2.1"]) == 1, "one remediated: exit 1"
    capsys.readouterr()
    assert main(["--home", home, "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc["last_refresh"], float)
    assert main(["--home", home, "status"]) == 0
    human = capsys.readouterr().out
    assert re.search(r"last_refresh: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", human), human
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("capi-fast ")


def test_a_progress_line_on_a_terminal_only(sim, tmp_path):
    import pty

    cmd = [sys.executable, "-m", "capi_fast.cli", "--home", str(tmp_path), "--url", sim.url, "--scenario", "mywaf/x"]
    master, slave = pty.openpty()
    try:
        done = subprocess.run([*cmd, "refresh"], stderr=slave, stdout=subprocess.PIPE, timeout=120)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert done.returncode == 0 and b"pulling decisions from" in seen and b"\x1b[2K" in seen
    piped = subprocess.run([*cmd, "refresh", "--force"], capture_output=True, timeout=120)
    assert piped.returncode == 0 and b"pulling" not in piped.stderr, "no progress line when stderr is not a terminal"


def test_a_damaged_registration_file_reads_as_nothing_remembered(capsys, tmp_path):
    (tmp_path / "cli.json").write_text('{"scenarios": "not a list", "prefix": 7, "url": ""}')
    assert main(["--home", str(tmp_path), "refresh"]) == 2
    assert "no scenario" in capsys.readouterr().err


def test_the_readers_take_another_snapshot_such_as_the_daemons(capsys, sim, tmp_path, monkeypatch):
    """The daemon writes its ``[snapshot] path``; the CLI reads it with --snapshot (or the environment)."""
    daemons = tmp_path / "daemon" / "decisions.snap"
    daemons.parent.mkdir()
    assert cli(capsys, sim, tmp_path / "home", "--snapshot", str(daemons), "refresh")[0] == 0
    assert daemons.is_file() and not (tmp_path / "home" / "decisions.snap").exists()
    code, out = cli(capsys, sim, tmp_path / "home", "--snapshot", str(daemons), "check", "192.0.2.1")
    assert (code, out.strip()) == (1, "192.0.2.1 ban")
    monkeypatch.setenv("CAPI_FAST_SNAPSHOT", str(daemons))
    code, out = cli(capsys, sim, tmp_path / "home", "--json", "status")
    assert code == 0 and json.loads(out)["decisions"] == 6
    monkeypatch.delenv("CAPI_FAST_SNAPSHOT")
    code, out = cli(capsys, sim, tmp_path / "home", "--json", "status")
    assert code == 1 and json.loads(out)["snapshot_error"], "the home's own snapshot is still the default"
