"""Fidelity: a real crowdsec (Debian's 1.4.6) works against the simulator.

crowdsec logs in with its scenario list, pulls the stream (the simulator's decisions appear in
``cscli decisions list -a``), and pushes the signal of a real ssh brute-force alert read from a
log file. ``.ci/run`` installs the package and sets CAPI_FAST_REQUIRE_CROWDSEC=1, so in CI a
missing crowdsec fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capi_fast import CapiClient, MemoryStorage
from capi_fast.testing import CapiSimulator

CROWDSEC = shutil.which("crowdsec") or ("/usr/bin/crowdsec" if os.path.exists("/usr/bin/crowdsec") else None)
CSCLI = shutil.which("cscli") or ("/usr/bin/cscli" if os.path.exists("/usr/bin/cscli") else None)

if not (CROWDSEC and CSCLI and Path("/etc/crowdsec/config.yaml").exists()):
    if os.environ.get("CAPI_FAST_REQUIRE_CROWDSEC"):
        raise RuntimeError("crowdsec is required here (CAPI_FAST_REQUIRE_CROWDSEC=1) but is not installed")
    pytest.skip("Debian's crowdsec is not installed (.ci/run installs it)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    """Polls ``check`` until it returns something truthy; fails with crowdsec's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc.poll() is not None:
            break
        time.sleep(0.25)  # polling interval of an external process, not a race cover-up
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    pytest.fail(f"timed out waiting for {what}; crowdsec exit={proc.poll()}\n{tail}")


def write_config(root: Path, sim_url: str, login: str, password: str) -> Path:
    data = root / "data"
    shutil.copytree("/var/lib/crowdsec/data", data, ignore=shutil.ignore_patterns("crowdsec.db*"))
    (root / "log").mkdir()
    (root / "acquis.d").mkdir()
    (root / "auth.log").write_text("")
    (root / "acquis.yaml").write_text(f"filenames:\n  - {root / 'auth.log'}\nlabels:\n  type: syslog\n")
    (root / "online.yaml").write_text(f"url: {sim_url}\nlogin: {login}\npassword: {password}\n")
    (root / "console.yaml").write_text("share_manual_decisions: false\nshare_custom: true\nshare_tainted: true\n")
    port = free_port()
    cfg = f"""
common:
  daemonize: false
  log_media: file
  log_level: info
  log_dir: {root / "log"}/
  working_dir: .
config_paths:
  config_dir: /etc/crowdsec/
  data_dir: {data}/
  simulation_path: /etc/crowdsec/simulation.yaml
  hub_dir: /var/lib/crowdsec/hub/
  index_path: /var/lib/crowdsec/hub/.index.json
  notification_dir: /etc/crowdsec/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
crowdsec_service:
  acquisition_path: {root / "acquis.yaml"}
  acquisition_dir: {root / "acquis.d"}
  parser_routines: 1
cscli:
  output: json
db_config:
  log_level: info
  type: sqlite
  db_path: {root / "crowdsec.db"}
  use_wal: true
plugin_config:
  user: nobody
  group: nogroup
api:
  client:
    insecure_skip_verify: false
    credentials_path: {root / "local.yaml"}
  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
    profiles_path: /etc/crowdsec/profiles.yaml
    console_path: {root / "console.yaml"}
    online_client:
      credentials_path: {root / "online.yaml"}
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
"""
    path = root / "config.yaml"
    path.write_text(cfg)
    return path


def cscli(config: Path, *args: str) -> Any:
    out = subprocess.run([CSCLI, "-c", str(config), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


@pytest.fixture
def crowdsec(tmp_path: Path) -> Iterator[tuple[CapiSimulator, Path, subprocess.Popen[bytes], Path]]:
    with CapiSimulator() as sim:
        storage = MemoryStorage()
        with CapiClient(
            user_agent="fidelity-test/1", scenarios=[], base_url=sim.url, api_version="v2", storage=storage
        ) as c:
            c.login()  # registers the watcher crowdsec will use
        creds = storage.load_credentials()
        assert creds is not None
        sim.add_decisions(["192.0.2.55", "198.51.100.0/24"], scenario="crowdsecurity/ssh-bf", duration=7200)
        config = write_config(tmp_path, sim.url, creds.machine_id, creds.password)
        subprocess.run(
            [CSCLI, "-c", str(config), "machines", "add", "-a", "--force"], check=True, capture_output=True, timeout=60
        )
        log = tmp_path / "crowdsec.out"
        with open(log, "wb") as out:
            proc = subprocess.Popen([CROWDSEC, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)
        try:
            yield sim, config, proc, log
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_real_crowdsec_logs_in_pulls_and_pushes(crowdsec):
    sim, config, proc, log = crowdsec

    def theirs(path: str) -> list[Any]:
        return [r for r in sim.requests if r.path == path and not r.user_agent.startswith("capi-fast/")]

    wait_for("crowdsec's login", lambda: any(r.status == 200 for r in theirs("/v2/watchers/login")), 60, proc, log)
    wait_for("stream pull", lambda: theirs("/v2/decisions/stream"), 60, proc, log)

    def pulled() -> set[str]:
        alerts = cscli(config, "decisions", "list", "-a") or []
        return {d["value"] for a in alerts for d in (a.get("decisions") or [])}

    values = wait_for("CAPI decisions in cscli", lambda: pulled() >= {"192.0.2.55", "198.51.100.0/24"}, 60, proc, log)
    assert values

    auth = config.parent / "auth.log"

    def attack_and_check() -> list[dict[str, Any]]:
        stamp = time.strftime("%b %d %H:%M:%S")
        lines = [
            f"{stamp} web-01 sshd[{4000 + i}]: Failed password for invalid user admin{i} "
            f"from 192.0.2.77 port {50000 + i} ssh2\n"
            for i in range(8)
        ]
        with open(auth, "a") as f:
            f.writelines(lines)
        return [s for s in sim.signals if (s.get("source") or {}).get("value") == "192.0.2.77"]

    signals = wait_for("the ssh-bf signal", attack_and_check, 150, proc, log)
    assert signals[0]["scenario"].startswith("crowdsecurity/ssh")
    assert signals[0]["start_at"] and signals[0]["stop_at"]
