"""The durable signal spool: signals wait here, on disk, until CAPI accepted them.

An append-only log of segment files in one directory. ``add`` writes one framed, CRC-checked
record (``capi_fast.spool_format``) with a single ``write()`` before it returns: the signal is
then in the kernel's page cache and survives a crash or ``kill -9`` of the process;
``durability="full"`` also fsyncs each record so it survives a power cut (at a large cost in
throughput). A write that fails or comes up short (a full disk, a file size limit) raises
``StorageError`` and is cut back off the file, so nothing half-written stays behind and the
spool goes on once space is back. Delivery is first-in first-out, so what CAPI accepted is one
position in the log, kept in ``ack.json`` (replaced atomically after each accepted batch) with
the few records dropped out of order. On open the log is replayed from that position: a damaged
stretch is copied to ``quarantine/`` and read past (every intact record after it is kept); a
torn last record (a crash mid-write) is quarantined and cut off. Fully consumed segments are
deleted. One process at a time owns a spool directory (an exclusive ``flock``).

The spool is bounded: past ``max_signals`` the oldest whispers go first, then the oldest
decisions; every drop is counted and logged once. Drops are made durable with the next
acknowledgement, so after a crash a dropped signal may come back; an accepted one never does
unless CAPI accepted it in the very batch the crash interrupted (delivery is at-least-once, the
uuid is the de-duplication key).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from capi_fast.errors import StorageError
from capi_fast.files import fsync_dir, write_atomic
from capi_fast.spool_format import HEADER_SIZE, MAX_RECORD, Damage, claimed_length, encode, record_at, scan

__all__ = ["Spool"]

log = logging.getLogger("capi_fast.spool")

SEGMENT_BYTES = 8 << 20


def _segment_name(n: int) -> str:
    return f"{n:012d}.log"


class Spool:
    """Signals waiting for delivery, oldest first.

    Args:
        path: the spool directory, or None for an in-memory spool (not durable: tests, tools).
        max_signals: most signals held (oldest whispers, then oldest decisions, dropped past it).
        durability: ``normal`` (survives process crashes) or ``full`` (fsync: also power loss).
    """

    def __init__(self, path: str | Path | None, max_signals: int = 100_000, durability: str = "normal") -> None:
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
        if max_signals < 1:
            raise ValueError("max_signals must be at least 1")
        self.path = None if path is None else Path(path)
        self.max_signals = max_signals
        self.fsync = durability == "full"
        self.dropped = 0
        self.quarantined = 0  # damaged stretches moved to quarantine/
        self._warned = False
        self._lock = threading.Lock()
        # seq -> (whisper, payload bytes or None when on disk, segment, offset, uuid)
        self._pending: OrderedDict[int, tuple[bool, bytes | None, int, int, str]] = OrderedDict()
        self._uuids: dict[str, int] = {}
        self._whispers: OrderedDict[int, None] = OrderedDict()  # pending whispers, oldest first
        self._seq = 0
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._segment = 0
        self._size = 0
        self._acked: tuple[int, int] = (0, 0)  # everything before (segment, offset) is consumed
        self._skipped: set[tuple[int, int]] = set()  # consumed out of order (drops)
        if self.path is not None:
            self._open()

    # -- disk ----------------------------------------------------------------------------------

    def _open(self) -> None:
        """Locks the directory and replays it; a failure releases whatever it took (lock, files)."""
        try:
            self._open_locked()
        except BaseException:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)  # closing the lock's descriptor releases the flock
            self._fd = self._lock_fd = None
            raise

    def _open_locked(self) -> None:
        assert self.path is not None
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"the signal spool {self.path} is in use by another process") from None
        except OSError as e:
            raise StorageError(f"cannot open the signal spool {self.path}: {e}") from None
        ack = self.path / "ack.json"
        if ack.exists():
            try:
                doc = json.loads(ack.read_text())
                self._acked = (int(doc["segment"]), int(doc["offset"]))
                self._skipped = {(int(s), int(o)) for s, o in doc.get("skipped", [])}
            except (ValueError, KeyError, TypeError):
                raise StorageError(f"{ack} is corrupt; delete it to resend everything still in the spool") from None
        segments = sorted(int(p.stem) for p in self.path.glob("*.log") if p.stem.isdigit())
        for seg in segments:
            if seg < self._acked[0]:
                (self.path / _segment_name(seg)).unlink(missing_ok=True)
                continue
            self._replay(seg)
        self._segment = max(segments[-1] if segments else 0, self._acked[0], 1)
        self._open_segment(self._segment)
        # The bound holds from the first moment: a spool written by a crashed process or with a
        # larger max_signals is cut like any full spool (oldest whispers, then decisions), counted.
        if len(self._pending) > self.max_signals:
            while len(self._pending) > self.max_signals:
                self._make_room()
            self._persist_ack()

    def _replay(self, seg: int) -> None:
        assert self.path is not None
        file = self.path / _segment_name(seg)
        data = file.read_bytes()
        start = self._acked[1] if seg == self._acked[0] else 0
        for item in scan(data, start):
            if isinstance(item, Damage):
                self._quarantine(seg, item.offset, data[item.offset : item.end])
                if item.end == len(data):  # a torn tail: cut it so new records follow intact ones
                    with open(file, "r+b") as f:
                        f.truncate(item.offset)
                continue
            if (seg, item.offset) in self._skipped:
                continue
            uuid = ""
            with contextlib.suppress(ValueError, KeyError, TypeError):
                uuid = str(orjson.loads(item.payload)["uuid"])
            uuid = uuid or f"{seg}:{item.offset}"
            if uuid in self._uuids:  # a record written twice (a copy): it is delivered once
                self._skipped.add((seg, item.offset))
                continue
            self._remember(item.whisper, None, seg, item.offset, uuid)

    def _quarantine(self, seg: int, offset: int, damaged: bytes) -> None:
        """Keeps bytes that hold no intact record in ``quarantine/`` (once), and counts them."""
        assert self.path is not None
        where = self.path / "quarantine" / f"{_segment_name(seg)}.{offset}.bad"
        if where.exists() and where.stat().st_size == len(damaged):
            return  # found on an earlier open: already kept and reported
        self.quarantined += 1
        log.warning(
            "signal spool %s: %d damaged bytes at offset %d of %s moved to %s; the intact records around them are kept",
            self.path,
            len(damaged),
            offset,
            _segment_name(seg),
            where,
        )
        try:
            where.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, damaged)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("signal spool %s: cannot keep the damaged bytes in %s: %s", self.path, where, e)

    def _open_segment(self, seg: int) -> None:
        """Appends to segment ``seg`` from now on; the previous one stays open if this fails."""
        assert self.path is not None
        fd = os.open(self.path / _segment_name(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self._fd is not None:
            with contextlib.suppress(OSError):  # for ``sync``: what it wrote before reaches the disk
                os.fsync(self._fd)
            os.close(self._fd)
        self._fd = fd
        self._segment, self._size = seg, os.fstat(fd).st_size

    def _remember(self, whisper: bool, blob: bytes | None, seg: int, off: int, uuid: str) -> None:
        self._seq += 1
        self._pending[self._seq] = (whisper, blob, seg, off, uuid)
        self._uuids[uuid] = self._seq
        if whisper:
            self._whispers[self._seq] = None

    # -- API -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pending)

    def sync(self) -> None:
        """Makes every signal added so far survive a power cut.

        One fsync of the segment and the directory (``durability="full"`` does it per record).

        Raises:
            StorageError: the disk refused.
        """
        with self._lock:
            if self._fd is None or self.path is None:
                return
            try:
                os.fsync(self._fd)
                fsync_dir(self.path)
            except OSError as e:
                raise StorageError(f"cannot sync the signal spool {self.path}: {e}") from None

    def add(self, uuid: str, whisper: bool, payload: dict[str, Any]) -> bool:
        """Stores one signal durably; returns False if its uuid was already waiting.

        Raises:
            StorageError: the record could not be written whole (disk full, file size limit, I/O
                error); nothing of it stays on disk and the spool keeps working.
        """
        body = orjson.dumps(payload)
        if len(body) > MAX_RECORD:
            raise StorageError(f"a signal of {len(body)} bytes is too large for the spool")
        with self._lock:
            if uuid in self._uuids:
                return False
            if self._fd is None:
                if len(self._pending) >= self.max_signals:
                    self._make_room()
                self._remember(whisper, body, 0, 0, uuid)
                return True
            seg, off = self._segment, self._size
            self._append(encode(whisper, body))
            if len(self._pending) >= self.max_signals:
                self._make_room()
            self._remember(whisper, None, seg, off, uuid)
            if self._size >= SEGMENT_BYTES:
                try:
                    self._open_segment(self._segment + 1)
                except OSError as e:  # the record is safe; the next add retries the rotation
                    log.warning("signal spool %s: cannot start a new segment: %s", self.path, e)
            return True

    def _append(self, record: bytes) -> None:
        """Writes one record whole, or raises StorageError with the file cut back to where it was."""
        assert self._fd is not None
        off = self._size
        try:
            written = os.write(self._fd, record)
            if written != len(record):
                raise OSError(f"short write: {written} of {len(record)} bytes (disk full or file size limit?)")
            if self.fsync:
                os.fsync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, off)
            except OSError:
                # The torn bytes stay; the next open quarantines them. Later records go after them.
                with contextlib.suppress(OSError):
                    self._size = os.fstat(self._fd).st_size
            raise StorageError(f"cannot write the signal spool {self.path}: {e}") from None
        self._size = off + len(record)

    def _make_room(self) -> None:
        victim = next(iter(self._whispers)) if self._whispers else next(iter(self._pending))
        self._consume(victim)
        self.dropped += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "signal spool full (%d signals): dropping the oldest whispers, then the oldest decisions; "
                "see stats().dropped",
                self.max_signals,
            )

    def _consume(self, seq: int) -> None:
        entry = self._pending.pop(seq, None)
        if entry is None:
            return
        self._uuids.pop(entry[4], None)
        self._whispers.pop(seq, None)
        if self._fd is not None:
            self._skipped.add((entry[2], entry[3]))

    def oldest(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` waiting signals, oldest first, as (seq, payload).

        A record found damaged since it was written is quarantined and skipped (counted in
        ``quarantined``). Raises StorageError when the spool's files cannot be read at all.
        """
        with self._lock:
            items = list(self._pending.items())[:limit]
        out = []
        for seq, (_, blob, seg, off, _uuid) in items:
            payload = None
            if blob is None:
                blob = self._read(seg, off)
            if blob is not None:
                with contextlib.suppress(ValueError):
                    payload = orjson.loads(blob)
                if not isinstance(payload, dict):  # checksum intact, content not a signal
                    self._quarantine(seg, off, blob)
            if isinstance(payload, dict):
                out.append((seq, payload))
                continue
            with self._lock:
                self._consume(seq)
        return out

    def _read(self, seg: int, off: int) -> bytes | None:
        """The payload of the record at (seg, off), or None (quarantined) when it no longer checks."""
        assert self.path is not None
        try:
            with open(self.path / _segment_name(seg), "rb") as f:
                f.seek(off)
                data = f.read(HEADER_SIZE)
                length = claimed_length(data)
                if length is not None:
                    data += f.read(length)
                if record_at(data, 0) is None:  # damaged: read on to where the next intact record starts
                    data += f.read(MAX_RECORD + HEADER_SIZE - len(data))
        except OSError as e:
            raise StorageError(f"cannot read the signal spool {self.path}: {e}") from None
        record = record_at(data, 0)
        if record is not None:
            return record.payload
        damage = next(scan(data), Damage(0, 0))  # the stretch up to the next intact record
        self._quarantine(seg, off, data[damage.offset : damage.end])
        return None

    def ack(self, seqs: list[int]) -> None:
        """Forgets signals CAPI accepted, durably."""
        if not seqs:
            return
        with self._lock:
            for s in seqs:
                self._consume(s)
            if self._fd is not None:
                self._persist_ack()

    def _persist_ack(self) -> None:
        assert self.path is not None
        # Everything before the oldest pending record is consumed.
        if self._pending:
            _, _, seg, off, _uuid = next(iter(self._pending.values()))
        else:
            seg, off = self._segment, self._size
        self._acked = (seg, off)
        self._skipped = {(s, o) for s, o in self._skipped if (s, o) >= self._acked}
        # On failure (StorageError) the previous ack.json stands: at worst accepted signals are resent.
        write_atomic(
            self.path / "ack.json",
            json.dumps({"segment": seg, "offset": off, "skipped": sorted(self._skipped)}).encode(),
        )
        for p in self.path.glob("*.log"):
            if p.stem.isdigit() and int(p.stem) < seg:
                p.unlink(missing_ok=True)

    def close(self) -> None:
        """Persists drops and releases the directory (released even when persisting fails)."""
        with self._lock:
            try:
                if self._fd is not None:
                    self._persist_ack()
            finally:
                for fd in (self._fd, self._lock_fd):
                    if fd is not None:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                self._fd = self._lock_fd = None
