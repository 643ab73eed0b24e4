"""The exceptions of capi_fast, all under one base class.

```
CapiFastError
├── InvalidIP            (also a ValueError) a value that is not an IP address or CIDR network
├── InvalidDecision      (also a ValueError) a remediation/origin the index cannot take
├── InvalidSignal        (also a ValueError) a signal that CAPI would refuse; nothing was sent
├── InvalidMetrics       (also a ValueError) a metrics body that breaks CAPI's schema; nothing was sent
├── ConfigurationError   (also a ValueError) a setting that cannot work (bad prefix, changed prefix)
├── SnapshotError        a snapshot file that is corrupt, truncated or of another version
├── StorageError         credentials or spool cannot be read or written safely
├── FirewallError        the packet filter refused a change (nft/ipset failed); nothing was applied
└── CapiError            CAPI answered with an error, or could not be reached
    ├── AuthenticationError   registration or login refused (401/403), after one re-login
    ├── RateLimitError        429 after the retries; ``retry_after`` says how long to wait
    └── ServerError           5xx, timeouts or connection failures after the retries
```

File-system failures of snapshots (missing file, permission denied) surface as the stdlib's
``OSError``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CapiError",
    "CapiFastError",
    "ConfigurationError",
    "FirewallError",
    "InvalidDecision",
    "InvalidIP",
    "InvalidMetrics",
    "InvalidSignal",
    "RateLimitError",
    "ServerError",
    "SnapshotError",
    "StorageError",
]


class CapiFastError(Exception):
    """Base class of every error raised by capi_fast."""


class InvalidIP(CapiFastError, ValueError):
    """A value is not a valid IPv4/IPv6 address or CIDR network."""


class InvalidDecision(CapiFastError, ValueError):
    """A decision names a remediation or origin the index cannot hold (empty, too long, too many)."""


class InvalidSignal(CapiFastError, ValueError):
    """A signal breaks CAPI's rules (scenario name, source, timestamps); it was not sent."""


class InvalidMetrics(CapiFastError, ValueError):
    """A metrics body breaks CAPI's schema (``bouncers`` and ``machines`` lists); it was not sent."""


class ConfigurationError(CapiFastError, ValueError):
    """A setting cannot work: a malformed machine_id prefix, or one changed without a reset."""


class SnapshotError(CapiFastError):
    """A snapshot file is corrupt, truncated, or written by an incompatible format version."""


class StorageError(CapiFastError):
    """Credentials, token or spool cannot be read or written safely (bad permissions, corrupt file)."""


class FirewallError(CapiFastError):
    """The packet filter refused a change or could not be run; its transaction was not applied."""


class CapiError(CapiFastError):
    """CAPI answered with an error status, or could not be reached.

    Attributes:
        status: the HTTP status, or None when no answer came (timeout, connection error).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationError(CapiError):
    """CAPI refused the machine's registration or login."""


class RateLimitError(CapiError):
    """CAPI kept answering 429 Too Many Requests.

    Attributes:
        retry_after: seconds CAPI asked to wait, when it said.
    """

    def __init__(self, message: str, status: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class ServerError(CapiError):
    """CAPI failed (5xx), timed out or could not be reached, after the retries."""
