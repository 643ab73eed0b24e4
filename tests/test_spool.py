"""The append-only spool: recovery after crashes, exclusivity, bounds, segment lifecycle."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from unittest.mock import patch

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capi_fast import spool as spool_mod
from capi_fast.errors import StorageError
from capi_fast.spool import Spool
from capi_fast.spool_format import Record, scan


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


# -- damaged files: every intact record survives, what cannot be read is kept aside ----------------


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every record of an undamaged segment."""
    return [(r.offset, r.end) for r in scan(data) if isinstance(r, Record)]


def test_one_flipped_bit_costs_one_record_not_the_rest_of_the_file(tmp_path):
    s = Spool(tmp_path)
    fill(s, 1000)
    s.close()
    seg = next(tmp_path.glob("*.log"))
    data = bytearray(seg.read_bytes())
    start, end = record_spans(bytes(data))[10]
    data[start + 20] ^= 0x04  # one bit inside record 10's payload
    seg.write_bytes(bytes(data))
    s = Spool(tmp_path)
    assert ns(s) == [i for i in range(1000) if i != 10], "every other record is kept"
    assert s.quarantined == 1
    kept = list((tmp_path / "quarantine").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data[start:end]), "the damaged record is kept aside"
    assert (kept[0].stat().st_mode & 0o777) == 0o600
    s.ack([seq for seq, _ in s.oldest(5)])
    fill(s, 2, start=2000)
    s.close()
    again = Spool(tmp_path)
    assert ns(again) == [i for i in range(5, 1000) if i != 10] + [2000, 2001]
    assert again.quarantined == 0, "a stretch already kept aside is not reported again"
    again.close()


def test_garbage_and_zeroed_blocks_are_read_past(tmp_path):
    s = Spool(tmp_path)
    fill(s, 100)
    s.close()
    seg = next(tmp_path.glob("*.log"))
    data = bytearray(seg.read_bytes())
    spans = record_spans(bytes(data))
    data[spans[20][0] + 3 : spans[24][0] + 7] = bytes(spans[24][0] + 4 - spans[20][0])  # a zeroed block
    data[spans[60][0] : spans[60][0] + 9] = b"\xff\xfeCF\xff\xff\xff\xff\x01"  # a magic with a wild length
    seg.write_bytes(bytes(data))
    s = Spool(tmp_path)
    assert ns(s) == [i for i in range(100) if not (20 <= i <= 24 or i == 60)]
    assert s.quarantined == 2
    s.close()


def test_a_record_damaged_under_a_running_spool_is_skipped_not_sent_forever(tmp_path):
    s = Spool(tmp_path)
    fill(s, 5)
    seg = next(tmp_path.glob("*.log"))
    data = bytearray(seg.read_bytes())
    start, _ = record_spans(bytes(data))[1]
    data[start + 15] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert [p["n"] for _, p in s.oldest(10)] == [0, 2, 3, 4]
    assert s.quarantined == 1 and len(s) == 4
    s.close()


SHORT_OF_SPACE = """
import json, os, resource, sys
from capi_fast.errors import StorageError
from capi_fast.spool import Spool
s = Spool(sys.argv[1])
size = os.path.getsize(next(p for p in os.scandir(sys.argv[1]) if p.name.endswith(".log")))
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 3000, resource.RLIM_INFINITY))
added, refused = [], []
for i in range(100, 300):
    try:
        s.add(f"u{i}", False, {"uuid": f"u{i}", "n": i, "pad": "x" * 100})
        added.append(i)
    except StorageError as e:
        refused.append(i)
        error = str(e)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
for i in range(500, 510):  # space is back
    s.add(f"u{i}", False, {"uuid": f"u{i}", "n": i})
    added.append(i)
running = [p["n"] for _, p in s.oldest(10_000)]
s.close()
print(json.dumps({"added": added, "refused": refused, "error": error, "running": running}))
"""


def test_a_write_that_does_not_fit_raises_and_leaves_nothing_half_written(tmp_path):
    s = Spool(tmp_path)
    fill(s, 3)
    s.close()
    child = subprocess.run([sys.executable, "-c", SHORT_OF_SPACE, str(tmp_path)], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)
    assert out["refused"], "the file size limit was reached"
    assert "cannot write the signal spool" in out["error"]
    added = [0, 1, 2, *out["added"]]
    assert out["running"] == added, "the running spool still reads its whole queue"
    again = Spool(tmp_path)
    assert ns(again) == added, "after a restart every accepted add is there, none of the refused ones"
    assert again.quarantined == 0, "nothing half-written was left behind"
    again.close()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    acked=st.integers(0, 60),
    damage=st.lists(
        st.tuples(
            st.sampled_from(["flip", "zero", "garbage", "truncate"]),
            st.floats(0, 1, exclude_max=True),
            st.integers(1, 200),
            st.binary(min_size=1, max_size=200),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_random_damage_loses_only_the_records_it_touched(n, acked, damage):
    with tempfile.TemporaryDirectory() as tmp, patch.object(spool_mod, "SEGMENT_BYTES", 700):
        path = Path(tmp)
        s = Spool(path)
        fill(s, n)
        s.ack([seq for seq, _ in s.oldest(min(acked, n))])
        s.close()
        segments = sorted(path.glob("*.log"))
        original = {p: p.read_bytes() for p in segments}
        owner = {}  # (segment, start, end) -> n of the record held there
        for p, data in original.items():
            for r in scan(data):
                if isinstance(r, Record):
                    owner[(p, r.offset, r.end)] = orjson.loads(r.payload)["n"]
        touched: set[int] = set()
        for kind, where, length, garbage in damage:
            p = segments[int(where * len(segments))]
            data = bytearray(p.read_bytes())
            if not data:
                continue
            at = int(where * len(segments) % 1 * len(data))
            if kind == "flip":
                data[at] ^= 1 << (length % 8)
                hit = (at, at + 1)
            elif kind == "zero":
                data[at : at + length] = bytes(len(data[at : at + length]))
                hit = (at, at + length)
            elif kind == "garbage":
                chunk = garbage[: len(data) - at]
                data[at : at + len(chunk)] = chunk
                hit = (at, at + len(chunk))
            else:
                del data[at:]
                hit = (at, len(original[p]))
            if bytes(data) == p.read_bytes():
                continue
            p.write_bytes(bytes(data))
            touched |= {i for (q, a, b), i in owner.items() if q == p and a < hit[1] and hit[0] < b}
        s = Spool(path)
        delivered = ns(s)
        expected = [i for i in range(min(acked, n), n) if i not in touched]
        assert [i for i in delivered if i not in touched] == expected, "every intact waiting record, once, in order"
        assert len(delivered) == len(set(delivered)), "none twice"
        s.close()
