"""Running Debian's crowdsec in tests: an isolated copy of its configuration, and cscli."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from support import stop

CROWDSEC = shutil.which("crowdsec") or ("/usr/bin/crowdsec" if os.path.exists("/usr/bin/crowdsec") else None)
CSCLI = shutil.which("cscli") or ("/usr/bin/cscli" if os.path.exists("/usr/bin/cscli") else None)


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


def write_config(root: Path, online: tuple[str, str, str] | None = None) -> tuple[Path, int]:
    """Writes a config using only ``root``; ``online`` = (CAPI url, login, password) or no CAPI at all.

    Returns the config path and the LAPI port.
    """
    data = root / "data"
    shutil.copytree("/var/lib/crowdsec/data", data, ignore=shutil.ignore_patterns("crowdsec.db*"))
    (root / "log").mkdir()
    (root / "acquis.d").mkdir()
    (root / "auth.log").write_text("")
    (root / "acquis.yaml").write_text(f"filenames:\n  - {root / 'auth.log'}\nlabels:\n  type: syslog\n")
    if online is not None:
        url, login, password = online
        (root / "online.yaml").write_text(f"url: {url}\nlogin: {login}\npassword: {password}\n")
    (root / "console.yaml").write_text("share_manual_decisions: false\nshare_custom: true\nshare_tainted: true\n")
    port = free_port()
    online_client = f"    online_client:\n      credentials_path: {root / 'online.yaml'}\n" if online else ""
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
{online_client}    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
"""
    path = root / "config.yaml"
    path.write_text(cfg)
    return path, port


def cscli(config: Path, *args: str) -> Any:
    out = subprocess.run([CSCLI, "-c", str(config), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


def require_crowdsec() -> None:
    """Skips the calling module without crowdsec, unless CI demands it."""
    if not (CROWDSEC and CSCLI and Path("/etc/crowdsec/config.yaml").exists()):
        if os.environ.get("CAPI_FAST_REQUIRE_CROWDSEC"):
            raise RuntimeError("crowdsec is required here (CAPI_FAST_REQUIRE_CROWDSEC=1) but is not installed")
        pytest.skip("Debian's crowdsec is not installed (.ci/run installs it)", allow_module_level=True)


@contextlib.contextmanager
def running(config: Path, *args: str, prefix: Sequence[str] = ()) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """Runs ``crowdsec -c config *args`` with its output in a log file; stops it on exit.

    ``prefix`` runs it under another command (``ip netns exec NS`` for a network namespace).
    """
    log = config.parent / "crowdsec.out"
    with open(log, "wb") as out:
        cmd = [*prefix, str(CROWDSEC), "-c", str(config), *args]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, log
    finally:
        stop(proc, 20)


def run_cscli(config: Path, *args: str) -> str:
    """``cscli -c config *args``; its text output (the call must succeed)."""
    out = subprocess.run([str(CSCLI), "-c", str(config), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@contextlib.contextmanager
def local_api(root: Path) -> Iterator[tuple[Path, str, str]]:
    """A crowdsec LAPI alone (``-no-cs``, no CAPI) with one bouncer key: (config, url, key)."""
    from capi_fast.lapi import LapiClient

    config, port = write_config(root)
    run_cscli(config, "machines", "add", "-a", "--force")
    with running(config, "-no-cs") as (proc, log):
        key = run_cscli(config, "bouncers", "add", "capi-fast-test", "-o", "raw").strip()
        url = f"http://127.0.0.1:{port}/"

        def answers() -> bool:
            try:
                with LapiClient(url, key, retries=0) as c:
                    c.get_stream_decisions(startup=True)
                return True
            except Exception:
                return False

        wait_for("the LAPI to listen", answers, 60, proc, log)
        yield config, url, key
