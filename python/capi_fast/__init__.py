"""capi_fast: CrowdSec Central API client and remediation engine, with a Rust decision index.

The native ``DecisionIndex`` answers "which remediation for this IP?" from every active
decision covering the address; ``capi_fast.reference`` is its pure-Python twin.
"""

from __future__ import annotations

from capi_fast._native import BatchResult, DecisionIndex, ExportBlocks, MappedIndex
from capi_fast._native import __version__ as __version__
from capi_fast.async_engine import AsyncRemediationEngine
from capi_fast.client import DEV_URL, PROD_URL, AsyncCapiClient, CapiClient
from capi_fast.engine import RefreshReport, RemediationEngine
from capi_fast.errors import (
    AuthenticationError,
    CapiError,
    CapiFastError,
    ConfigurationError,
    InvalidDecision,
    InvalidIP,
    InvalidMetrics,
    InvalidSignal,
    RateLimitError,
    ServerError,
    SnapshotError,
    StorageError,
)
from capi_fast.lapi import AsyncLapiClient, LapiClient
from capi_fast.lists import Allowlist, AllowlistLink, Blocklist, BlocklistLink
from capi_fast.refresher import Health
from capi_fast.signal_inbox import SignalInbox
from capi_fast.signals import Signal
from capi_fast.storage import Credentials, FileStorage, MemoryStorage, Storage, Token

__all__ = [
    "DEV_URL",
    "PROD_URL",
    "Allowlist",
    "AllowlistLink",
    "AsyncCapiClient",
    "AsyncLapiClient",
    "AsyncRemediationEngine",
    "AuthenticationError",
    "BatchResult",
    "Blocklist",
    "BlocklistLink",
    "CapiClient",
    "CapiError",
    "CapiFastError",
    "ConfigurationError",
    "Credentials",
    "DecisionIndex",
    "ExportBlocks",
    "FileStorage",
    "InvalidDecision",
    "InvalidIP",
    "InvalidMetrics",
    "InvalidSignal",
    "LapiClient",
    "MappedIndex",
    "MemoryStorage",
    "RateLimitError",
    "Health",
    "RefreshReport",
    "RemediationEngine",
    "ServerError",
    "Signal",
    "SignalInbox",
    "SnapshotError",
    "Storage",
    "StorageError",
    "Token",
    "__version__",
]
