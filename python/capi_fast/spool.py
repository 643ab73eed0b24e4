"""The durable signal spool: signals wait here, on disk, until CAPI accepted them.

SQLite in WAL mode, one row per signal keyed by its uuid (re-adding a signal is a no-op). Each
``add`` is its own committed transaction before it returns, so a crash or ``kill -9`` loses
nothing; with ``synchronous=NORMAL`` (the default here) a power cut may lose the last commits,
``durability="full"`` fsyncs every commit instead. Rows leave only through ``ack`` (CAPI accepted
them) or ``_make_room`` (the spool is full: oldest whispers first, then oldest decisions, every
drop counted).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from capi_fast.errors import StorageError

__all__ = ["Spool"]

log = logging.getLogger("capi_fast.spool")


class Spool:
    """Signals waiting for delivery, oldest first.

    Args:
        path: the SQLite file, or None for an in-memory spool (not durable: tests, tools).
        max_signals: most signals held; past it the oldest whispers, then the oldest decisions,
            are dropped and counted.
        durability: ``normal`` (survives process crashes) or ``full`` (also power loss).
    """

    def __init__(self, path: str | Path | None, max_signals: int = 100_000, durability: str = "normal") -> None:
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
        if max_signals < 1:
            raise ValueError("max_signals must be at least 1")
        self.path = path
        self.max_signals = max_signals
        self.dropped = 0
        self._warned = False
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                ":memory:" if path is None else str(path), check_same_thread=False, isolation_level=None
            )
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={durability.upper()}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "uuid TEXT NOT NULL UNIQUE, whisper INTEGER NOT NULL, payload BLOB NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS spool_whisper ON spool (whisper, seq)")
            self._count = int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
        except sqlite3.Error as e:
            raise StorageError(f"cannot open the signal spool {path}: {e}") from None

    def __len__(self) -> int:
        return self._count

    def add(self, uuid: str, whisper: bool, payload: dict[str, Any]) -> bool:
        """Stores one signal durably; returns False if its uuid was already waiting."""
        blob = orjson.dumps(payload)
        with self._lock:
            if self._count >= self.max_signals:
                self._make_room()
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO spool (uuid, whisper, payload) VALUES (?, ?, ?)", (uuid, int(whisper), blob)
                )
            except sqlite3.Error as e:
                raise StorageError(f"cannot write the signal spool: {e}") from None
            if cur.rowcount:
                self._count += 1
                return True
            return False

    def _make_room(self) -> None:
        row = self._db.execute("SELECT seq FROM spool WHERE whisper = 1 ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            row = self._db.execute("SELECT seq FROM spool ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            return
        self._db.execute("DELETE FROM spool WHERE seq = ?", (row[0],))
        self._count -= 1
        self.dropped += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "signal spool full (%d signals): dropping the oldest whispers, then the oldest decisions; "
                "see stats()['dropped']",
                self.max_signals,
            )

    def oldest(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` waiting signals, oldest first, as (seq, payload)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, payload FROM spool ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(int(seq), orjson.loads(blob)) for seq, blob in rows]

    def ack(self, seqs: list[int]) -> None:
        """Forgets signals CAPI accepted."""
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")
            self._count -= max(cur.rowcount, 0)

    def close(self) -> None:
        """Closes the database."""
        with self._lock:
            self._db.close()
