"""The CAPI simulator's HTTP side: reading requests, injecting faults, writing answers."""

from __future__ import annotations

import email.utils
import json
import zlib
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from capi_fast.testing.records import LIST_DOWNLOAD, MAX_BODY, Logged

if TYPE_CHECKING:
    from capi_fast.testing.simulator import CapiSimulator


def _gunzip(raw: bytes) -> bytes:
    """Decompresses a gzip body, refusing one that inflates past ``MAX_BODY``."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(raw, MAX_BODY + 1)
    if len(out) > MAX_BODY or d.unconsumed_tail:
        raise ValueError("body too large")
    if not d.eof:
        raise EOFError("truncated gzip body")
    return out


class Handler(BaseHTTPRequestHandler):
    """One connection to the simulator; ``simulator`` is set by a subclass per server."""

    simulator: CapiSimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silent: requests are in ``simulator.requests``, and bodies may hold passwords."""

    def _log(self, status: int, authorized: bool) -> None:
        with self.simulator._lock:
            self.simulator._requests.append(
                Logged(
                    self.command,
                    urlsplit(self.path).path,
                    status,
                    self.headers.get("User-Agent", ""),
                    authorized,
                    self.headers.get("Content-Type", ""),
                    self.headers.get("Content-Encoding", ""),
                )
            )

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        sim = self.simulator
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._log(413, False)
            self._send(413, b'{"message":"body too large"}')
            return
        raw = self.rfile.read(length) if length else b""
        fault = sim._take_fault(parts.path)
        lost = fault is not None and fault.kind == "lost"
        if lost:
            fault = None
        if fault is not None:
            self._log(fault.status if fault.kind == "status" else 200, False)
            if fault.kind == "timeout":
                sim._stopping.wait(fault.delay)
                self.close_connection = True
                return
            if fault.kind == "malformed":
                self._send(200, b'{"new": [this is not json', {"Content-Type": "application/json"})
                return
            if fault.kind == "truncated":
                full = b'{"new": [], "deleted": [], "links": {"blocklists": []}}'
                self._send(200, full[:20], {"Content-Type": "application/json"}, length=len(full))
                self.close_connection = True
                return
            headers = {"Content-Type": "application/json"}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(
                    int(fault.retry_after) if fault.retry_after == int(fault.retry_after) else fault.retry_after
                )
            self._send(fault.status, json.dumps({"message": f"injected {fault.status}"}).encode(), headers)
            return
        if parts.path.startswith("/loop/") and self.command == "GET":  # a redirect to itself, forever
            self._log(302, False)
            self._send(302, b"", {"Location": sim.url + parts.path.lstrip("/")})
            return
        if parts.path.startswith("/redirect/") and self.command == "GET":
            self._log(302, False)
            self._send(302, b"", {"Location": sim.url + parts.path.removeprefix("/redirect/")})
            return
        b = LIST_DOWNLOAD.match(parts.path)
        if b and self.command == "GET":
            status, content, modified = sim.list_download(b.group(1), b.group(2), self.headers.get("If-Modified-Since"))
            headers = {"Content-Type": "text/plain" if b.group(1) == "blocklists" else "application/x-ndjson"}
            if modified is not None:
                headers["Last-Modified"] = email.utils.formatdate(modified, usegmt=True)
            self._log(status, False)
            self._send(status, content, headers)
            return
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding == "gzip":  # crowdsec 1.7+ compresses bodies over 5 KiB
            try:
                raw = _gunzip(raw)
            except (OSError, EOFError, zlib.error, ValueError):
                self._log(400, False)
                self._send(400, b'{"message":"body is not valid gzip"}')
                return
        elif encoding not in ("", "identity"):
            self._log(415, False)
            self._send(415, b'{"message":"unsupported Content-Encoding"}')
            return
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            self._log(400, False)
            self._send(400, b'{"message":"body is not JSON"}')
            return
        status, answer = sim.handle(
            self.command, parts.path, parse_qs(parts.query), payload, self.headers.get("Authorization")
        )
        self._log(status, status not in (401, 403))
        if lost:
            self.close_connection = True
            return
        self._send(status, sim.encode(answer), {"Content-Type": "application/json"})

    do_GET = _serve  # noqa: N815
    do_POST = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815
