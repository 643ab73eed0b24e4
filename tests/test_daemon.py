"""``capi-fast run --config``: the daemon as a process, fed by Debian's crowdsec (a LAPI) or by the
CAPI simulator, keeping nftables in a network namespace in step; signals; configuration errors.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from capi_fast import RemediationEngine
from capi_fast.daemon_config import load_config
from capi_fast.errors import ConfigurationError
from capi_fast.testing import CapiSimulator
from crowdsec_support import CROWDSEC, local_api, run_cscli
from daemon_support import CAPI_FAST, Running, until, write
from netns_support import Net, two_hosts

NETNS = os.geteuid() == 0 and bool(shutil.which("nft")) and bool(shutil.which("ip"))


@pytest.fixture
def net() -> Iterator[Net]:
    if not NETNS:
        pytest.skip("needs root, nft and ip")
    with two_hosts("dmn") as n:
        yield n


def lapi_config(tmp_path: Path, net: Net, url: str, key: str, extra: str = "", name: str = "c.toml") -> Path:
    return write(
        tmp_path / name,
        f"""
[source]
lapi_url = "{url}"
api_key = "{key}"
interval = 1

[firewall]
backend = "nftables"
action = "reject"
netns = "{net.srv}"
{extra}
""",
    )


def tables(net: Net) -> str:
    return subprocess.run([*net.nft(), "list", "tables"], capture_output=True, text=True, check=True).stdout


def test_daemon_follows_cscli_decisions_into_nftables(net, tmp_path):
    if CROWDSEC is None:
        pytest.skip("Debian's crowdsec is not installed")
    with local_api(tmp_path / "cs") as (cs_config, url, key):
        key_file = tmp_path / "lapi.key"
        key_file.write_text(key)
        key_file.chmod(0o600)
        snapshot = tmp_path / "decisions.snap"
        config = write(
            tmp_path / "capi-fast.toml",
            f"""
[source]
lapi_url = "{url}"
api_key_file = "{key_file}"
interval = 1

[snapshot]
path = "{snapshot}"

[firewall]
backend = "nftables"
action = "reject"
netns = "{net.srv}"
""",
        )
        daemon = Running(config)
        try:
            until("the first sync", lambda: "capi_fast" in tables(net))
            assert net.connects("10.77.0.3")
            run_cscli(cs_config, "decisions", "add", "--ip", "10.77.0.3", "--type", "ban", "--duration", "1h")
            took = until("the ban to reach the kernel", lambda: not net.connects("10.77.0.3"))
            assert net.connects("10.77.0.2")
            follower = RemediationEngine.follow(snapshot)
            assert follower.get_ip_remediation("10.77.0.3") == "ban", "the snapshot followers read"
            run_cscli(cs_config, "decisions", "delete", "--ip", "10.77.0.3")
            until("the deletion to reach the kernel", lambda: net.connects("10.77.0.3"))
            # SIGHUP: the configuration is read again (here: drop rules from now on).
            config.write_text(config.read_text().replace('action = "reject"', 'action = "drop"'))
            daemon.proc.send_signal(signal.SIGHUP)
            until("the reload", lambda: "configuration reloaded" in daemon.text())
            until(
                "drop rules",
                lambda: (
                    "drop" in subprocess.run([*net.nft(), "list", "ruleset"], capture_output=True, text=True).stdout
                ),
            )
        finally:
            code = daemon.stop()
        log = daemon.text()
        assert code == 0, log
        assert "capi_fast" not in tables(net), "cleanup on stop removed the table"
        assert "firewall full load" in log and "firewall delta: +1 -0" in log and "firewall delta: +0 -1" in log
        assert "daemon stopped" in log and "Traceback" not in log
        assert took < 30


def test_daemon_fed_by_the_capi_simulator(net, tmp_path):
    home = tmp_path / "home"
    with CapiSimulator() as sim:
        sim.add_decisions(["10.77.0.3", "fd77::3"])
        env = {**os.environ, "CAPI_FAST_URL": sim.url, "CAPI_FAST_HOME": str(home)}
        done = subprocess.run(
            [*CAPI_FAST, "--scenario", "mywaf/bf", "register"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        config = write(
            tmp_path / "capi.toml",
            f"""
[source]
capi = true
home = "{home}"

[firewall]
backend = "nftables"
action = "reject"
netns = "{net.srv}"
cleanup = false
""",
        )
        daemon = Running(config)
        try:
            until("the startup pull to reach the kernel", lambda: not net.connects("10.77.0.3"))
            assert not net.connects("fd77::3") and net.connects("10.77.0.2")
        finally:
            assert daemon.stop() == 0, daemon.text()
        assert "capi_fast" in tables(net), "cleanup = false keeps the rules after a stop"


@pytest.mark.parametrize(
    "text,message",
    [
        ("[source]\nlapi_url = 'http://x/'\napi_key = 'k'\nintervall = 3\n", "unknown key source.intervall"),
        ("[source]\nlapi_url = 'http://x/'\napi_key = 'k'\ninterval = 'soon'\n", "source.interval must be"),
        ("[source]\napi_key = 'k'\n", "either lapi_url or capi"),
        ("[source]\nlapi_url = 'http://x/'\n", "api_key_file (or api_key) is required"),
        ("[source]\ncapi = true\n[firewall]\nbackend = 'pf'\n", "firewall.backend"),
        ("[source]\ncapi = true\n[firewal]\n", "unknown table [firewal]"),
        ("[source]\ncapi = true\n[firewall]\nhooks = 'input'\n", "firewall.hooks must be"),
        ("[source]\ncapi = true\n[metrics]\ninterval = -1\n", "metrics.interval"),
        ("[source\n", "not valid TOML"),
        ("[source]\ncapi = true\ninterval = 0.5\n", "at least 1 second"),
        ("[source]\ncapi = true\n[firewall]\nbackend = 'nftables'\nnetns = ''\n", "firewall.netns"),
        ("[source]\ncapi = true\n[firewall]\nbackend = 'nftables'\nhooks = ['INPUT']\n", "hooks must be"),
        ("[source]\ncapi = true\n[firewall]\nbackend = 'nftables'\nlog_prefix = '$ban'\n", "log_prefix"),
        ("[source]\ncapi = true\n[firewall]\nbackend = 'ipset'\nremediations = []\n", "at least one"),
        ("[source]\ncapi = true\n[firewall]\nbackend = 'ipset'\ntimeouts = true\n", "nftables option"),
        ("[source]\ncapi = true\n[firewall]\nbackend = 'nftables'\ntimeouts = 1\n", "firewall.timeouts"),
    ],
)
def test_configuration_errors_name_the_key(tmp_path, text, message):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(path)
    done = subprocess.run([*CAPI_FAST, "run", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_key_file_others_can_read_is_refused(tmp_path):
    key = write(tmp_path / "key", "secret")
    key.chmod(0o644)
    path = write(tmp_path / "c.toml", f"[source]\nlapi_url = 'http://x/'\napi_key_file = '{key}'\n")
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_config(path)


def test_cli_firewall_apply_and_remove(net, tmp_path):
    home = str(tmp_path / "home")
    with CapiSimulator() as sim:
        sim.add_decisions(["10.77.0.3"])
        base = [*CAPI_FAST, "--home", home]
        done = subprocess.run([*base, "--url", sim.url, "--scenario", "mywaf/bf", "refresh"], capture_output=True)
        assert done.returncode == 0, done.stderr
    for backend in ("nftables", "ipset"):
        if backend == "ipset" and not shutil.which("ipset"):
            continue
        inside = ["ip", "netns", "exec", net.srv, *base, "firewall"]
        done = subprocess.run([*inside, "apply", "--backend", backend, "--reject", "--json"], capture_output=True)
        assert done.returncode == 0 and b'"elements": 1' in done.stdout, done.stderr
        assert not net.connects("10.77.0.3") and net.connects("10.77.0.2")
        done = subprocess.run([*inside, "remove", "--backend", backend], capture_output=True)
        assert done.returncode == 0, done.stderr
        assert net.connects("10.77.0.3")
    # Without a snapshot nothing is loaded (an empty ban set would fail open): exit 2, one line.
    empty = ["ip", "netns", "exec", net.srv, *CAPI_FAST, "--home", str(tmp_path / "none"), "firewall", "apply"]
    done = subprocess.run(empty, capture_output=True, text=True)
    assert done.returncode == 2 and "refresh" in done.stderr and "capi_fast" not in tables(net)


def test_a_source_down_at_start_leaves_the_kernel_alone(net, tmp_path):
    # An earlier run left its table (cleanup = false); this start cannot reach the LAPI and has
    # no snapshot: it must not load an empty set over what the kernel holds.
    from capi_fast import DecisionIndex
    from capi_fast.firewall import FirewallSync
    from capi_fast.nftables import NftablesBackend

    ix = DecisionIndex()
    ix.add("10.77.0.3")
    FirewallSync(ix, NftablesBackend(action="reject", command=net.nft())).sync()
    assert not net.connects("10.77.0.3")
    config = lapi_config(tmp_path, net, "http://127.0.0.1:1/", "k", "cleanup = false", name="down.toml")
    daemon = Running(config)
    try:
        until("two refresh attempts", lambda: daemon.text().count("firewall left as it is") >= 2)
        assert not net.connects("10.77.0.3"), "the earlier content still blocks"
    finally:
        assert daemon.stop() == 0, daemon.text()


def test_reloads_never_leave_the_kernel_empty_and_sigterm_wins(net, tmp_path):
    if CROWDSEC is None:
        pytest.skip("Debian's crowdsec is not installed")
    with local_api(tmp_path / "cs") as (cs_config, url, key):
        run_cscli(cs_config, "decisions", "add", "--ip", "10.77.0.3", "--type", "ban", "--duration", "1h")
        config = lapi_config(tmp_path, net, url, key, "verify_every = 1")
        daemon = Running(config)
        try:
            until("the ban", lambda: not net.connects("10.77.0.3"))
            # A file that reads as TOML but that the backend refuses: the old configuration stays.
            config.write_text(config.read_text().replace('action = "reject"', 'action = "reject"\nhooks = ["INPUT"]'))
            daemon.proc.send_signal(signal.SIGHUP)
            until("the refusal", lambda: "configuration not reloaded" in daemon.text())
            assert daemon.proc.poll() is None and not net.connects("10.77.0.3")
            # Someone flushes the sets behind the daemon's back: the read-back notices, reloads.
            subprocess.run([*net.nft(), "flush", "set", "inet", "capi_fast", "ban_v4"], check=True)
            until("the repair", lambda: not net.connects("10.77.0.3"))
            assert "differ from what was applied" in daemon.text()
            # A change of log prefix (same table): reloaded in place, never removed in between.
            config.write_text(config.read_text().replace('hooks = ["INPUT"]', 'log_prefix = "cf "'))
            daemon.proc.send_signal(signal.SIGHUP)
            until("the reload", lambda: "configuration reloaded" in daemon.text())
            assert not net.connects("10.77.0.3") and "capi_fast" in tables(net)
            # SIGTERM right after SIGHUP still stops it.
            daemon.proc.send_signal(signal.SIGHUP)
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.proc.wait(30) == 0
        finally:
            if daemon.proc.poll() is None:
                daemon.stop()
            daemon.out.close()


def test_firewall_failures_show_at_warning_level(tmp_path):
    config = write(
        tmp_path / "w.toml",
        '[source]\nlapi_url = "http://127.0.0.1:1/"\napi_key = "k"\ninterval = 1\n'
        '[snapshot]\npath = "SNAP"\n[firewall]\nbackend = "nftables"\nnetns = "capi-fast-no-such-ns"\n'
        '[log]\nlevel = "warning"\n'.replace("SNAP", str(tmp_path / "d.snap")),
    )
    from capi_fast import RemediationEngine as Engine

    engine = Engine(None, snapshot_path=tmp_path / "d.snap")
    engine.index.add("192.0.2.1")
    assert engine._save() is None
    daemon = Running(config)
    try:
        until("a warning", lambda: "WARNING" in daemon.text() and "firewall failed" in daemon.text())
    finally:
        assert daemon.stop() == 0


def test_a_burst_of_signals_never_wedges_the_daemon(tmp_path):
    # Signals landing while another's handler runs: a handler that took a lock could deadlock.
    config = write(tmp_path / "b.toml", '[source]\nlapi_url = "http://127.0.0.1:1/"\napi_key = "k"\ninterval = 1\n')
    daemon = Running(config)
    try:
        until("the start", lambda: "daemon started" in daemon.text())
        for _ in range(300):
            daemon.proc.send_signal(signal.SIGHUP)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(30) == 0, daemon.text()[-2000:]
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        daemon.out.close()
