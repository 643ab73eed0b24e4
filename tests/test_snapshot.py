"""Snapshots: round trip, metadata, atomic writes, and damaged files as typed errors."""

from __future__ import annotations

import os
import struct

import pytest

from capi_fast import DecisionIndex, SnapshotError
from capi_fast._native import SNAPSHOT_VERSION
from support import NOW


def populated() -> DecisionIndex:
    idx = DecisionIndex(priorities=["ban", "captcha", "mfa"])
    idx.add_many([f"198.51.100.{i}" for i in range(200)], ttl=3600, origin="CAPI", now=NOW)
    idx.add("10.0.0.0/8", "captcha", ttl=60, origin="lists:tor", now=NOW)
    idx.add("2001:db8::/32", "mfa", ttl=None, now=NOW)
    idx.add("2001:db8::1", "ban", ttl=5, now=NOW)
    idx.add("198.51.100.1", "captcha", ttl=10, origin="cscli", now=NOW)
    return idx


def test_round_trip_keeps_answers_and_metadata(tmp_path):
    idx = populated()
    path = tmp_path / "idx.snap"
    idx.save(path, metadata=b'{"startup": false}', now=NOW)
    back, meta = DecisionIndex.load_with_metadata(path)
    assert meta == b'{"startup": false}'
    assert len(back) == len(idx)
    assert back.priorities == ["ban", "captcha", "mfa"]
    probes = ["198.51.100.1", "198.51.100.7", "10.1.1.1", "2001:db8::1", "2001:db8::2", "192.0.2.1"]
    for t in (NOW, NOW + 7, NOW + 100, NOW + 4000):
        assert back.lookup_many(probes, now=t) == idx.lookup_many(probes, now=t)
    assert back.export_cidrs("ban", now=NOW) == idx.export_cidrs("ban", now=NOW)
    assert os.listdir(tmp_path) == ["idx.snap"], "no temporary file left behind"


def test_expired_decisions_are_not_saved(tmp_path):
    idx = populated()
    idx.save(tmp_path / "s", now=NOW + 61)
    assert len(DecisionIndex.load(tmp_path / "s")) == len(idx) - 3  # the /8, 2001:db8::1 and the cscli one


def test_overwrite_is_atomic_replacement(tmp_path):
    path = tmp_path / "s"
    populated().save(path, now=NOW)
    DecisionIndex().save(path, now=NOW)
    assert len(DecisionIndex.load(path)) == 0


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.snap"
    populated().save(path, now=NOW)
    return path.read_bytes()


def test_truncated_files_raise(tmp_path, good):
    path = tmp_path / "bad"
    for cut in [0, 5, 8, 23, 24, len(good) // 2, len(good) - 1]:
        path.write_bytes(good[:cut])
        with pytest.raises(SnapshotError):
            DecisionIndex.load(path)


def test_flipped_bytes_raise(tmp_path, good):
    path = tmp_path / "bad"
    for i in range(0, len(good), max(1, len(good) // 300)):
        bad = bytearray(good)
        bad[i] ^= 0x5A
        path.write_bytes(bytes(bad))
        with pytest.raises(SnapshotError):
            DecisionIndex.load(path)


def test_other_version_raises_clearly(tmp_path, good):
    path = tmp_path / "v99"
    path.write_bytes(good[:8] + struct.pack("<I", SNAPSHOT_VERSION + 98) + good[12:])
    with pytest.raises(SnapshotError, match="version 99"):
        DecisionIndex.load(path)


def test_not_a_snapshot(tmp_path):
    path = tmp_path / "x"
    path.write_text("hello, this is not a snapshot at all")
    with pytest.raises(SnapshotError, match="not a capi_fast snapshot"):
        DecisionIndex.load(path)


def test_missing_file_and_unwritable_dir_are_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        DecisionIndex.load(tmp_path / "missing")
    with pytest.raises(OSError):
        DecisionIndex().save(tmp_path / "no" / "such" / "dir" / "s")


@pytest.mark.parametrize("meta", [b"[]", b'{"lists": [1]}', b'{"last_refresh": "soon"}', b'{"allowlists": {"x": 3}}'])
def test_malformed_snapshot_metadata_never_raises_on_the_request_path(tmp_path, meta):
    from capi_fast import RemediationEngine

    snap = tmp_path / "decisions.snap"
    good = DecisionIndex(["allow", "ban", "captcha"])
    good.add("192.0.2.1", "ban", ttl=3600)
    good.save(snap, metadata=b'{"startup_done": true, "last_refresh": 1.0, "lists": {}}')
    follower = RemediationEngine.follow(snap, check_every=0.0)
    assert follower.get_ip_remediation("192.0.2.1") == "ban"
    bad = DecisionIndex(["allow", "ban", "captcha"])
    bad.add("192.0.2.2", "ban", ttl=3600)
    bad.save(snap, metadata=meta)
    # The reload runs inside get_ip_remediation: it must answer, never raise.
    assert follower.get_ip_remediation("192.0.2.2") == "ban", "the decisions are served, the bad state is not used"
    assert RemediationEngine.follow(snap).get_ip_remediation("192.0.2.2") == "ban"
