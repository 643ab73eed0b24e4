"""Fidelity: a real crowdsec (Debian's 1.4.6) works against the simulator.

crowdsec logs in with its scenario list, pulls the stream (the simulator's decisions appear in
``cscli decisions list -a``), and pushes the signal of a real ssh brute-force alert read from a
log file. ``.ci/run`` installs the package and sets CAPI_FAST_REQUIRE_CROWDSEC=1, so in CI a
missing crowdsec fails instead of skipping.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capi_fast import CapiClient, MemoryStorage
from capi_fast.testing import CapiSimulator
from crowdsec_support import CSCLI, cscli, require_crowdsec, running, wait_for, write_config

require_crowdsec()


@pytest.fixture
def crowdsec(tmp_path: Path) -> Iterator[tuple[CapiSimulator, Path, subprocess.Popen[bytes], Path]]:
    with CapiSimulator() as sim:
        storage = MemoryStorage()
        with CapiClient(
            user_agent="fidelity-test/1",
            scenarios=["crowdsecurity/ssh-bf"],
            base_url=sim.url,
            api_version="v2",
            storage=storage,
            metrics_interval=None,
        ) as c:
            c.login()  # registers the watcher crowdsec will use
        creds = storage.load_credentials()
        assert creds is not None
        sim.add_decisions(["192.0.2.55", "198.51.100.0/24"], scenario="crowdsecurity/ssh-bf", duration=7200)
        config, _ = write_config(tmp_path, (sim.url, creds.machine_id, creds.password))
        subprocess.run(
            [CSCLI, "-c", str(config), "machines", "add", "-a", "--force"], check=True, capture_output=True, timeout=60
        )
        with running(config) as (proc, log):
            yield sim, config, proc, log


def test_real_crowdsec_logs_in_pulls_and_pushes(crowdsec):
    sim, config, proc, log = crowdsec

    def theirs(path: str) -> list[Any]:
        return [r for r in sim.requests if r.path == path and "capi-fast/" not in r.user_agent]

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
    # The simulator enforces CAPI's schema: a real crowdsec must never be refused by it.
    crowdsec_calls = [r for r in sim.requests if "capi-fast/" not in r.user_agent]
    refused = [(r.method, r.path, r.status) for r in crowdsec_calls if r.status >= 400]
    assert not refused, refused
