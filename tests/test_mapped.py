"""The mapped snapshot: saved by the writer, answered in place by followers (``MappedIndex``).

Answers are compared with the in-memory index in tests/test_properties.py and the cargo model
tests; here: what a follower meets on disk (replacement while mapped, damage, expiry, names).
"""

from __future__ import annotations

import os
import random

import pytest

from capi_fast import DecisionIndex
from capi_fast._native import MappedIndex
from capi_fast.errors import SnapshotError

NOW = 1_800_000_000.0


def sample() -> DecisionIndex:
    ix = DecisionIndex(["ban", "captcha"])
    ix.add("10.0.0.0/8", "captcha", origin="CAPI", now=NOW)
    ix.add("10.1.2.3", "ban", origin="cscli", ttl=60, now=NOW)
    ix.add("10.1.2.3", "captcha", origin="CAPI", now=NOW)
    ix.add("192.0.2.0/24", "allow", origin="lists:ok", now=NOW)
    ix.add("192.0.2.7", "ban", origin="CAPI", now=NOW)
    ix.add("2001:db8::/32", "ban", origin="CAPI", ttl=3600, now=NOW)
    return ix


def test_answers_names_metadata_and_expiry(tmp_path):
    path = tmp_path / "m.snap"
    sample().save_mapped(path, b"cursor", now=NOW)
    assert path.stat().st_mode & 0o777 == 0o600
    m = MappedIndex(path)
    assert (len(m), m.metadata, m.written_at, m.priorities) == (5, b"cursor", NOW, ["ban", "captcha"]), "5 networks"
    assert m.lookup("10.1.2.3", now=NOW) == "ban" and m.decision_of("10.1.2.3", now=NOW) == ("cscli", "ban")
    assert m.lookup("10.1.2.3", now=NOW + 61) == "captcha", "the ban expired, the captcha stays"
    assert m.lookup("10.9.9.9", now=NOW) == "captcha" and m.lookup("11.0.0.1", now=NOW) is None
    assert m.lookup("192.0.2.7", now=NOW) == "ban" and m.lookup("192.0.2.8", now=NOW) == "allow"
    assert m.lookup("::ffff:10.1.2.3", now=NOW) == "ban", "IPv4-mapped IPv6 answers as IPv4"
    assert m.lookup("2001:db8::5", now=NOW) == "ban" and m.lookup("2001:db8::5", now=NOW + 3601) is None
    assert m.lookup_many(["10.1.2.3", "11.0.0.1"], now=NOW) == ["ban", None]
    assert m.verify() and len(m.to_index()) == 6
    with pytest.raises(ValueError):
        m.lookup("not an address")


def test_a_mapping_keeps_its_file_when_the_writer_replaces_it(tmp_path):
    path = tmp_path / "m.snap"
    ix = sample()
    ix.save_mapped(path, now=NOW)
    old = MappedIndex(path)
    ix.remove("192.0.2.7")
    ix.add("198.51.100.1", now=NOW)
    ix.save_mapped(path, now=NOW)  # a new file renamed over the old name
    new = MappedIndex(path)
    assert old.lookup("192.0.2.7", now=NOW) == "ban" and old.lookup("198.51.100.1", now=NOW) is None
    assert new.lookup("192.0.2.7", now=NOW) == "allow" and new.lookup("198.51.100.1", now=NOW) == "ban"
    assert old.verify() and new.verify()


def test_damaged_files_are_refused_or_answer_without_crashing(tmp_path):
    path = tmp_path / "m.snap"
    sample().save_mapped(path, now=NOW)
    good = path.read_bytes()
    for bad in (b"", good[:100], b"CAPIFIDX" + good[8:]):  # empty, truncated, another format
        path.write_bytes(bad)
        with pytest.raises(SnapshotError):
            MappedIndex(path)
    with pytest.raises(SnapshotError, match="cannot map"):
        MappedIndex(tmp_path / "missing.snap")
    rng = random.Random(7)
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            m = MappedIndex(path)
        except SnapshotError:
            continue
        # Opened: every answer is a name or None, never a crash; the checksum tells.
        for ip in ("10.1.2.3", "192.0.2.7", "2001:db8::1", "0.0.0.0", "255.255.255.255"):
            assert m.lookup(ip, now=NOW) in (None, "ban", "captcha", "allow")
        assert m.verify() == (bytes(data) == good)
        try:
            m.to_index()
        except SnapshotError:
            pass


def test_a_follower_reads_nothing_until_it_looks(tmp_path):
    # Opening checks the header only: the cost does not grow with the decisions held.
    path = tmp_path / "m.snap"
    ix = DecisionIndex()
    ix.add_many([f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(200_000)])
    ix.save_mapped(path)
    m = MappedIndex(path)
    assert len(m) == 200_000 and m.size == os.path.getsize(path)
    assert m.lookup("10.1.2.3") == "ban" and m.lookup("11.1.2.3") is None


def test_a_writer_never_starts_from_a_damaged_snapshot(tmp_path):
    # Loading (a writer's restart) reads the whole file: the checksum is checked, so damaged
    # decisions are refused rather than loaded and saved again under a good checksum.
    path = tmp_path / "m.snap"
    sample().save_mapped(path, b"cursor", now=NOW)
    index, meta = DecisionIndex.load_with_metadata(path)
    assert meta == b"cursor" and index.lookup("192.0.2.7", now=NOW) == "ban"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert not MappedIndex(path).verify()
    with pytest.raises(SnapshotError, match="checksum"):
        DecisionIndex.load_with_metadata(path)
