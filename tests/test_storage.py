"""Credential storage: generated once, atomic 0600 files, locked across processes, never leaked."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import string

import pytest

from capi_fast.errors import ConfigurationError, StorageError
from capi_fast.storage import (
    MACHINE_ID_LENGTH,
    PASSWORD_LENGTH,
    FileStorage,
    MemoryStorage,
    Storage,
    Token,
    generate_credentials,
)


def test_generated_credentials_follow_the_protocol():
    c = generate_credentials("mywaf", base_url="https://api.example/")
    assert len(c.machine_id) == MACHINE_ID_LENGTH and c.machine_id.startswith("mywaf")
    assert set(c.machine_id) <= set(string.ascii_lowercase + string.digits)
    assert len(c.password) == PASSWORD_LENGTH and set(c.password) <= set(string.ascii_letters + string.digits)
    assert not c.registered and c.prefix == "mywaf"
    assert generate_credentials().machine_id != generate_credentials().machine_id
    assert c.password not in repr(c)


@pytest.mark.parametrize("prefix", ["UPPER", "with-dash", "x" * 17, "é"])
def test_bad_prefix(prefix):
    with pytest.raises(ConfigurationError):
        generate_credentials(prefix)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_round_trip(tmp_path, kind):
    store = MemoryStorage() if kind == "memory" else FileStorage(tmp_path / "capi")
    assert isinstance(store, Storage)
    assert store.load_credentials() is None and store.load_token() is None
    c = generate_credentials("abc")
    store.save_credentials(c)
    t = Token(token="eyJ.secret.jwt", expire=1_800_000_000.5, scenarios=("a/b", "c/d"))
    store.save_token(t)
    assert store.load_credentials() == c
    assert store.load_token() == t
    assert "eyJ" not in repr(store.load_token()) and c.password not in repr(store)
    store.save_token(None)
    assert store.load_token() is None


def test_files_are_private_and_atomic(tmp_path):
    d = tmp_path / "capi"
    store = FileStorage(d)
    store.save_credentials(generate_credentials())
    store.save_token(Token(token="t", expire=1.0))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name in ("credentials.json", "token.json"):
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".lock")) == ["credentials.json", "token.json"]


def test_survives_a_new_instance(tmp_path):
    c = generate_credentials()
    FileStorage(tmp_path).save_credentials(c)
    assert FileStorage(tmp_path).load_credentials() == c


def test_refuses_files_others_can_read(tmp_path):
    store = FileStorage(tmp_path)
    store.save_credentials(generate_credentials())
    os.chmod(tmp_path / "credentials.json", 0o644)
    with pytest.raises(StorageError, match="chmod 600"):
        store.load_credentials()


def test_corrupt_files_raise_instead_of_regenerating(tmp_path):
    store = FileStorage(tmp_path)
    path = tmp_path / "credentials.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"machine_id": "abc", "pass')
    os.close(fd)
    with pytest.raises(StorageError, match="not valid JSON"):
        store.load_credentials()
    with open(path, "w") as f:
        json.dump({"machine_id": "a", "password": "b", "unknown": 1}, f)
    with pytest.raises(StorageError, match="unexpected fields"):
        store.load_credentials()


def _count_under_lock(directory: str, rounds: int) -> None:
    store = FileStorage(directory)
    counter = os.path.join(directory, "counter")
    for _ in range(rounds):
        with store.lock(), store.lock():  # re-entrant
            with open(counter) as f:
                n = int(f.read())
            with open(counter, "w") as f:
                f.write(str(n + 1))


def test_lock_excludes_other_processes(tmp_path):
    (tmp_path / "counter").write_text("0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_count_under_lock, args=(str(tmp_path), 200)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert (tmp_path / "counter").read_text() == "600", "no lost update: the lock is exclusive across processes"


def test_every_file_the_package_writes_is_its_owner_s_alone(tmp_path):
    """One atomic write per language (files.write_atomic, the snapshot's), both 0600."""
    from capi_fast import DecisionIndex
    from capi_fast.files import write_atomic

    write_atomic(tmp_path / "a.json", b"{}")
    DecisionIndex().save(tmp_path / "b.snap")
    for name in ("a.json", "b.snap"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.snap"], "no temporary file left"
    with pytest.raises(StorageError):
        write_atomic(tmp_path / "missing-dir" / "c.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.snap"]
