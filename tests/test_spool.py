"""The append-only spool: recovery after crashes, exclusivity, bounds, segment lifecycle."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from capi_fast import spool as spool_mod
from capi_fast.errors import StorageError
from capi_fast.spool import Spool


def fill(s: Spool, n: int, start: int = 0, whisper: bool = False) -> None:
    for i in range(start, start + n):
        assert s.add(f"u{i}", whisper, {"uuid": f"u{i}", "n": i})


def ns(s: Spool) -> list[int]:
    return [p["n"] for _, p in s.oldest(10_000)]


def test_reopen_resumes_where_acks_stopped(tmp_path):
    s = Spool(tmp_path)
    fill(s, 10)
    s.ack([seq for seq, _ in s.oldest(4)])
    s.close()
    s = Spool(tmp_path)
    assert ns(s) == list(range(4, 10))
    assert s.add("u5", False, {"uuid": "u5"}) is False, "pending uuids are remembered across restarts"
    s.close()


def test_torn_last_record_is_cut(tmp_path):
    s = Spool(tmp_path)
    fill(s, 5)
    s.close()
    seg = next(tmp_path.glob("*.log"))
    data = seg.read_bytes()
    seg.write_bytes(data[:-3])  # a crash in the middle of the last write
    s = Spool(tmp_path)
    assert ns(s) == [0, 1, 2, 3]
    fill(s, 1, start=10)
    s.close()
    assert ns(Spool(tmp_path)) == [0, 1, 2, 3, 10]


def test_one_process_per_spool(tmp_path):
    s = Spool(tmp_path)
    code = textwrap.dedent(
        f"""
        from capi_fast.spool import Spool
        from capi_fast.errors import StorageError
        try:
            Spool({str(tmp_path)!r})
        except StorageError as e:
            print("refused:", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    assert "in use by another process" in out
    s.close()
    Spool(tmp_path).close()


def test_drops_survive_a_restart(tmp_path):
    s = Spool(tmp_path, max_signals=3)
    fill(s, 2, whisper=True)
    fill(s, 3, start=2)
    assert s.dropped == 2 and ns(s) == [2, 3, 4]
    s.close()
    assert ns(Spool(tmp_path, max_signals=3)) == [2, 3, 4]


def test_segments_rotate_and_consumed_ones_are_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 100)  # ~3 records a segment
    s = Spool(tmp_path)
    fill(s, 20)
    before = len(list(tmp_path.glob("*.log")))
    assert before >= 5
    s.ack([seq for seq, _ in s.oldest(15)])
    assert len(list(tmp_path.glob("*.log"))) <= before - 3, "segments before the ack position are deleted"
    s.close()
    assert ns(Spool(tmp_path)) == list(range(15, 20))


def test_corrupt_ack_file_is_an_error_not_a_silent_resend(tmp_path):
    Spool(tmp_path).close()
    (tmp_path / "ack.json").write_text("{nonsense")
    with pytest.raises(StorageError, match="ack.json is corrupt"):
        Spool(tmp_path)


def test_following_the_corrupt_file_advice_works_in_the_same_process(tmp_path):
    s = Spool(tmp_path)
    fill(s, 3)
    s.close()
    (tmp_path / "ack.json").write_text("{nonsense")
    with pytest.raises(StorageError, match="delete it"):
        Spool(tmp_path)
    (tmp_path / "ack.json").unlink()  # what the error says to do
    again = Spool(tmp_path)  # not "in use by another process": the failed open released its lock
    assert ns(again) == [0, 1, 2]
    again.close()


def test_full_durability_and_bad_options(tmp_path):
    s = Spool(tmp_path, durability="full")
    fill(s, 3)
    s.close()
    assert ns(Spool(tmp_path)) == [0, 1, 2]
    with pytest.raises(ValueError):
        Spool(None, durability="sometimes")
    with pytest.raises(ValueError):
        Spool(None, max_signals=0)


KILLED_WRITER = """
import os, signal, sys
from capi_fast.spool import Spool
s = Spool(sys.argv[1], max_signals=1000)
for i in range(30):
    s.add(f"u{i}", i % 3 == 0, {"uuid": f"u{i}", "n": i})  # every third a whisper
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_bound_applies_on_open_after_a_kill(tmp_path):
    child = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], timeout=60)
    assert child.returncode == -signal.SIGKILL
    s = Spool(tmp_path, max_signals=10)
    assert len(s) == 10 and s.dropped == 20
    decisions = [i for i in range(30) if i % 3]
    assert ns(s) == decisions[-10:], "whispers went first, then the oldest decisions"
    s.close()
    again = Spool(tmp_path, max_signals=10)
    assert ns(again) == decisions[-10:] and again.dropped == 0, "the cut was persisted"
    again.close()
