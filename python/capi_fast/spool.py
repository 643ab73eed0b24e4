"""The durable signal spool: signals wait here, on disk, until CAPI accepted them.

An append-only log of segment files in one directory. ``add`` writes one CRC-checked record
with a single ``write()`` before it returns: the signal is then in the kernel's page cache and
survives a crash or ``kill -9`` of the process; ``durability="full"`` also fsyncs each record
so it survives a power cut (at a large cost in throughput). Delivery is first-in first-out, so
what CAPI accepted is one position in the log, kept in ``ack.json`` (replaced atomically after
each accepted batch) with the few records dropped out of order. On open the log is replayed
from that position; a torn last record (a crash mid-write) is cut off. Fully consumed segments
are deleted. One process at a time owns a spool directory (an exclusive ``flock``).

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
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from capi_fast.errors import StorageError

__all__ = ["Spool"]

log = logging.getLogger("capi_fast.spool")

_HEADER = struct.Struct("<IIB")  # payload length, crc32 of flag+payload, flag (1 = whisper)
SEGMENT_BYTES = 8 << 20
_MAX_RECORD = 1 << 20


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
        off = self._acked[1] if seg == self._acked[0] else 0
        while off + _HEADER.size <= len(data):
            length, crc, flag = _HEADER.unpack_from(data, off)
            body = data[off + _HEADER.size : off + _HEADER.size + length]
            if length > _MAX_RECORD or len(body) < length or zlib.crc32(bytes([flag]) + body) != crc:
                break
            if (seg, off) not in self._skipped:
                uuid = ""
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    uuid = str(orjson.loads(body)["uuid"])
                self._remember(bool(flag), None, seg, off, uuid or f"{seg}:{off}")
            off += _HEADER.size + length
        if off < len(data):
            log.warning("signal spool %s: cutting a torn or corrupt tail of %d bytes", file, len(data) - off)
            with open(file, "r+b") as f:
                f.truncate(off)

    def _open_segment(self, seg: int) -> None:
        assert self.path is not None
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path / _segment_name(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segment, self._size = seg, os.fstat(self._fd).st_size

    def _remember(self, whisper: bool, blob: bytes | None, seg: int, off: int, uuid: str) -> None:
        self._seq += 1
        self._pending[self._seq] = (whisper, blob, seg, off, uuid)
        self._uuids[uuid] = self._seq
        if whisper:
            self._whispers[self._seq] = None

    # -- API -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, uuid: str, whisper: bool, payload: dict[str, Any]) -> bool:
        """Stores one signal durably; returns False if its uuid was already waiting."""
        body = orjson.dumps(payload)
        if len(body) > _MAX_RECORD:
            raise StorageError(f"a signal of {len(body)} bytes is too large for the spool")
        with self._lock:
            if uuid in self._uuids:
                return False
            if len(self._pending) >= self.max_signals:
                self._make_room()
            seg, off = self._segment, self._size
            if self._fd is not None:
                record = _HEADER.pack(len(body), zlib.crc32(bytes([whisper]) + body), int(whisper)) + body
                try:
                    os.write(self._fd, record)
                    if self.fsync:
                        os.fsync(self._fd)
                except OSError as e:
                    raise StorageError(f"cannot write the signal spool: {e}") from None
                self._size += len(record)
                if self._size >= SEGMENT_BYTES:
                    self._open_segment(self._segment + 1)
                self._remember(whisper, None, seg, off, uuid)
            else:
                self._remember(whisper, body, 0, 0, uuid)
            return True

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
        """Up to ``limit`` waiting signals, oldest first, as (seq, payload)."""
        with self._lock:
            items = list(self._pending.items())[:limit]
        out = []
        for seq, (_, blob, seg, off, _uuid) in items:
            if blob is None:
                blob = self._read(seg, off)
            out.append((seq, orjson.loads(blob)))
        return out

    def _read(self, seg: int, off: int) -> bytes:
        assert self.path is not None
        with open(self.path / _segment_name(seg), "rb") as f:
            f.seek(off)
            length, _, _ = _HEADER.unpack(f.read(_HEADER.size))
            return f.read(length)

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
        tmp = self.path / "ack.json.tmp"
        with open(tmp, "w") as f:
            json.dump({"segment": seg, "offset": off, "skipped": sorted(self._skipped)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / "ack.json")
        for p in self.path.glob("*.log"):
            if p.stem.isdigit() and int(p.stem) < seg:
                p.unlink(missing_ok=True)

    def close(self) -> None:
        """Persists drops and releases the directory."""
        with self._lock:
            if self._fd is not None:
                self._persist_ack()
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
