"""The ``capi-fast`` command line.

Configuration comes from options or the environment: ``CAPI_FAST_HOME`` (storage directory,
default ``~/.capi-fast``), ``CAPI_FAST_URL`` (CAPI base URL, production by default),
``CAPI_FAST_LAPI_URL`` with ``CAPI_FAST_LAPI_KEY_FILE`` or ``CAPI_FAST_LAPI_KEY`` (take decisions
from a LAPI instead; a key on the command line shows in ``ps``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from capi_fast._native import __version__
from capi_fast.client import PROD_URL, CapiClient
from capi_fast.demo import run_demo
from capi_fast.engine import RemediationEngine
from capi_fast.errors import CapiFastError, ConfigurationError, SnapshotError
from capi_fast.export import FORMATS, check_set_name, render
from capi_fast.files import read_private
from capi_fast.lapi import LapiClient
from capi_fast.registration import Registration, load_registration, save_registration
from capi_fast.storage import FileStorage

__all__ = ["main"]


def _count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number within bounds."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range: {bounds}")
        return value

    return parse


def _set_name(text: str) -> str:
    try:
        return check_set_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _remediation(text: str) -> str:
    if not text or not text.isprintable() or " " in text or len(text) > 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a remediation name (e.g. ban, captcha)")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capi-fast", description="CrowdSec CAPI client and remediation engine")
    p.add_argument("--home", default=os.environ.get("CAPI_FAST_HOME", str(Path.home() / ".capi-fast")))
    p.add_argument("--version", action="version", version=f"capi-fast {__version__}")
    p.add_argument(
        "--snapshot",
        default=os.environ.get("CAPI_FAST_SNAPSHOT"),
        help="decisions snapshot that refresh writes and check/export/status/firewall read "
        "(default <home>/decisions.snap; give the daemon's [snapshot] path to inspect what it enforces)",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("CAPI_FAST_URL"),
        help="CAPI base URL (default: what register was given, else production)",
    )
    p.add_argument("--lapi-url", default=os.environ.get("CAPI_FAST_LAPI_URL"), help="take decisions from this LAPI")
    p.add_argument(
        "--api-key",
        default=os.environ.get("CAPI_FAST_LAPI_KEY"),
        help="LAPI bouncer key (visible in ps: prefer CAPI_FAST_LAPI_KEY or --api-key-file)",
    )
    p.add_argument(
        "--api-key-file",
        default=os.environ.get("CAPI_FAST_LAPI_KEY_FILE"),
        help="file holding the LAPI bouncer key (mode 0600), or CAPI_FAST_LAPI_KEY_FILE",
    )
    p.add_argument("--user-agent", default="capi-fast-cli/1")
    p.add_argument("--scenario", action="append", default=[], help="scenario this machine detects (repeatable)")
    p.add_argument("--prefix", default=None, help="machine_id prefix (remembered by register)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--retries", type=_count(0, 100), default=4, help="retries of a failed call (with backoff)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("register", help="register (once) and log in; print the machine id")
    e = sub.add_parser("enroll", help="attach this machine to a CrowdSec console account")
    e.add_argument("key")
    e.add_argument("--name")
    e.add_argument("--tag", action="append", default=[])
    e.add_argument("--overwrite", action="store_true")
    r = sub.add_parser("refresh", help="pull decisions and blocklists (at most every 2 hours from CAPI)")
    r.add_argument("--force", action="store_true", help="ignore the 2-hour minimum")
    c = sub.add_parser("check", help="remediation for IPs, from the local snapshot (no network)")
    c.add_argument("ips", nargs="+")
    x = sub.add_parser("export", help="aggregated CIDRs for nft -f, ipset restore, or plain")
    x.add_argument("--format", choices=FORMATS, default="plain")
    x.add_argument("--remediation", type=_remediation, default="ban")
    x.add_argument("--family", choices=["4", "6", "all"], default="all")
    x.add_argument("--set-name", type=_set_name, default="capi_fast_ban")
    x.add_argument(
        "--allow-empty",
        action="store_true",
        help="write a script even when a set would end up empty (without it nothing is emptied)",
    )
    sub.add_parser("status", help="machine, snapshot and refresh state")
    s = sub.add_parser("simulate", help="serve the CAPI simulator until interrupted")
    s.add_argument("--port", type=_count(0, 65535), default=0, help="TCP port on 127.0.0.1 (0: any free one)")
    s.add_argument("--decisions", type=_count(0, 10_000_000), default=0, help="community decisions to preload")
    f = sub.add_parser("firewall", help="load the local snapshot's decisions into nftables or ipset once")
    f.add_argument("action", choices=["apply", "remove"])
    f.add_argument("--backend", choices=["nftables", "ipset"], default="nftables")
    f.add_argument("--name", type=_set_name, default="capi_fast", help="nftables table / ipset name prefix")
    f.add_argument("--remediation", type=_remediation, action="append", help="a set per remediation (default ban)")
    f.add_argument("--hook", choices=["input", "forward"], action="append", help="drop rule per hook (default input)")
    f.add_argument("--no-rules", action="store_true", help="sets only (your own rules use them)")
    f.add_argument("--reject", action="store_true", help="reject instead of drop")
    f.add_argument("--log-prefix", help="log matched packets with this prefix")
    run = sub.add_parser("run", help="the daemon: refresh, keep nftables/ipset in step, write the snapshot")
    run.add_argument("--config", required=True, help="TOML configuration file (see capi_fast.daemon_config)")
    d = sub.add_parser("demo", help="the whole flow against the bundled simulator, with timings")
    d.add_argument("--decisions", type=_count(1, 10_000_000), default=100_000)
    d.add_argument("--seed", type=int, default=7)
    for command in sub.choices.values():  # `capi-fast status --json` as well as `capi-fast --json status`
        command.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    return p


def _url(a: argparse.Namespace) -> str:
    """--url (or CAPI_FAST_URL), else the URL register was given, else CAPI's production URL."""
    return str(a.url or load_registration(a.home).url or PROD_URL)


def _client(a: argparse.Namespace) -> CapiClient:
    saved = load_registration(a.home)
    scenarios = a.scenario or list(saved.scenarios)
    prefix = a.prefix if a.prefix is not None else saved.prefix
    if not scenarios:
        raise ConfigurationError(
            "no scenario: pass --scenario NAME (repeatable) to register; later commands reuse what register was given"
        )
    return CapiClient(
        user_agent=a.user_agent,
        scenarios=scenarios,
        storage=FileStorage(a.home),
        machine_id_prefix=prefix,
        base_url=_url(a),
        retries=a.retries,
    )


def _api_key(a: argparse.Namespace) -> str:
    """The LAPI key: from --api-key-file (refused if others can read it), else --api-key / the environment."""
    if not a.api_key_file:
        return str(a.api_key or "")
    return read_private(a.api_key_file, "LAPI key file")


def _snapshot(a: argparse.Namespace) -> Path:
    return Path(a.snapshot) if a.snapshot else Path(a.home) / "decisions.snap"


def _engine(a: argparse.Namespace) -> RemediationEngine:
    source: CapiClient | LapiClient
    if a.lapi_url:
        FileStorage(a.home)  # creates the home directory (0700) where the snapshot goes
        source = LapiClient(a.lapi_url, _api_key(a))
    else:
        source = _client(a)
    return RemediationEngine(source, snapshot_path=_snapshot(a))


def _follow(a: argparse.Namespace) -> RemediationEngine:
    """An engine answering from the local snapshot only (no source, no network)."""
    quiet = logging.getLogger("capi_fast.engine")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warning would repeat what snapshot_error says
    try:
        return RemediationEngine.follow(_snapshot(a))
    finally:
        quiet.setLevel(level)


def _offline(a: argparse.Namespace) -> RemediationEngine:
    """``_follow``, refusing to go on without a usable snapshot.

    Answering "bypass" for everything, or exporting nothing, would fail open.
    """
    engine = _follow(a)
    if engine.snapshot_error is not None:
        raise SnapshotError(f"{engine.snapshot_error}; run `capi-fast refresh` first")
    return engine


def _firewall(a: argparse.Namespace) -> int:
    from capi_fast.firewall import FirewallSync
    from capi_fast.ipset import IpsetBackend
    from capi_fast.nftables import NftablesBackend

    remediations = a.remediation or ["ban"]
    hooks = [] if a.no_rules else (a.hook or ["input"])
    options: dict[str, Any] = {"hooks": hooks, "action": "reject" if a.reject else "drop", "log_prefix": a.log_prefix}
    backend = (NftablesBackend if a.backend == "nftables" else IpsetBackend)(a.name, remediations, **options)
    if a.action == "remove":
        backend.remove()
        _print(a, f"removed {a.backend} {a.name}", {"removed": True})
        return 0
    engine = _offline(a)  # never load an empty set for want of a snapshot
    with _progress(f"loading {a.backend}"):
        r = FirewallSync(engine.index, backend, remediations).sync(full=True)
    _print(a, f"loaded {r.elements} elements into {a.backend} {a.name} in {r.seconds:.2f} s", {"elements": r.elements})
    return 0


def _export(a: argparse.Namespace) -> int:
    idx = _offline(a).index
    known = [r for r in idx.priorities if r != "allow"]
    if a.remediation not in known:
        raise ConfigurationError(f"no remediation {a.remediation!r} in the snapshot; it holds {', '.join(known)}")
    v4 = idx.export_cidrs(a.remediation, family=4) if a.family in ("4", "all") else None
    v6 = idx.export_cidrs(a.remediation, family=6) if a.family in ("6", "all") else None
    wanted = [(f, c) for f, c in (("IPv4", v4), ("IPv6", v6)) if c is not None]
    if not a.allow_empty and not any(c for _, c in wanted):
        raise SnapshotError(
            f"the snapshot holds no active {a.remediation!r} decision for {' or '.join(f for f, _ in wanted)}: "
            "nothing written (pass --allow-empty to write a script that empties the sets)"
        )
    for family, cidrs in wanted:
        if not cidrs and not a.allow_empty and a.format != "plain":
            print(f"capi-fast: no {family} {a.remediation!r} decision: its set is left as it is", file=sys.stderr)
    sys.stdout.write(render(a.format, a.set_name, v4, v6, allow_empty=a.allow_empty))
    return 0


@contextlib.contextmanager
def _progress(what: str) -> Iterator[None]:
    """A progress line on a terminal's stderr while a long step runs, erased after."""
    shown = sys.stderr.isatty()
    if shown:
        print(f"{what} ...", end="\r", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        if shown:
            print("\x1b[2K", end="\r", file=sys.stderr, flush=True)


def _date(t: Any) -> Any:
    """A Unix time as a local date for people (``never`` for none); JSON output keeps the number."""
    if not isinstance(t, int | float) or not t:
        return "never"
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _print(a: argparse.Namespace, human: str, data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if a.json else human)


def _run(a: argparse.Namespace) -> int:
    if a.command == "demo":
        run_demo(decisions=a.decisions, seed=a.seed, out=sys.stdout)
    elif a.command == "simulate":
        from capi_fast.testing import CapiSimulator
        from capi_fast.workload import synthetic_decisions

        sim = CapiSimulator(port=a.port)
        try:
            sim.start()
        except OSError as e:
            raise ConfigurationError(f"cannot serve on 127.0.0.1:{a.port}: {e.strerror or e}") from None
        try:
            if a.decisions:
                sim.add_decisions(v for v, *_ in synthetic_decisions(a.decisions, 7))
            print(f"CAPI simulator at {sim.url}", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
        finally:
            sim.stop()
    elif a.command == "run":
        from capi_fast.daemon import Daemon

        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return Daemon(a.config).run()
    elif a.command == "firewall":
        return _firewall(a)
    elif a.command == "register":
        with _client(a) as c:
            c.login()
            save_registration(a.home, Registration(tuple(c.scenarios), c.machine_id_prefix, c.base_url))
            _print(a, f"machine {c.machine_id} registered at {c.base_url}", {"machine_id": c.machine_id})
    elif a.command == "enroll":
        with _client(a) as c:
            c.enroll(a.key, name=a.name, overwrite=a.overwrite, tags=a.tag)
            _print(a, f"machine {c.machine_id} enrolled", {"machine_id": c.machine_id, "enrolled": True})
    elif a.command == "refresh":
        engine = _engine(a)
        with _progress(f"pulling decisions from {engine.source.base_url if engine.source else '?'}"):
            r = engine.refresh_decisions(force=a.force)
        data = {k: getattr(r, k) for k in r.__dataclass_fields__}
        human = (
            f"refreshed: +{r.added} -{r.deleted} decisions ({r.skipped} skipped), lists updated "
            f"{list(r.lists_updated)}, removed {list(r.lists_removed)} in {r.duration:.2f} s"
            if r.performed
            else f"not refreshed: {r.error}"
        )
        if r.performed and r.error:
            human += f" (warnings: {r.error})"
        _print(a, human, data)
        if not r.snapshot_saved:  # the commands that follow read the snapshot: this refresh did not land
            return 1
        return 0 if r.performed or r.error == "too soon" else 1
    elif a.command == "check":
        engine = _offline(a)
        answers = {ip: engine.get_ip_remediation(ip) for ip in a.ips}
        _print(a, "\n".join(f"{ip} {r}" for ip, r in answers.items()), answers)
        return 1 if any(r != "bypass" for r in answers.values()) else 0  # scriptable: 1 = remediated
    elif a.command == "export":
        return _export(a)
    elif a.command == "status":
        storage = FileStorage(a.home)
        creds = storage.load_credentials()
        follower = _follow(a)
        st = follower.stats()
        data = {
            "machine_id": creds.machine_id if creds else None,
            "registered": bool(creds and creds.registered),
            "decisions": st["index"]["decisions"],
            "lists": st["lists"],
            "last_refresh": st["last_refresh"],
            "next_refresh_at": st["next_refresh_at"],
            "snapshot_error": follower.snapshot_error,
        }
        shown = {k: _date(v) if k in ("last_refresh", "next_refresh_at") else v for k, v in data.items()}
        _print(a, "\n".join(f"{k}: {v}" for k, v in shown.items()), data)
        return 0 if follower.snapshot_error is None else 1  # no usable snapshot: nothing is being enforced
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``capi-fast`` command; returns the process exit code.

    0 on success, 1 when a refresh did not land or the status shows no usable snapshot, 2 for an
    error (one line on stderr: bad options, no usable snapshot, CAPI or storage failures), 130
    on Ctrl-C, 70 for a bug (``CAPI_FAST_DEBUG=1`` shows its traceback).
    """
    a = _parser().parse_args(argv)
    try:
        return _run(a)
    except CapiFastError as e:
        print(f"capi-fast: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"capi-fast: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if os.environ.get("CAPI_FAST_DEBUG"):
            traceback.print_exc()
        print(f"capi-fast: internal error: {type(e).__name__}: {e} (CAPI_FAST_DEBUG=1 shows where)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    raise SystemExit(main())
