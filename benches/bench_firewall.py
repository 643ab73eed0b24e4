"""capi-fast's daemon against Debian's crowdsec-firewall-bouncer, fed by the same crowdsec LAPI.

Everything runs in one network namespace this benchmark creates (the host's rules are never
touched): Debian's crowdsec as the LAPI on its loopback, holding N decisions of the community
blocklist's shape (``make bench``: 100,000; the test suite: 2,000), imported with ``cscli
decisions import``; ``BENCH_FW_SIZE`` sets another size, ``BENCH_FW_LIMIT`` how long the firewall
bouncer gets for its full load (1,800 s; past it, the elements it loaded are reported). Then each
bouncer in turn, with its own bouncer key and a 1 s refresh:

- time from its start until the kernel's sets hold every decision;
- time until a delta of 1,000 more decisions (imported at once) is in the kernel;
- the kernel's element count (capi-fast aggregates; the firewall bouncer keeps one per decision);
- its RSS once loaded.

capi-fast runs first, on N decisions; the firewall bouncer then starts on N + 1,000 and gets its
own delta of 1,000. Figures are printed, never asserted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchsupport import EXTRA, SEED, N
from capi_fast import DecisionIndex
from capi_fast.workload import community_blocklist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from crowdsec_support import CROWDSEC, CSCLI, running, write_config  # noqa: E402

SIZE = int(os.environ.get("BENCH_FW_SIZE", 100_000 if N >= 100_000 else 2_000))
#: How long the firewall bouncer gets to load everything (a million decisions may not fit).
LIMIT = float(os.environ.get("BENCH_FW_LIMIT", 1800))
DELTA = 1_000
NS = f"capi-fwbench-{os.getpid()}"
BOUNCER = shutil.which("crowdsec-firewall-bouncer")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (CROWDSEC and CSCLI and BOUNCER and shutil.which("nft") and shutil.which("ip")),
    reason="needs root, ip, nft, crowdsec and crowdsec-firewall-bouncer (Debian packages)",
)


def _in_ns(*cmd: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *cmd]


def _cscli(config: Path, *args: str) -> str:
    done = subprocess.run(_in_ns(str(CSCLI), "-c", str(config), *args), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-500:]
    return done.stdout


def _csv(path: Path, values: list[str]) -> Path:
    rows = [f"24h,{'range' if '/' in v else 'ip'},ban,{v}" for v in values]
    path.write_text("duration,scope,type,value\n" + "\n".join(rows) + "\n")
    return path


def _until(check: Callable[[], bool], limit: float, poll: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise TimeoutError("not within the limit")
        time.sleep(poll)  # polling another process's effect on the kernel
    return time.monotonic() - start


def _elements(family: str, table: str, name: str) -> int:
    done = subprocess.run(_in_ns("nft", "-j", "list", "set", family, table, name), capture_output=True, timeout=120)
    if done.returncode != 0:
        return 0
    return sum(len(item.get("set", {}).get("elem", [])) for item in json.loads(done.stdout).get("nftables", []))


def _ours() -> int:
    return sum(_elements("inet", "capi_fast", n) for n in ("ban_v4", "ban_v4_nets", "ban_v6", "ban_v6_nets"))


def _theirs() -> int:
    return _elements("ip", "crowdsec", "crowdsec-blacklists") + _elements("ip6", "crowdsec6", "crowdsec6-blacklists")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def lapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fwbench")
    subprocess.run(["ip", "netns", "delete", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(_in_ns("ip", "link", "set", "lo", "up"), check=True)
    try:
        config, port = write_config(root / "cs")
        _cscli(config, "machines", "add", "-a", "--force")
        with running(config, "-no-cs", prefix=_in_ns()):
            _until(
                lambda: (
                    subprocess.run(
                        _in_ns(str(CSCLI), "-c", str(config), "decisions", "list"), capture_output=True
                    ).returncode
                    == 0
                ),
                60,
                0.25,
            )
            workload = [v for v, *_ in community_blocklist(SIZE, SEED)]
            started = time.monotonic()
            _cscli(config, "decisions", "import", "-i", str(_csv(root / "all.csv", workload)))
            EXTRA[f"firewall ({SIZE:,} LAPI decisions)"]["cscli import, s"] = time.monotonic() - started
            yield {"root": root, "config": config, "url": f"http://127.0.0.1:{port}/", "workload": workload}
    finally:
        subprocess.run(["ip", "netns", "delete", NS], capture_output=True)


def _delta_values(start: int) -> list[str]:
    """1,000 addresses two apart in 100.64.0.0/10, which the workload does not draw from."""
    return [str(ipaddress.IPv4Address(0x64400000 + 2 * (start + i))) for i in range(DELTA)]


def _aggregated(values: list[str]) -> int:
    ix = DecisionIndex()
    ix.add_many(values, strict=False)
    return len(ix.export_cidrs("ban", family=4)) + len(ix.export_cidrs("ban", family=6))


def test_capi_fast_then_the_firewall_bouncer(lapi: dict[str, Any]) -> None:
    root, config, url, workload = lapi["root"], lapi["config"], lapi["url"], lapi["workload"]
    group = EXTRA[f"firewall ({SIZE:,} LAPI decisions)"]

    # -- capi-fast ----------------------------------------------------------------------------
    key = _cscli(config, "bouncers", "add", "capi-fast-bench", "-o", "raw").strip()
    ours = root / "capi-fast.toml"
    ours.write_text(
        f'[source]\nlapi_url = "{url}"\napi_key = "{key}"\ninterval = 1\n'
        '[firewall]\nbackend = "nftables"\n[metrics]\ninterval = 0\n'
    )
    expect = _aggregated(workload)
    log = (root / "capi-fast.log").open("wb")
    proc = subprocess.Popen(
        _in_ns(sys.executable, "-m", "capi_fast.cli", "run", "--config", str(ours)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        group["capi-fast full load, s"] = _until(
            lambda: "firewall full load" in (root / "capi-fast.log").read_text(), 600, 0.02
        )
        assert _ours() == expect
        group["capi-fast elements"] = float(expect)
        group["capi-fast RSS, MB"] = _rss_mb(proc.pid)
        new = _delta_values(0)
        expect_after = _aggregated(workload + new)
        t = time.monotonic()
        _cscli(config, "decisions", "import", "-i", str(_csv(root / "d1.csv", new)))
        group["capi-fast +1,000 delta, s"] = time.monotonic() - t + _until(lambda: _ours() == expect_after, 120, 0.05)
        applied = [line for line in (root / "capi-fast.log").read_text().splitlines() if "firewall delta: +" in line]
        group["capi-fast delta apply, ms"] = max(
            float(line.split(" in ")[-1].split(" s")[0]) * 1000
            for line in applied
            if "firewall delta: +0 -0" not in line
        )
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()

    # -- crowdsec-firewall-bouncer --------------------------------------------------------------
    key = _cscli(config, "bouncers", "add", "firewall-bench", "-o", "raw").strip()
    theirs = root / "firewall-bouncer.yaml"
    theirs.write_text(
        f"mode: nftables\npid_dir: {root}\nupdate_frequency: 1s\ndaemonize: false\nlog_mode: file\n"
        f"log_dir: {root}\nlog_level: info\napi_url: {url}\napi_key: {key}\ndisable_ipv6: false\n"
        "deny_action: DROP\ndeny_log: false\nsupported_decisions_types:\n  - ban\n"
        "nftables:\n  ipv4:\n    enabled: true\n    set-only: false\n    table: crowdsec\n"
        "    chain: crowdsec-chain\n  ipv6:\n    enabled: true\n    set-only: false\n"
        "    table: crowdsec6\n    chain: crowdsec6-chain\nprometheus:\n  enabled: false\n"
    )
    held = len(workload) + DELTA
    proc = subprocess.Popen(
        _in_ns(str(BOUNCER), "-c", str(theirs)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        poll = 2.0 if SIZE >= 100_000 else 0.2
        try:
            group["firewall-bouncer full load, s"] = _until(lambda: _theirs() >= held, LIMIT, poll)
        except TimeoutError:  # it does not cope: what it loaded within the limit is the figure
            group[f"firewall-bouncer elements after {LIMIT:.0f} s"] = float(_theirs())
            group["firewall-bouncer RSS, MB"] = _rss_mb(proc.pid)
            return
        group["firewall-bouncer elements"] = float(_theirs())
        group["firewall-bouncer RSS, MB"] = _rss_mb(proc.pid)
        t = time.monotonic()
        _cscli(config, "decisions", "import", "-i", str(_csv(root / "d2.csv", _delta_values(DELTA))))
        group["firewall-bouncer +1,000 delta, s"] = (
            time.monotonic() - t + _until(lambda: _theirs() >= held + DELTA, 600, 0.2)
        )
    finally:
        proc.terminate()
        proc.wait(60)
    group["ratio full load"] = group["firewall-bouncer full load, s"] / group["capi-fast full load, s"]
