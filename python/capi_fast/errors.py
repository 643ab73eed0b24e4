"""The exceptions of capi_fast, all under one base class.

```
CapiFastError
├── InvalidIP            (also a ValueError) a value that is not an IP address or CIDR network
├── InvalidDecision      (also a ValueError) a remediation/origin the index cannot take
└── SnapshotError        a snapshot file that is corrupt, truncated or of another version
```

File-system failures (missing file, permission denied) surface as the stdlib's ``OSError``.
"""

from __future__ import annotations

__all__ = ["CapiFastError", "InvalidDecision", "InvalidIP", "SnapshotError"]


class CapiFastError(Exception):
    """Base class of every error raised by capi_fast."""


class InvalidIP(CapiFastError, ValueError):
    """A value is not a valid IPv4/IPv6 address or CIDR network."""


class InvalidDecision(CapiFastError, ValueError):
    """A decision names a remediation or origin the index cannot hold (empty, too long, too many)."""


class SnapshotError(CapiFastError):
    """A snapshot file is corrupt, truncated, or written by an incompatible format version."""
