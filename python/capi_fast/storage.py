"""Where the machine's CAPI identity lives: credentials and token.

The vendor's rules (the CrowdSec CAPI SDK guide): the (machine_id, password) pair never
changes once CAPI accepted it, is unique per endpoint, and changing the machine_id prefix means
new credentials. ``FileStorage`` keeps them across restarts: files written atomically with mode
0600 in a 0700 directory, and an exclusive lock (``flock``) so processes sharing the directory
register and log in one at a time. ``MemoryStorage`` is for tests and short-lived tools.
Passwords and tokens never appear in a ``repr``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import string
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from capi_fast.errors import ConfigurationError, StorageError
from capi_fast.files import private_dir, write_atomic

__all__ = [
    "MACHINE_ID_LENGTH",
    "PASSWORD_LENGTH",
    "Credentials",
    "FileStorage",
    "MemoryStorage",
    "Storage",
    "Token",
    "generate_credentials",
]

#: Length of a machine_id, prefix included (php-capi-client uses the same).
MACHINE_ID_LENGTH = 48
#: Length of a generated password.
PASSWORD_LENGTH = 32
PREFIX_RE = re.compile(r"^[a-z0-9]{0,16}$")
_ID_CHARS = string.ascii_lowercase + string.digits
_PASSWORD_CHARS = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Credentials:
    """A machine's identity at one CAPI endpoint.

    Attributes:
        machine_id: 48 characters, starting with ``prefix``.
        password: 32 random characters; never shown by ``repr``.
        prefix: the machine_id prefix they were generated with.
        base_url: the endpoint they belong to.
        registered: True once CAPI accepted them; from then on they never change.
    """

    machine_id: str
    password: str = field(repr=False)
    prefix: str = ""
    base_url: str = ""
    registered: bool = False


@dataclass(frozen=True)
class Token:
    """A login token and what it was issued for.

    Attributes:
        token: the JWT; never shown by ``repr``.
        expire: Unix time at which CAPI stops accepting it.
        scenarios: the scenario list sent at login (a change means logging in again).
        base_url: the endpoint that issued it.
    """

    token: str = field(repr=False)
    expire: float
    scenarios: tuple[str, ...] = ()
    base_url: str = ""


def generate_credentials(prefix: str = "", base_url: str = "") -> Credentials:
    """New random credentials (not registered yet).

    Raises:
        ConfigurationError: the prefix is not 0 to 16 characters of ``[a-z0-9]``.
    """
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise ConfigurationError(f"machine_id_prefix must be 0 to 16 characters of [a-z0-9], got {prefix!r}")
    rest = "".join(secrets.choice(_ID_CHARS) for _ in range(MACHINE_ID_LENGTH - len(prefix)))
    password = "".join(secrets.choice(_PASSWORD_CHARS) for _ in range(PASSWORD_LENGTH))
    return Credentials(machine_id=prefix + rest, password=password, prefix=prefix, base_url=base_url)


@runtime_checkable
class Storage(Protocol):
    """What the CAPI client needs from a store of credentials and tokens."""

    def load_credentials(self) -> Credentials | None:
        """The stored credentials, or None."""

    def save_credentials(self, credentials: Credentials | None) -> None:
        """Stores (or, with None, forgets) the credentials."""

    def load_token(self) -> Token | None:
        """The stored token, or None."""

    def save_token(self, token: Token | None) -> None:
        """Stores (or, with None, forgets) the token."""

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock held while registering or logging in."""


class MemoryStorage:
    """Credentials and token in memory only: lost when the process ends."""

    def __init__(self, credentials: Credentials | None = None, token: Token | None = None) -> None:
        """Starts with optional credentials and token."""
        self._credentials = credentials
        self._token = token
        self._lock = threading.RLock()

    def load_credentials(self) -> Credentials | None:
        """The stored credentials, or None."""
        return self._credentials

    def save_credentials(self, credentials: Credentials | None) -> None:
        """Stores (or forgets) the credentials."""
        self._credentials = credentials

    def load_token(self) -> Token | None:
        """The stored token, or None."""
        return self._token

    def save_token(self, token: Token | None) -> None:
        """Stores (or forgets) the token."""
        self._token = token

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """A re-entrant lock of this process."""
        with self._lock:
            yield

    def __repr__(self) -> str:
        return f"MemoryStorage(credentials={self._credentials!r})"


class FileStorage:
    """Credentials and token in files under one directory, safe across restarts and processes.

    ``credentials.json`` and ``token.json`` are replaced atomically (temporary file, fsync,
    rename, fsync of the directory) with mode 0600; the directory is created 0700. A file that
    others can read, or that does not parse, raises ``StorageError`` rather than being ignored
    or regenerated: credentials accepted by CAPI must never be silently replaced.
    """

    CREDENTIALS = "credentials.json"
    TOKEN = "token.json"
    LOCK = ".lock"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """Uses (and creates, mode 0700) ``directory``."""
        self.directory = private_dir(directory, "storage directory")
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"FileStorage({str(self.directory)!r})"

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e}") from None
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise StorageError(f"{path} is accessible by other users (mode {oct(mode & 0o777)}); run chmod 600")
            raw = f.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            raise StorageError(f"{path} is not valid JSON; restore it from a backup rather than deleting it") from None
        if not isinstance(doc, dict):
            raise StorageError(f"{path} does not hold a JSON object")
        return doc

    def _write(self, name: str, doc: dict[str, Any] | None) -> None:
        path = self.directory / name
        if doc is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        write_atomic(path, json.dumps(doc, sort_keys=True).encode())

    def load_credentials(self) -> Credentials | None:
        """The stored credentials, or None when none were ever stored."""
        doc = self._read(self.CREDENTIALS)
        if doc is None:
            return None
        try:
            return Credentials(**doc)
        except TypeError:
            raise StorageError(f"{self.directory / self.CREDENTIALS} has unexpected fields") from None

    def save_credentials(self, credentials: Credentials | None) -> None:
        """Stores (or forgets) the credentials, atomically, mode 0600."""
        self._write(self.CREDENTIALS, None if credentials is None else asdict(credentials))

    def load_token(self) -> Token | None:
        """The stored token, or None."""
        doc = self._read(self.TOKEN)
        if doc is None:
            return None
        try:
            doc["scenarios"] = tuple(doc.get("scenarios", ()))
            return Token(**doc)
        except TypeError:
            raise StorageError(f"{self.directory / self.TOKEN} has unexpected fields") from None

    def save_token(self, token: Token | None) -> None:
        """Stores (or forgets) the token, atomically, mode 0600."""
        self._write(self.TOKEN, None if token is None else {**asdict(token), "scenarios": list(token.scenarios)})

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock over the directory, across threads and processes; re-entrant."""
        with self._thread_lock:
            if self._depth == 0:
                try:
                    fd = os.open(self.directory / self.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
                except OSError as e:
                    raise StorageError(f"cannot lock {self.directory}: {e.strerror}") from None
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    os.close(self._lock_fd)
                    self._lock_fd = None
