"""Signals handed from other processes to the daemon through an inbox directory, and the daemon
sending them to CAPI (the simulator over loopback); nothing lost across a stop with CAPI down."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import closing

import orjson
import pytest

from capi_fast import Signal, SignalInbox
from capi_fast.errors import InvalidSignal
from capi_fast.spool import Spool
from capi_fast.testing import CapiSimulator
from daemon_support import CAPI_FAST, Running, until, write


def signals(n: int, start: int = 1) -> list[Signal]:
    out = [Signal.decision(f"192.0.2.{i}", "mywaf/bf") for i in range(start, start + n)]
    return out + [Signal.whisper(f"198.51.100.{start}", "mywaf/probe")]


def test_dropped_signals_reach_the_spool_once_and_the_files_go(tmp_path):
    inbox = SignalInbox(tmp_path / "inbox")
    sent = signals(3)
    path = inbox.drop(sent)
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    assert inbox.drop([]) is None
    copy = path.read_bytes()
    with closing(Spool(tmp_path / "spool")) as spool:
        report = inbox.drain(spool)
        assert (report.files, report.signals, report.skipped, report.quarantined) == (1, 4, 0, 0)
        assert inbox.pending() == [], "a drained file is deleted"
        # A file drained again (the daemon died between the spool and the delete) adds nothing.
        (inbox.path / path.name).write_bytes(copy)
        again = inbox.drain(spool)
        assert (again.signals, again.duplicates) == (0, 4)
        queued = spool.oldest(100)
        assert [p["uuid"] for _, p in queued] == [s.uuid for s in sent]
        assert [p["decisions"] == [] for _, p in queued] == [False, False, False, True]
    with closing(Spool(tmp_path / "spool")) as spool:
        assert len(spool) == 4, "and it stays in the spool across a restart"


def test_bad_files_are_quarantined_and_bad_items_skipped(tmp_path):
    inbox = SignalInbox(tmp_path / "inbox")
    good = signals(2)
    items = [{"whisper": s.is_whisper, "payload": s.to_payload("")} for s in good]
    wrong_flag = {"whisper": True, "payload": good[0].to_payload("")}  # a decision said to be a whisper
    no_uuid = {"whisper": False, "payload": {**good[1].to_payload(""), "uuid": ""}}
    write(inbox.path / "1-mixed.signals", orjson.dumps([items[0], "x", wrong_flag, no_uuid, items[1], 7]).decode())
    write(inbox.path / "2-garbage.signals", "{not json")
    write(inbox.path / "3-object.signals", '{"whisper": false}')
    write(inbox.path / ".4-in-progress.signals.123.tmp", "[]")
    os.mkfifo(inbox.path / "5-fifo.signals")  # would block an open() forever
    os.symlink("/etc/passwd", inbox.path / "6-link.signals")  # not followed
    bad_scenario = {"whisper": True, "payload": {**good[2].to_payload(""), "scenario": "bad scenario"}}
    huge = {"whisper": True, "payload": {**good[2].to_payload(""), "message": "x" * (2 << 20)}}
    write(inbox.path / "7-refused.signals", orjson.dumps([bad_scenario, huge]).decode())
    with closing(Spool(tmp_path / "spool")) as spool:
        report = inbox.drain(spool)
        assert (report.files, report.signals, report.skipped, report.quarantined) == (2, 2, 6, 4)
        assert sorted(os.listdir(inbox.path / "quarantine")) == [
            "2-garbage.signals",
            "3-object.signals",
            "5-fifo.signals",
            "6-link.signals",
        ]
        assert [p["uuid"] for _, p in spool.oldest(10)] == [good[0].uuid, good[1].uuid]
    assert [p.name for p in inbox.pending()] == [], "the temporary file of a write in progress is not taken"
    with pytest.raises(InvalidSignal):
        inbox.drop([good[0], "not a signal"])  # type: ignore[list-item]
    assert inbox.pending() == [], "nothing written"


def register(home, url) -> None:
    env = {**os.environ, "CAPI_FAST_URL": url, "CAPI_FAST_HOME": str(home)}
    done = subprocess.run([*CAPI_FAST, "--scenario", "mywaf/bf", "register"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def daemon_config(tmp_path, home, url: str, name: str):
    return write(
        tmp_path / name,
        f"""
[source]
capi = true
home = "{home}"
capi_url = "{url}"

[signals]
inbox = "{tmp_path / "inbox"}"
check_every = 0.2
""",
    )


def test_the_daemon_sends_dropped_signals_and_keeps_them_through_an_outage(tmp_path):
    home = tmp_path / "home"
    inbox = SignalInbox(tmp_path / "inbox")
    with CapiSimulator() as sim:
        register(home, sim.url)
        config = daemon_config(tmp_path, home, sim.url, "c.toml")
        sim.stop()  # CAPI down: the signals are taken in, the stop cannot send them, they stay spooled
        down = Running(config)
        try:
            until("the start", lambda: "daemon started" in down.text())
            first = signals(3)
            inbox.drop(first)
            until("the inbox to be drained", lambda: not inbox.pending())
        finally:
            assert down.stop() == 0, down.text()
        assert "4 taken in from 1 files" in down.text() and "they stay queued" in down.text()
        # CAPI back: the next run sends them with the new ones, when it stops if not before.
        sim.start()
        assert sim.signals == []
        up = Running(config)
        try:
            until("the start", lambda: "daemon started" in up.text())
            second = signals(2, start=10)
            inbox.drop(second)
            until("the inbox to be drained", lambda: not inbox.pending())
        finally:
            assert up.stop() == 0, up.text()
        uuids = [s["uuid"] for s in sim.signals]
        assert sorted(uuids) == sorted(s.uuid for s in first + second), "each once, none lost"
        assert "Traceback" not in down.text() + up.text()


def test_signals_settings_are_checked(tmp_path):
    config = write(tmp_path / "c.toml", '[source]\ncapi = true\n[signals]\nspool = "/tmp/x"\n')
    done = subprocess.run([*CAPI_FAST, "run", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "signals.spool needs signals.inbox" in done.stderr
    config = write(tmp_path / "c.toml", "[source]\ncapi = true\n[signals]\ninbox = 3\n")
    done = subprocess.run([*CAPI_FAST, "run", "--config", str(config)], capture_output=True, text=True)
    assert done.returncode == 2 and "signals.inbox must be a directory path" in done.stderr


DRAIN_WITHOUT_DAC_OVERRIDE = """
import dataclasses, json, sys
from contextlib import closing
from capi_fast import SignalInbox
from capi_fast.spool import Spool
inbox = SignalInbox(sys.argv[1])
with closing(Spool(sys.argv[2])) as spool:
    first = inbox.drain(spool)
    spool.ack([seq for seq, _ in spool.oldest(100)])  # sent to CAPI meanwhile
    second = inbox.drain(spool)
    print(json.dumps([dataclasses.asdict(first), dataclasses.asdict(second), len(spool)]))
"""


def test_a_file_not_readable_or_not_deletable_neither_stops_the_drain_nor_is_sent_twice(tmp_path):
    """As under the systemd unit: root without CAP_DAC_OVERRIDE (and here without
    CAP_DAC_READ_SEARCH either), an inbox directory it cannot write, a file it cannot read."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and util-linux's setpriv to drop the capabilities")
    inbox = SignalInbox(tmp_path / "inbox")
    unreadable = inbox.drop(signals(2))  # oldest: it used to stop every later file
    readable = inbox.drop(signals(2, start=10))
    assert unreadable is not None and readable is not None
    os.chown(unreadable, 65534, 65534)  # someone else's 0600 file
    os.chmod(readable, 0o644)
    os.chown(inbox.path, 65534, 65534)  # a directory the daemon cannot write: no delete
    os.chmod(inbox.path, 0o755)
    done = subprocess.run(
        [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c",
         DRAIN_WITHOUT_DAC_OVERRIDE, str(inbox.path), str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second, queued = orjson.loads(done.stdout)
    assert (first["files"], first["signals"], first["unreadable"], first["undeletable"]) == (1, 3, 1, 1)
    assert (second["files"], second["signals"], second["unreadable"], second["undeletable"]) == (0, 0, 1, 0)
    assert queued == 0, "a file taken in but not deleted is not taken again after its signals were sent"
    assert "cannot delete" in done.stderr and "left in place" in done.stderr
    assert unreadable.exists() and readable.exists()
