"""Writing a file so that readers and crashes see the old content or the new one, never a mix."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from capi_fast.errors import StorageError

__all__ = ["read_private", "write_atomic"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Fsyncs a directory, so the names created or renamed in it survive a power cut (OSError)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a directory, created (mode 0700, with its parents) when missing.

    Raises:
        StorageError: it cannot be, naming ``what`` it is for.
    """
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {what} {path}: {e.strerror or e}") from None
    return path


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replaces ``path`` with ``data``, atomically.

    A new file (``mode``, 0600 by default) is written and fsynced, renamed over the old one, and
    the directory fsynced, so the rename itself survives a power cut.

    Raises:
        StorageError: the file could not be written; the old content, if any, is intact and no
            temporary file is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from None


def read_private(path: str | os.PathLike[str], what: str) -> str:
    """The text of a secret file (stripped), refused when other users can read it.

    Raises:
        StorageError: others can read it (with the ``chmod`` that fixes it), or it cannot be read.
    """
    path = Path(path)
    try:
        if path.stat().st_mode & 0o077:
            raise StorageError(f"{path} is readable by other users; run chmod 600 {path}")
        return path.read_text().strip()
    except OSError as e:
        raise StorageError(f"cannot read the {what} {path}: {e.strerror}") from None
