"""The minimal HS256 JWT the simulator issues, enough for clients that read ``exp``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

__all__ = ["decode", "encode"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], secret: bytes) -> str:
    """Signs ``claims`` with HMAC-SHA256."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def decode(token: str, secret: bytes) -> dict[str, Any] | None:
    """The claims of a token signed with ``secret``, or None if it is forged or malformed."""
    try:
        head, body, sig = token.split(".")
        want = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, _unb64(sig)):
            return None
        claims = json.loads(_unb64(body))
    except (ValueError, TypeError):
        return None
    return claims if isinstance(claims, dict) else None
