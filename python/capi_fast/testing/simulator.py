"""``CapiSimulator``: a faithful stand-in for CrowdSec's Central API, over real HTTP on loopback.

It speaks the v2 and v3 watcher API (register, login with an HS256 JWT, enroll, signals,
decisions stream with per-machine startup/delta state, metrics, usage metrics) and serves
blocklist and allowlist downloads with Last-Modified / If-Modified-Since. It is as strict as the
real service's schema (CrowdSec's ``pkg/modelscapi/centralapi_swagger.yaml``): a payload the
real CAPI refuses is refused here with the same status, so tests catch a client that would send
one. Tests drive it through ``add_decisions``, ``delete_decisions``, ``add_blocklist``,
``add_allowlist``, ``revoke_tokens`` and ``fail_next`` (5xx, 429 with Retry-After, 401, timeouts,
malformed or truncated JSON), and read back ``signals``, ``metrics``, ``usage_metrics`` and
``requests``.

    with CapiSimulator() as sim:
        sim.add_decisions(["192.0.2.1", "198.51.100.0/24"])
        client = CapiClient(user_agent="test/1.0", base_url=sim.url, ...)
"""

from __future__ import annotations

import email.utils
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from typing import Any

import orjson

import capi_fast.testing.jwt as jwt
from capi_fast.client import ATTACHMENT_KEY_RE
from capi_fast.metrics import metrics_problem
from capi_fast.signals import format_duration, rfc3339
from capi_fast.testing.http_handler import Handler as _Handler
from capi_fast.testing.records import (
    MACHINE_ID,
    ROUTE,
    Fault,
    Logged,
    _Allowlist,
    _Blocklist,
    _Decision,
    _scope,
    _Watcher,
)
from capi_fast.testing.schema import login_problem, signal_problem, usage_metrics_problem

__all__ = ["CapiSimulator", "Fault", "Logged"]


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
        # value -> scenario -> decision: CAPI may hold one value under several scenarios.
        self._decisions: dict[str, dict[str, _Decision]] = {}
        self._events: list[tuple[int, str, str]] = []  # (seq, "add"|"del", value)
        self._seq = 0
        self._mutations = 0  # any change of decisions or blocklists
        # The last startup answer, kept while nothing changed (CAPI serves startup pulls from a cache too).
        self._startup_key: tuple[str, int, float, tuple[bool, bool]] | None = None
        self._startup_doc: dict[str, Any] | None = None
        self._startup_body: bytes | None = None
        self._next_id = 1
        self._blocklists: dict[str, _Blocklist] = {}
        self._allowlists: dict[str, _Allowlist] = {}
        self._revoked_status = 401
        self._faults: list[Fault] = []
        self._signals: list[dict[str, Any]] = []
        self._requests: list[Logged] = []
        self.metrics: list[dict[str, Any]] = []
        self.usage_metrics: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> CapiSimulator:
        """Starts serving in a background thread.

        A stopped simulator starts again on the same port with everything it held (machines,
        decisions, signals): ``stop`` then ``start`` is an outage.
        """
        sim = self

        class Handler(_Handler):
            simulator = sim

        self._stopping.clear()
        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._port = int(self._server.server_address[1])
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
        """Adds community decisions (they reach each machine's next stream pull).

        A value already held under another scenario keeps both decisions (the v3 stream then
        lists it in two groups, as CAPI does).
        """
        with self._lock:
            self._mutations += 1
            now = self.clock()
            for v in values:
                self._seq += 1
                self._decisions.setdefault(v, {})[scenario] = _Decision(
                    v, scenario, _scope(v), remediation, origin, now + duration, self._next_id
                )
                self._next_id += 1
                self._events.append((self._seq, "add", v))

    def delete_decisions(self, values: Iterable[str]) -> None:
        """Deletes every community decision on these values (reported as ``deleted`` on the next delta pull)."""
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
        duration: float | None = 86400,
        scope: str | None = "ip",
        redirect: bool | str = False,
    ) -> str:
        """Adds (or replaces) a subscribed blocklist; returns its download URL.

        ``scope`` or ``duration`` None leaves the field out of the link (a link crowdsec skips);
        with ``redirect`` the link's URL answers 302 to the list (``"loop"``: to itself, forever).
        """
        with self._lock:
            self._mutations += 1
            bid = re.sub(r"[^A-Za-z0-9_-]", "-", name)
            self._blocklists[bid] = _Blocklist(
                bid, name, list(values), remediation, duration, scope, self.clock(), redirect
            )
            return f"{self.url}blocklists/{bid}/download"

    def remove_blocklist(self, name: str) -> None:
        """Unsubscribes a blocklist: it disappears from the stream's links."""
        with self._lock:
            self._mutations += 1
            self._blocklists = {k: b for k, b in self._blocklists.items() if b.name != name}

    def add_allowlist(
        self,
        name: str,
        values: Iterable[str],
        *,
        expiration: float | None = None,
        scope: str | None = None,
        id: str | None = None,  # noqa: A002 - the link's field
    ) -> str:
        """Adds (or replaces) an allowlist the machine sees in ``links.allowlists``; returns its URL.

        Each value becomes one JSON line ``{"value", "scope"?, "expiration"?}``: ``expiration``
        is a Unix time (None: no expiration), ``scope`` ``ip`` or ``range`` (None: left out, as
        the line's own value then decides).
        """
        with self._lock:
            self._mutations += 1
            aid = re.sub(r"[^A-Za-z0-9_-]", "-", id if id is not None else "al-" + name)
            entries = []
            for v in values:
                entry: dict[str, Any] = {"value": v}
                if scope is not None:
                    entry["scope"] = scope
                if expiration is not None:
                    entry["expiration"] = rfc3339(expiration)
                entries.append(entry)
            self._allowlists[aid] = _Allowlist(aid, name, entries, self.clock())
            return f"{self.url}allowlists/{aid}/download"

    def remove_allowlist(self, name: str, id: str | None = None) -> None:  # noqa: A002
        """Unsubscribes the allowlists called ``name`` (only the one of that ``id`` if given)."""
        with self._lock:
            self._mutations += 1
            self._allowlists = {
                k: a for k, a in self._allowlists.items() if a.name != name or (id is not None and a.id != id)
            }

    def fail_next(self, n: int = 1, **fault: Any) -> None:
        """Makes the next ``n`` matching calls misbehave as ``Fault(**fault)`` says."""
        with self._lock:
            self._faults.extend(Fault(**fault) for _ in range(n))

    def revoke_tokens(self, status: int = 401) -> None:
        """Invalidates every token issued so far: the next authenticated call gets ``status`` (401 or 403)."""
        if status not in (401, 403):
            raise ValueError("a refused token is answered 401 or 403")
        with self._lock:
            self._generation += 1
            self._revoked_status = status

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
    def enrollments(self) -> dict[str, dict[str, Any]]:
        """The last enroll body of each enrolled machine (with the organization it joined)."""
        with self._lock:
            return {m: dict(w.enrolled) for m, w in self._watchers.items() if w.enrolled is not None}

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

    def _authorize(self, header: str | None) -> tuple[str | None, int]:
        """(machine, 0) for a valid token, else (None, the status to answer)."""
        # crowdsec sends "Bearer <jwt>"; the vendor's Python SDK (cscapi) sends the bare token.
        if not header:
            return None, 401
        claims = jwt.decode(header.removeprefix("Bearer "), self._secret)
        if not claims or float(claims.get("exp", 0)) <= self.clock():
            return None, 401
        if claims.get("gen") != self._generation:
            return None, self._revoked_status
        mid = claims.get("id")
        return (mid, 0) if isinstance(mid, str) and mid in self._watchers else (None, 401)

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
            machine, refused = self._authorize(auth)
            if machine is None:
                return refused, {"code": refused, "message": "token expired or invalid"}
            if call == "watchers/enroll" and method == "POST":
                return self._enroll(machine, body)
            if call == "signals" and method == "POST":
                return self._add_signals(machine, body)
            if call == "decisions/stream" and method == "GET":
                pulls = (_flag(query, "community_pull", True), _flag(query, "additional_pull", True))
                return 200, self._stream(machine, version, _flag(query, "startup", False), pulls)
            if call == "metrics" and method == "POST":
                problem = metrics_problem(body)
                if problem is not None:
                    return 400, {"message": f"Invalid request body: {problem}"}
                self.metrics.append(body)
                return 200, {"message": "OK"}
            if call == "usage-metrics" and method == "POST" and version == "v3":
                problem = usage_metrics_problem(body)
                if problem is not None:
                    # crowdsec counts a 422 as delivered: CAPI's answer to a body it will not store.
                    return 422, {"message": f"Invalid request body: {problem}"}
                self.usage_metrics.append(body)
                return 200, {"message": "OK"}
        return 405, {"message": "method not allowed"}

    def _register(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, {"message": "Invalid request body: a JSON object is required"}
        mid, pw = body.get("machine_id"), body.get("password")
        if not isinstance(mid, str) or not MACHINE_ID.fullmatch(mid):
            return 400, {"message": "Invalid request body: machine_id must be letters and digits"}
        if not isinstance(pw, str):
            return 400, {"message": "Invalid request body: password is required"}
        if mid in self._watchers:
            # What the real CAPI answers for a machine_id it already holds (php-capi-client
            # regenerates its credentials on it), whatever the password.
            return 500, {"message": "machine_id already registered"}
        self._watchers[mid] = _Watcher(password=pw)
        return 200, {"message": "OK"}

    def _login(self, body: Any) -> tuple[int, Any]:
        problem = login_problem(body)
        if problem is not None:
            return 400, {"message": f"Invalid request body: {problem}"}
        w = self._watchers.get(body["machine_id"])
        if w is None or not secrets.compare_digest(body["password"], w.password):
            return 403, {"code": 403, "message": "incorrect Username or Password"}
        w.scenarios = list(body.get("scenarios") or [])
        now = self.clock()
        exp = now + self.token_lifetime
        claims: dict[str, Any] = {
            "id": body["machine_id"],
            "exp": int(exp),
            "orig_iat": int(now),
            "gen": self._generation,
        }
        if w.enrolled is not None:
            claims["organization_id"] = w.enrolled["organization_id"]
            claims["subscription_type"] = "COMMUNITY"
        token = jwt.encode(claims, self._secret)
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(exp)))
        return 200, {"code": 200, "expire": expire, "token": token}

    def _enroll(self, machine: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, {"message": "Invalid request body: a JSON object is required"}
        if body.get("autoenroll") is True and "attachment_key" not in body:
            body = {**body, "attachment_key": "autoenroll"}  # crowdsec's auto-enroll omits the key
        if not isinstance(body.get("attachment_key"), str):
            return 400, {"message": "Invalid request body: attachment_key is required"}
        if not ATTACHMENT_KEY_RE.fullmatch(body["attachment_key"]):
            return 400, {"message": "Invalid request body: attachment_key must be letters and digits"}
        if "name" in body and not isinstance(body["name"], str):
            return 400, {"message": "Invalid request body: name must be a string"}
        if "overwrite" in body and not isinstance(body["overwrite"], bool):
            return 400, {"message": "Invalid request body: overwrite must be a boolean"}
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return 400, {"message": "Invalid request body: tags must be a list of strings"}
        w = self._watchers[machine]
        org = (w.enrolled or {}).get("organization_id") or "org-" + body["attachment_key"][:12]
        w.enrolled = {**body, "organization_id": org}
        return 200, {"message": "OK"}

    def _add_signals(self, machine: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, list):
            return 400, {"message": "a JSON array of signals is required"}
        if len(body) > self.max_signals:
            return 400, {"message": f"at most {self.max_signals} signals per call, got {len(body)}"}
        for i, s in enumerate(body):
            problem = signal_problem(s)
            if problem:
                return 400, {"message": f"Invalid request body: signal {i}: {problem}"}
        self._signals.extend(body)
        return 200, {"message": "OK"}

    def _stream(self, machine: str, version: str, startup: bool, pulls: tuple[bool, bool]) -> dict[str, Any]:
        """``pulls``: (community_pull, additional_pull), the v3 flags crowdsec may turn off."""
        w = self._watchers[machine]
        now = self.clock()
        full = startup or w.seen_seq is None
        key = (version, self._mutations, now, pulls)
        if full and self._startup_key == key and self._startup_doc is not None:
            w.seen_seq = self._seq
            return self._startup_doc
        doc = self._render(w, version, now, None if full else w.seen_seq)
        if version == "v3" and not pulls[0]:
            doc = {**doc, "new": [], "deleted": []}
        if version == "v3" and not pulls[1]:
            doc = {**doc, "links": {"blocklists": [], "allowlists": []}}
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
            new = [d for held in self._decisions.values() for d in held.values() if d.expires > now]
            deleted: list[str] = []
        else:
            changed: dict[str, str] = {}
            for seq, kind, value in self._events:
                if seq > since:
                    changed[value] = kind
            new = [
                d
                for v, k in changed.items()
                if k == "add" and v in self._decisions
                for d in self._decisions[v].values()
                if d.expires > now
            ]
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
                "blocklists": [self._blocklist_link(b) for b in self._blocklists.values()],
                "allowlists": [
                    {
                        "id": a.id,
                        "name": a.name,
                        "description": f"allowlist {a.name}",
                        "url": f"{self.url}allowlists/{a.id}/download",
                        "created_at": rfc3339(a.modified),
                        "updated_at": rfc3339(a.modified),
                    }
                    for a in self._allowlists.values()
                ],
            },
        }

    def _blocklist_link(self, b: _Blocklist) -> dict[str, Any]:
        """A ``BlocklistLink``: name, url, remediation, scope, duration (CAPI gives no id)."""
        link: dict[str, Any] = {
            "name": b.name,
            "url": f"{self.url}{_redirect_prefix(b.redirect)}blocklists/{b.id}/download",
            "remediation": b.remediation,
        }
        if b.scope is not None:
            link["scope"] = b.scope
        if b.duration is not None:
            link["duration"] = format_duration(b.duration)
        return link

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

    def list_download(self, kind: str, lid: str, if_modified_since: str | None) -> tuple[int, bytes, float | None]:
        """A blocklist (one value a line) or allowlist (JSON lines) download: (status, body, last modified)."""
        with self._lock:
            found = (self._blocklists if kind == "blocklists" else self._allowlists).get(lid)
            if found is None:
                return 404, b"", None
            if if_modified_since:
                try:
                    since = email.utils.parsedate_to_datetime(if_modified_since).timestamp()
                except (TypeError, ValueError):
                    since = None
                if since is not None and int(found.modified) <= since:
                    return 304, b"", found.modified
            if isinstance(found, _Blocklist):
                return 200, ("\n".join(found.values) + "\n").encode(), found.modified
            return 200, b"".join(orjson.dumps(e) + b"\n" for e in found.entries), found.modified


def _redirect_prefix(redirect: bool | str) -> str:
    return "loop/" if redirect == "loop" else "redirect/" if redirect else ""


def _flag(query: dict[str, list[str]], name: str, default: bool) -> bool:
    values = query.get(name)
    return values[0] == "true" if values else default
