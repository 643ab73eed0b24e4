"""Signals handed to the process that sends them (the daemon) through a directory.

A signal spool has one owner (an exclusive ``flock``), and the CAPI credentials live with the
daemon, so the processes that detect attacks (web workers, a WAF, a cron job) do not send
signals themselves: each ``SignalInbox(path).drop(signals)`` writes one file, atomically (a
temporary name, fsync, rename), and the daemon's ``drain`` moves the files' signals into its
spool, makes the spool durable (one fsync), and only then deletes the files. A crash at any
point loses nothing: a file drained twice adds nothing (the spool keeps one record per uuid
while it waits). A file that is not a list of signals is moved to ``quarantine/`` and counted;
a bad item in a good file is skipped and counted, the rest delivered. A file that cannot be
read stays where it is, counted and logged, and the drain goes on with the others.

The daemon must be able to delete the files: it owns the directory, and the producers get
write access through its group (for instance ``chgrp www-data`` and mode 2770); the files they
write are theirs, mode 0600, and the daemon reads them (under the systemd unit, root with
``CAP_DAC_READ_SEARCH``). A file taken in but not deletable is not taken again by this process
(its signals may have been sent meanwhile) and is logged at ERROR; after a restart it is taken
once more, so fix the directory's permissions.
"""

from __future__ import annotations

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
    unreadable: int = 0  # files left in place: they could not be read (logged)
    undeletable: int = 0  # files taken in that could not be deleted (logged; not taken again)


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
        # Files taken in whose deletion failed: name -> identity when taken. Left out of later
        # drains while the same file is there (its signals may have been sent since).
        self._kept: dict[str, tuple[int, int, int, int]] = {}

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
            items.append((s.is_whisper, s.to_payload("")))
        return write_signal_file(self.path, items) if items else None

    def pending(self) -> list[Path]:
        """The files waiting, oldest first (temporary files of writes in progress aside).

        A file this inbox already took in but could not delete is not waiting.
        """
        try:
            names = sorted(n for n in os.listdir(self.path) if n.endswith(SUFFIX) and not n.startswith("."))
        except OSError as e:
            raise StorageError(f"cannot list the signal inbox {self.path}: {e.strerror or e}") from None
        if self._kept:
            for name in list(self._kept):
                try:
                    same = _identity(os.lstat(self.path / name)) == self._kept[name]
                except OSError:
                    same = False
                if not same:  # deleted or replaced since: forget it
                    del self._kept[name]
            names = [n for n in names if n not in self._kept]
        return [self.path / n for n in names]

    def drain(self, spool: Spool, max_files: int = 1000) -> DrainReport:
        """Moves up to ``max_files`` files' signals into ``spool``, syncs it, deletes the files.

        Raises:
            StorageError: the spool could not take or keep them; the files not yet deleted stay
                for the next drain (what reached the spool is not added twice).
        """
        taken: list[tuple[Path, tuple[int, int, int, int] | None]] = []
        signals = duplicates = skipped = quarantined = unreadable = undeletable = 0
        for path in self.pending()[:max_files]:
            try:
                items, identity = self._read(path)
            except StorageError as e:  # the file stays; the others are still taken in
                unreadable += 1
                log.error("signal inbox: %s (left in place)", e)
                continue
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
            taken.append((path, identity))
        if taken:
            spool.sync()
            for path, identity in taken:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    undeletable += 1
                    if identity is not None:
                        self._kept[path.name] = identity
                    log.error(
                        "signal inbox: cannot delete %s after taking its signals in (%s): not taken again by "
                        "this process, but once more after a restart; the daemon needs write access to %s",
                        path,
                        e.strerror or e,
                        self.path,
                    )
        if skipped or quarantined:
            log.warning("signal inbox %s: %d items skipped, %d files quarantined", self.path, skipped, quarantined)
        return DrainReport(len(taken), signals, duplicates, skipped, quarantined, unreadable, undeletable)

    def _read(self, path: Path) -> tuple[list[Any] | None, tuple[int, int, int, int] | None]:
        """The items of one file and its identity; no items when the file is not a list.

        Such a file is moved to quarantine/.
        Only regular files are opened (no symlink followed, no FIFO waited on). A file that
        cannot be read (permissions, I/O) raises ``StorageError`` and stays where it is.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return [], None
        except OSError as e:
            if e.errno != errno.ELOOP:  # ELOOP: a symlink, which is no signal file
                raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
            doc: Any = None
            identity = None
        else:
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                identity = _identity(st)
                if not stat.S_ISREG(st.st_mode):
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
            return doc, identity
        quarantine = self.path / "quarantine"
        try:
            quarantine.mkdir(mode=0o700, exist_ok=True)
            if not stat.S_ISDIR(os.lstat(quarantine).st_mode):
                raise OSError(f"{quarantine} is not a directory")
            os.replace(path, quarantine / path.name)
        except OSError as e:
            raise StorageError(f"cannot quarantine {path}: {e.strerror or e}") from None
        return None, None


def write_signal_file(directory: Path, items: list[tuple[bool, dict[str, Any]]]) -> Path:
    """One file of ``(whisper, payload)`` items in the inbox's format, written atomically (0600).

    Raises:
        StorageError: it could not be written (nothing is left half-written).
    """
    path = directory / f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
    write_atomic(path, orjson.dumps([{"whisper": whisper, "payload": payload} for whisper, payload in items]))
    return path


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one file from another under the same name."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
