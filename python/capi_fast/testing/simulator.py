"""``CapiSimulator``: a faithful stand-in for CrowdSec's Central API, over real HTTP on loopback.

It speaks the v2 and v3 watcher API (register, login with an HS256 JWT, enroll, signals,
decisions stream with per-machine startup/delta state, metrics) and serves blocklist downloads
with Last-Modified / If-Modified-Since. Tests drive it through ``add_decisions``,
``delete_decisions``, ``add_blocklist`` and ``fail_next`` (5xx, 429 with Retry-After, 401,
timeouts, malformed or truncated JSON), and read back ``signals`` and ``requests``.

    with CapiSimulator() as sim:
        sim.add_decisions(["192.0.2.1", "198.51.100.0/24"])
        client = CapiClient(user_agent="test/1.0", base_url=sim.url, ...)
"""

from __future__ import annotations

import email.utils
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from capi_fast.signals import SCENARIO_RE, format_duration
from capi_fast.testing import jwt

__all__ = ["CapiSimulator", "Fault", "Logged"]

MAX_BODY = 16 << 20
ROUTE = re.compile(r"^/(v2|v3)/(watchers/login|watchers/enroll|watchers|signals|decisions/stream|metrics)/?$")
BLOCKLIST = re.compile(r"^/blocklists/([A-Za-z0-9_-]+)/download$")


@dataclass(frozen=True)
class Fault:
    """How the simulator misbehaves on one coming call.

    Attributes:
        kind: ``status`` (answer ``status``), ``timeout`` (answer nothing for ``delay`` seconds,
            then drop the connection), ``malformed`` (200 with a body that is not JSON) or
            ``truncated`` (200 whose body stops before its Content-Length).
        status: the HTTP status of a ``status`` fault (500, 503, 429, 401...).
        retry_after: the Retry-After header sent with it, in seconds.
        path: only calls whose path contains this text are affected.
        delay: how long a ``timeout`` fault stalls.
    """

    kind: str = "status"
    status: int = 500
    retry_after: float | None = None
    path: str | None = None
    delay: float = 10.0


@dataclass(frozen=True)
class Logged:
    """One request the simulator received."""

    method: str
    path: str
    status: int
    user_agent: str
    authorized: bool


@dataclass
class _Decision:
    value: str
    scenario: str
    scope: str
    type: str
    origin: str
    expires: float
    id: int


@dataclass
class _Blocklist:
    id: str
    name: str
    values: list[str]
    remediation: str
    duration: float
    scope: str
    modified: float


@dataclass
class _Watcher:
    password: str
    scenarios: list[str] = field(default_factory=list)
    enrolled: dict[str, Any] | None = None
    seen_seq: int | None = None  # stream position; None until the startup pull


def _scope(value: str) -> str:
    return "range" if "/" in value else "ip"


class CapiSimulator:
    """A CAPI served over HTTP on ``host`` (a free port unless ``port`` is given).

    Args:
        host: loopback address to bind.
        port: port to bind; 0 picks a free one.
        token_lifetime: seconds a login token lives.
        clock: the simulator's notion of now (Unix seconds); tests pass a controllable one.
        max_signals: most signals accepted in one call.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
        max_signals: int = 250,
    ) -> None:
        self._host, self._port = host, port
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.max_signals = max_signals
        self._secret = secrets.token_bytes(32)
        self._generation = 0
        self._lock = threading.RLock()
        self._watchers: dict[str, _Watcher] = {}
        self._decisions: dict[str, _Decision] = {}
        self._events: list[tuple[int, str, str]] = []  # (seq, "add"|"del", value)
        self._seq = 0
        self._mutations = 0  # any change of decisions or blocklists
        # The last startup answer, kept while nothing changed (CAPI serves startup pulls from a cache too).
        self._startup_key: tuple[str, int, float] | None = None
        self._startup_doc: dict[str, Any] | None = None
        self._startup_body: bytes | None = None
        self._next_id = 1
        self._blocklists: dict[str, _Blocklist] = {}
        self._faults: list[Fault] = []
        self._signals: list[dict[str, Any]] = []
        self._requests: list[Logged] = []
        self.metrics: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> CapiSimulator:
        """Starts serving in a background thread."""
        sim = self

        class Handler(_Handler):
            simulator = sim

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        server = self._server
        # A short poll interval makes stop() quick (tests start and stop many simulators).
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name="capi-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving; stalled ``timeout`` faults are released."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> CapiSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port served."""
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL to give a client (``http://127.0.0.1:PORT/``)."""
        return f"http://{self._host}:{self.port}/"

    # -- control from tests --------------------------------------------------------------------

    def add_decisions(
        self,
        values: Iterable[str],
        *,
        scenario: str = "crowdsecurity/community-blocklist",
        remediation: str = "ban",
        duration: float = 7 * 86400,
        origin: str = "CAPI",
    ) -> None:
        """Adds community decisions (they reach each machine's next stream pull)."""
        with self._lock:
            self._mutations += 1
            now = self.clock()
            for v in values:
                self._seq += 1
                self._decisions[v] = _Decision(
                    v, scenario, _scope(v), remediation, origin, now + duration, self._next_id
                )
                self._next_id += 1
                self._events.append((self._seq, "add", v))

    def delete_decisions(self, values: Iterable[str]) -> None:
        """Deletes community decisions (reported as ``deleted`` on the next delta pull)."""
        with self._lock:
            self._mutations += 1
            for v in values:
                if self._decisions.pop(v, None) is not None:
                    self._seq += 1
                    self._events.append((self._seq, "del", v))

    def add_blocklist(
        self,
        name: str,
        values: Iterable[str],
        *,
        remediation: str = "ban",
        duration: float = 86400,
        scope: str = "ip",
    ) -> str:
        """Adds (or replaces) a subscribed blocklist; returns its download URL."""
        with self._lock:
            self._mutations += 1
            bid = re.sub(r"[^A-Za-z0-9_-]", "-", name)
            self._blocklists[bid] = _Blocklist(bid, name, list(values), remediation, duration, scope, self.clock())
            return f"{self.url}blocklists/{bid}/download"

    def remove_blocklist(self, name: str) -> None:
        """Unsubscribes a blocklist: it disappears from the stream's links."""
        with self._lock:
            self._mutations += 1
            self._blocklists = {k: b for k, b in self._blocklists.items() if b.name != name}

    def fail_next(self, n: int = 1, **fault: Any) -> None:
        """Makes the next ``n`` matching calls misbehave as ``Fault(**fault)`` says."""
        with self._lock:
            self._faults.extend(Fault(**fault) for _ in range(n))

    def revoke_tokens(self) -> None:
        """Invalidates every token issued so far: the next authenticated call gets 401."""
        with self._lock:
            self._generation += 1

    @property
    def signals(self) -> list[dict[str, Any]]:
        """Every signal accepted, in arrival order."""
        with self._lock:
            return list(self._signals)

    @property
    def requests(self) -> list[Logged]:
        """Every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def watchers(self) -> dict[str, list[str]]:
        """Registered machine ids and the scenario list of their last login."""
        with self._lock:
            return {m: list(w.scenarios) for m, w in self._watchers.items()}

    # -- protocol ------------------------------------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, f in enumerate(self._faults):
                if f.path is None or f.path in path:
                    return self._faults.pop(i)
        return None

    def _authorize(self, header: str | None) -> str | None:
        # crowdsec sends "Bearer <jwt>"; the vendor's Python SDK (cscapi) sends the bare token.
        if not header:
            return None
        claims = jwt.decode(header.removeprefix("Bearer "), self._secret)
        if not claims or claims.get("gen") != self._generation or float(claims.get("exp", 0)) <= self.clock():
            return None
        mid = claims.get("id")
        return mid if isinstance(mid, str) and mid in self._watchers else None

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, auth: str | None
    ) -> tuple[int, Any]:
        """Answers one API call: (status, JSON-able body)."""
        m = ROUTE.match(path)
        if not m:
            return 404, {"message": "not found"}
        version, call = m.groups()
        with self._lock:
            if call == "watchers" and method == "POST":
                return self._register(body)
            if call == "watchers/login" and method == "POST":
                return self._login(body)
            machine = self._authorize(auth)
            if machine is None:
                return 401, {"code": 401, "message": "token expired or invalid"}
            if call == "watchers/enroll" and method == "POST":
                if not isinstance(body, dict) or not isinstance(body.get("attachment_key"), str):
                    return 400, {"message": "attachment_key is required"}
                self._watchers[machine].enrolled = body
                return 200, {}
            if call == "signals" and method == "POST":
                return self._add_signals(machine, body)
            if call == "decisions/stream" and method == "GET":
                startup = query.get("startup", ["false"])[0] == "true"
                return 200, self._stream(machine, version, startup)
            if call == "metrics" and method == "POST":
                self.metrics.append(body if isinstance(body, dict) else {"body": body})
                return 200, {}
        return 405, {"message": "method not allowed"}

    def _register(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, {"message": "a JSON object is required"}
        mid, pw = body.get("machine_id"), body.get("password")
        if not isinstance(mid, str) or not re.fullmatch(r"[A-Za-z0-9]{1,64}", mid):
            return 400, {"message": "machine_id must be 1 to 64 letters or digits"}
        if not isinstance(pw, str) or len(pw) < 8:
            return 400, {"message": "password must be at least 8 characters"}
        known = self._watchers.get(mid)
        if known is not None and known.password != pw:
            return 403, {"message": "machine_id already registered with another password"}
        self._watchers.setdefault(mid, _Watcher(password=pw))
        return 200, {"message": "OK"}

    def _login(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, {"message": "a JSON object is required"}
        w = self._watchers.get(str(body.get("machine_id")))
        if w is None or not secrets.compare_digest(str(body.get("password", "")), w.password):
            return 403, {"code": 403, "message": "incorrect Username or Password"}
        scenarios = body.get("scenarios") or []
        if not isinstance(scenarios, list) or not all(isinstance(s, str) for s in scenarios):
            return 400, {"message": "scenarios must be a list of str"}
        w.scenarios = scenarios
        now = self.clock()
        exp = now + self.token_lifetime
        token = jwt.encode(
            {"id": body["machine_id"], "exp": int(exp), "orig_iat": int(now), "gen": self._generation}, self._secret
        )
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(exp)))
        return 200, {"code": 200, "expire": expire, "token": token}

    def _add_signals(self, machine: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, list):
            return 400, {"message": "a JSON array of signals is required"}
        if len(body) > self.max_signals:
            return 400, {"message": f"at most {self.max_signals} signals per call, got {len(body)}"}
        for i, s in enumerate(body):
            problem = _signal_problem(s)
            if problem:
                return 400, {"message": f"signal {i}: {problem}"}
        self._signals.extend(body)
        return 200, {"message": "OK"}

    def _stream(self, machine: str, version: str, startup: bool) -> dict[str, Any]:
        w = self._watchers[machine]
        now = self.clock()
        full = startup or w.seen_seq is None
        key = (version, self._mutations, now)
        if full and self._startup_key == key and self._startup_doc is not None:
            w.seen_seq = self._seq
            return self._startup_doc
        doc = self._render(w, version, now, None if full else w.seen_seq)
        if full:
            self._startup_key, self._startup_doc, self._startup_body = key, doc, None
        return doc

    def encode(self, answer: Any) -> bytes:
        """The JSON body of an answer (the cached startup answer is encoded once)."""
        with self._lock:
            if answer is not None and answer is self._startup_doc:
                if self._startup_body is None:
                    self._startup_body = orjson.dumps(answer)
                return self._startup_body
        return orjson.dumps(answer)

    def _render(self, w: _Watcher, version: str, now: float, since: int | None) -> dict[str, Any]:
        """The stream answer: everything (``since`` None) or the changes after event ``since``."""
        if since is None:
            new = [d for d in self._decisions.values() if d.expires > now]
            deleted: list[str] = []
        else:
            changed: dict[str, str] = {}
            for seq, kind, value in self._events:
                if seq > since:
                    changed[value] = kind
            new = [self._decisions[v] for v, k in changed.items() if k == "add" and v in self._decisions]
            new = [d for d in new if d.expires > now]
            deleted = [v for v, k in changed.items() if k == "del"]
        w.seen_seq = self._seq
        if version == "v2":
            return {
                "new": [self._flat(d, now) for d in new] or None,
                "deleted": [
                    {
                        "duration": "0s",
                        "id": 0,
                        "origin": "CAPI",
                        "scenario": "deleted",
                        "scope": _scope(v),
                        "type": "ban",
                        "value": v,
                    }
                    for v in deleted
                ]
                or None,
            }
        groups: dict[tuple[str, str], list[dict[str, str]]] = {}
        for d in new:
            groups.setdefault((d.scenario, d.scope), []).append(
                {"value": d.value, "duration": format_duration(max(d.expires - now, 0.001))}
            )
        gone: dict[str, list[str]] = {}
        for v in deleted:
            gone.setdefault(_scope(v), []).append(v)
        return {
            "new": [{"scenario": s, "scope": sc, "decisions": ds} for (s, sc), ds in groups.items()],
            "deleted": [{"scope": sc, "decisions": vs} for sc, vs in gone.items()],
            "links": {
                "blocklists": [
                    {
                        "id": b.id,
                        "name": b.name,
                        "url": f"{self.url}blocklists/{b.id}/download",
                        "remediation": b.remediation,
                        "scope": b.scope,
                        "duration": format_duration(b.duration),
                    }
                    for b in self._blocklists.values()
                ]
            },
        }

    def _flat(self, d: _Decision, now: float) -> dict[str, Any]:
        return {
            "duration": format_duration(max(d.expires - now, 0.001)),
            "id": d.id,
            "origin": d.origin,
            "scenario": d.scenario,
            "scope": "Range" if d.scope == "range" else "Ip",
            "type": d.type,
            "value": d.value,
        }

    def blocklist(self, bid: str, if_modified_since: str | None) -> tuple[int, bytes, float | None]:
        """A blocklist download: (status, body, last modified)."""
        with self._lock:
            b = self._blocklists.get(bid)
            if b is None:
                return 404, b"", None
            if if_modified_since:
                try:
                    since = email.utils.parsedate_to_datetime(if_modified_since).timestamp()
                except (TypeError, ValueError):
                    since = None
                if since is not None and int(b.modified) <= since:
                    return 304, b"", b.modified
            return 200, ("\n".join(b.values) + "\n").encode(), b.modified


def _signal_problem(s: Any) -> str | None:
    if not isinstance(s, dict):
        return "not an object"
    scenario = s.get("scenario")
    if not isinstance(scenario, str) or not (SCENARIO_RE.fullmatch(scenario) or scenario.startswith("crowdsecurity/")):
        return f"scenario {scenario!r} does not match {SCENARIO_RE.pattern}"
    source = s.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("value") or source.get("ip"), str):
        return "source.value is required"
    for k in ("start_at", "stop_at"):
        if not isinstance(s.get(k), str):
            return f"{k} is required"
    return None


class _Handler(BaseHTTPRequestHandler):
    simulator: CapiSimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silent: requests are in ``simulator.requests``, and bodies may hold passwords."""

    def _log(self, status: int, authorized: bool) -> None:
        with self.simulator._lock:
            self.simulator._requests.append(
                Logged(self.command, urlsplit(self.path).path, status, self.headers.get("User-Agent", ""), authorized)
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
        b = BLOCKLIST.match(parts.path)
        if b and self.command == "GET":
            status, content, modified = sim.blocklist(b.group(1), self.headers.get("If-Modified-Since"))
            headers = {"Content-Type": "text/plain"}
            if modified is not None:
                headers["Last-Modified"] = email.utils.formatdate(modified, usegmt=True)
            self._log(status, False)
            self._send(status, content, headers)
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
        self._log(status, status != 401)
        self._send(status, sim.encode(answer), {"Content-Type": "application/json"})

    do_GET = _serve  # noqa: N815
    do_POST = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815
