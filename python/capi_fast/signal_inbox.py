"""Signals handed to the process that sends them (the daemon) through a directory.

A signal spool has one owner (an exclusive ``flock``), and the CAPI credentials live with the
daemon, so the processes that detect attacks (web workers, a WAF, a cron job) do not send
signals themselves: each ``SignalInbox(path).drop(signals)`` writes one file, atomically (a
temporary name, fsync, rename), and the daemon's ``drain`` moves the files' signals into its
spool, makes the spool durable (one fsync), and only then deletes the files. A crash at any
point loses nothing: a file drained twice adds nothing (the spool keeps one record per uuid
while it waits). A file that is not a list of signals is moved to ``quarantine/`` and counted;
a bad item in a good file is skipped and counted, the rest delivered.

Give the producers write access to the directory (for instance ``chgrp www-data`` and mode
2770); the files they write are theirs, mode 0600, and the daemon (root) reads them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from capi_fast.errors import InvalidSignal, StorageError
from capi_fast.files import private_dir, write_atomic
from capi_fast.signals import Signal, scenario_problem
from capi_fast.spool import Spool
from capi_fast.spool_format import MAX_RECORD

__all__ = ["DrainReport", "SignalInbox"]

log = logging.getLogger("capi_fast.signal_inbox")

SUFFIX = ".signals"
#: The largest file ``drain`` reads (a bigger one is quarantined).
MAX_FILE = 16 << 20


@dataclass(frozen=True)
class DrainReport:
    """What one ``drain`` did."""

    files: int  # files taken in (and deleted)
    signals: int  # signals added to the spool
    duplicates: int  # signals whose uuid was already waiting
    skipped: int  # items that were not signals
    quarantined: int  # files moved to quarantine/


def _payload(item: Any) -> tuple[str, bool, dict[str, Any]] | None:
    """``(uuid, whisper, payload)`` of one dropped item, or None when it is not one CAPI takes.

    A signal CAPI refuses would stop the whole batch it goes in, so the checks ``Signal``
    makes on the way in are made again: the scenario name, the source, the size.
    """
    if not isinstance(item, dict) or not isinstance(item.get("whisper"), bool):
        return None
    p = item.get("payload")
    if not isinstance(p, dict):
        return None
    uuid, scenario, source, decisions = p.get("uuid"), p.get("scenario"), p.get("source"), p.get("decisions")
    if not (isinstance(uuid, str) and 0 < len(uuid) <= 128) or scenario_problem(scenario) is not None:
        return None
    if not (isinstance(source, dict) and source.get("scope") in ("Ip", "Range") and isinstance(decisions, list)):
        return None
    try:
        ipaddress.ip_network(str(source.get("value")), strict=False)
        size = len(orjson.dumps(p))
    except (ValueError, TypeError, orjson.JSONEncodeError):
        return None
    if item["whisper"] != (not decisions) or size > MAX_RECORD:
        return None
    return uuid, item["whisper"], p


class SignalInbox:
    """A directory of dropped signal files.

    Args:
        path: the directory (created, mode 0700, when missing).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = private_dir(path, "the signal inbox")

    def drop(self, signals: Iterable[Signal]) -> Path | None:
        """Hands ``signals`` to the sender: one file, written atomically. None when there are none.

        Raises:
            InvalidSignal: an item is not a ``Signal`` (nothing is written).
            StorageError: the file could not be written (nothing is left half-written).
        """
        items = []
        for s in signals:
            if not isinstance(s, Signal):
                raise InvalidSignal(f"expected a Signal, got {type(s).__name__}")
            items.append({"whisper": s.is_whisper, "payload": s.to_payload("")})
        if not items:
            return None
        path = self.path / f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        write_atomic(path, orjson.dumps(items))
        return path

    def pending(self) -> list[Path]:
        """The files waiting, oldest first (temporary files of writes in progress aside)."""
        try:
            names = sorted(n for n in os.listdir(self.path) if n.endswith(SUFFIX) and not n.startswith("."))
        except OSError as e:
            raise StorageError(f"cannot list the signal inbox {self.path}: {e.strerror or e}") from None
        return [self.path / n for n in names]

    def drain(self, spool: Spool, max_files: int = 1000) -> DrainReport:
        """Moves up to ``max_files`` files' signals into ``spool``, syncs it, deletes the files.

        Raises:
            StorageError: the spool could not take or keep them; the files not yet deleted stay
                for the next drain (what reached the spool is not added twice).
        """
        taken: list[Path] = []
        signals = duplicates = skipped = quarantined = 0
        for path in self.pending()[:max_files]:
            items = self._read(path)
            if items is None:
                quarantined += 1
                continue
            for item in items:
                parsed = _payload(item)
                if parsed is None:
                    skipped += 1
                elif spool.add(*parsed):
                    signals += 1
                else:
                    duplicates += 1
            taken.append(path)
        if taken:
            spool.sync()
            for path in taken:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if skipped or quarantined:
            log.warning("signal inbox %s: %d items skipped, %d files quarantined", self.path, skipped, quarantined)
        return DrainReport(len(taken), signals, duplicates, skipped, quarantined)

    def _read(self, path: Path) -> list[Any] | None:
        """The items of one file; None (and the file moved to quarantine/) when it is not a list.

        Only regular files are opened (no symlink followed, no FIFO waited on). A file that
        cannot be read (permissions, I/O) raises ``StorageError`` and stays where it is.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return []
        except OSError as e:
            if e.errno != errno.ELOOP:  # ELOOP: a symlink, which is no signal file
                raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
            doc: Any = None
        else:
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    doc = None
                else:
                    try:
                        data = f.read(MAX_FILE + 1)
                    except OSError as e:
                        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
                    try:
                        doc = orjson.loads(data) if len(data) <= MAX_FILE else None
                    except orjson.JSONDecodeError:
                        doc = None
        if isinstance(doc, list):
            return doc
        quarantine = self.path / "quarantine"
        try:
            quarantine.mkdir(mode=0o700, exist_ok=True)
            if not stat.S_ISDIR(os.lstat(quarantine).st_mode):
                raise OSError(f"{quarantine} is not a directory")
            os.replace(path, quarantine / path.name)
        except OSError as e:
            raise StorageError(f"cannot quarantine {path}: {e.strerror or e}") from None
        return None
