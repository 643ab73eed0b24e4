"""capi_fast: CrowdSec Central API client and remediation engine, with a Rust decision index.

The native ``DecisionIndex`` answers "which remediation for this IP?" from every active
decision covering the address; ``capi_fast.reference`` is its pure-Python twin.
"""

from __future__ import annotations

from capi_fast._native import BatchResult, DecisionIndex
from capi_fast._native import __version__ as __version__
from capi_fast.errors import CapiFastError, InvalidDecision, InvalidIP, SnapshotError

__all__ = [
    "BatchResult",
    "CapiFastError",
    "DecisionIndex",
    "InvalidDecision",
    "InvalidIP",
    "SnapshotError",
    "__version__",
]
