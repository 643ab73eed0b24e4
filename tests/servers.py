"""Real HTTP servers for the middleware tests: uvicorn and waitress in a thread, gunicorn as a
process, and a fake captcha verify endpoint. Each listens on a loopback port chosen by the kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from support import stop

TESTS = Path(__file__).resolve().parent


def _listening_socket() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


def _until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling a server's start-up, not covering a race


@contextlib.contextmanager
def uvicorn_serving(app: Any, uds: str | None = None, lifespan: str = "off") -> Iterator[str]:
    """``app`` under a real uvicorn server; yields its base URL (or the socket path with ``uds``).

    uvicorn's own proxy-header handling is off: the middleware decides whom to trust.
    """
    if uds is None:
        sock = _listening_socket()
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(uds)
        sock.listen(128)
    config = uvicorn.Config(app, lifespan=lifespan, proxy_headers=False, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _until("uvicorn to start", lambda: server.started or not thread.is_alive())
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        yield uds if uds is not None else f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def waitress_serving(app: Any) -> Iterator[str]:
    """A WSGI ``app`` under a real waitress server in a thread; yields its base URL.

    waitress drops forwarding headers from peers it does not trust; the middleware decides here.
    """
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=4, clear_untrusted_proxy_headers=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(30)


@contextlib.contextmanager
def gunicorn_serving(target: str, env: dict[str, str], workers: int = 1) -> Iterator[str]:
    """``module:app`` (importable from tests/apps) under a real gunicorn; yields its base URL."""
    with contextlib.closing(_listening_socket()) as probe:
        port = probe.getsockname()[1]
    full_env = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "apps"), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        target,
    ]
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def up() -> bool:
        if proc.poll() is not None:
            return True
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        _until("gunicorn to listen", up)
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{out}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


class FakeVerify:
    """A captcha provider's verify endpoint: ``good-token`` with the right secret is a solve."""

    SECRET = "verify-secret"
    TOKEN = "good-token"

    def __init__(self) -> None:
        self.calls: list[dict[str, list[str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                fake.calls.append(form)
                ok = form.get("secret") == [fake.SECRET] and form.get("response") == [fake.TOKEN]
                body = b'{"success": true}' if ok else b'{"success": false, "error-codes": ["invalid-input-response"]}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/siteverify"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVerify:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeLapi:
    """A LAPI's bouncer routes: an empty decisions stream and ``POST /v1/usage-metrics``.

    Metrics bodies are checked against the swagger's ``AllMetrics`` (as crowdsec 1.6.3+ does)
    and answered ``metrics_status`` (201 as crowdsec, or what a test sets); a bad key gets 403.
    """

    KEY = "fake-bouncer-key"

    def __init__(self) -> None:
        from capi_fast.testing.schema import usage_metrics_problem

        self.metrics: list[dict[str, Any]] = []
        self.user_agents: list[str] = []
        self.metrics_status = 201
        self.stall = {"true": 0.0, "false": 0.0}  # seconds before answering a startup / delta pull
        self._stalled = threading.Event()  # set at exit: stalled answers go at once
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.headers.get("x-api-key") != fake.KEY:
                    return self._send(403, b'{"message":"access forbidden"}')
                startup = "startup=true" in (self.path or "")
                fake._stalled.wait(fake.stall["true" if startup else "false"])  # a slow LAPI
                self._send(200, b'{"new": [], "deleted": []}')

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if self.headers.get("x-api-key") != fake.KEY:
                    return self._send(403, b'{"message":"access forbidden"}')
                if self.path != "/v1/usage-metrics":
                    return self._send(404)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                problem = usage_metrics_problem(body)
                if problem is not None:
                    return self._send(422, json.dumps({"message": problem}).encode())
                fake.user_agents.append(self.headers.get("user-agent", ""))
                if fake.metrics_status == 201:
                    fake.metrics.append(body)
                self._send(fake.metrics_status)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeLapi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stalled.set()
        self.server.shutdown()
        self.server.server_close()
