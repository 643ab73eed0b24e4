"""The CAPI simulator, exercised over real sockets with the stdlib's HTTP client."""

from __future__ import annotations

import email.utils
import http.client
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from capi_fast.signals import Signal
from capi_fast.storage import generate_credentials
from capi_fast.testing import CapiSimulator
from support import Clock


def call(sim: CapiSimulator, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 5):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(sim.url.rstrip("/") + path, data=data, method=method)
    req.add_header("User-Agent", "capi-fast-test/1.0")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def login(sim: CapiSimulator, v: str = "v3", scenarios: list[str] | None = None) -> tuple[str, str]:
    c = generate_credentials("test")
    assert call(sim, "POST", f"/{v}/watchers", {"machine_id": c.machine_id, "password": c.password})[0] == 200
    status, body, _ = call(
        sim,
        "POST",
        f"/{v}/watchers/login",
        {"machine_id": c.machine_id, "password": c.password, "scenarios": scenarios or ["a/b"]},
    )
    assert status == 200
    doc = json.loads(body)
    assert doc["code"] == 200 and doc["expire"].endswith("Z")
    return c.machine_id, doc["token"]


@pytest.fixture
def sim(clock: Clock):
    with CapiSimulator(clock=clock, token_lifetime=60) as s:
        yield s


def test_serves_on_loopback_random_port(sim):
    assert sim.url.startswith("http://127.0.0.1:") and sim.port > 0


def test_register_login_and_wrong_password(sim):
    mid, token = login(sim, scenarios=["mywaf/login-bruteforce"])
    assert sim.watchers[mid] == ["mywaf/login-bruteforce"]
    assert call(sim, "POST", "/v3/watchers/login", {"machine_id": mid, "password": "x" * 32})[0] == 403
    # A known machine_id is answered 500, whatever the password (what php-capi-client reports of CAPI).
    assert call(sim, "POST", "/v3/watchers", {"machine_id": mid, "password": "y" * 32})[0] == 500
    assert call(sim, "POST", "/v3/watchers", {"machine_id": "bad id!", "password": "y" * 32})[0] == 400


def test_token_expiry_and_revocation(sim, clock):
    _, token = login(sim)
    assert call(sim, "GET", "/v3/decisions/stream?startup=true", token=token)[0] == 200
    clock.now += 61
    assert call(sim, "GET", "/v3/decisions/stream", token=token)[0] == 401
    _, token = login(sim)
    sim.revoke_tokens()
    assert call(sim, "GET", "/v3/decisions/stream", token=token)[0] == 401
    assert call(sim, "GET", "/v3/decisions/stream", token="forged.token.here")[0] == 401
    assert call(sim, "GET", "/v3/decisions/stream")[0] == 401


def test_signals_schema_and_limit(sim):
    mid, token = login(sim)
    good = [Signal.decision("192.0.2.1", "mywaf/login-bruteforce").to_payload(mid) for _ in range(250)]
    assert call(sim, "POST", "/v3/signals", good, token)[0] == 200
    assert call(sim, "POST", "/v3/signals", good + good[:1], token)[0] == 400
    bad = {**good[0], "scenario": "Not Valid"}
    status, body, _ = call(sim, "POST", "/v3/signals", [good[0], bad], token)
    assert status == 400 and b"signal 1" in body
    assert len(sim.signals) == 250
    assert sim.signals[0]["uuid"] == good[0]["uuid"]


def test_stream_startup_then_deltas_v3(sim, clock):
    sim.add_decisions(["192.0.2.1", "198.51.100.0/24"], duration=3600)
    _, token = login(sim)
    doc = json.loads(call(sim, "GET", "/v3/decisions/stream?startup=true", token=token)[1])
    got = {d["value"]: (g["scope"], d["duration"]) for g in doc["new"] for d in g["decisions"]}
    assert got == {"192.0.2.1": ("ip", "1h0m0s"), "198.51.100.0/24": ("range", "1h0m0s")}
    assert doc["deleted"] == [] and doc["links"] == {"blocklists": [], "allowlists": []}
    clock.now += 30
    sim.add_decisions(["203.0.113.5"])
    sim.delete_decisions(["192.0.2.1"])
    doc = json.loads(call(sim, "GET", "/v3/decisions/stream", token=token)[1])
    assert [d["value"] for g in doc["new"] for d in g["decisions"]] == ["203.0.113.5"]
    assert doc["deleted"] == [{"scope": "ip", "decisions": ["192.0.2.1"]}]
    doc = json.loads(call(sim, "GET", "/v3/decisions/stream", token=token)[1])
    assert doc["new"] == [] and doc["deleted"] == [], "nothing changed since the last pull"


def test_stream_state_is_per_machine_and_v2_is_flat(sim):
    sim.add_decisions(["192.0.2.1"])
    _, t1 = login(sim, "v2")
    _, t2 = login(sim, "v2")
    first = json.loads(call(sim, "GET", "/v2/decisions/stream?startup=true", token=t1)[1])
    assert first["deleted"] is None
    assert first["new"][0] | {"duration": "x", "id": 0} == {
        "duration": "x",
        "id": 0,
        "origin": "CAPI",
        "scenario": "crowdsecurity/community-blocklist",
        "scope": "Ip",
        "type": "ban",
        "value": "192.0.2.1",
    }
    assert json.loads(call(sim, "GET", "/v2/decisions/stream", token=t1)[1]) == {"new": None, "deleted": None}
    # The second machine has not pulled yet: its first pull is a full startup.
    assert len(json.loads(call(sim, "GET", "/v2/decisions/stream", token=t2)[1])["new"]) == 1


def test_blocklists_links_and_if_modified_since(sim, clock):
    _, token = login(sim)
    url = sim.add_blocklist("tor-exit", ["192.0.2.7", "2001:db8::/64"], remediation="captcha", duration=3600)
    links = json.loads(call(sim, "GET", "/v3/decisions/stream?startup=true", token=token)[1])["links"]["blocklists"]
    assert [(b["name"], b["url"], b["remediation"], b["duration"]) for b in links] == [
        ("tor-exit", url, "captcha", "1h0m0s")
    ]
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.read().decode().split() == ["192.0.2.7", "2001:db8::/64"]
        modified = r.headers["Last-Modified"]
    req = urllib.request.Request(url, headers={"If-Modified-Since": modified})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 304
    clock.now += 10
    sim.add_blocklist("tor-exit", ["192.0.2.8"])
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.read() == b"192.0.2.8\n"
    sim.remove_blocklist("tor-exit")
    assert json.loads(call(sim, "GET", "/v3/decisions/stream", token=token)[1])["links"]["blocklists"] == []
    assert email.utils.parsedate_to_datetime(modified).timestamp() > 0


@pytest.mark.parametrize("status", [500, 503, 401])
def test_status_faults(sim, status):
    _, token = login(sim)
    sim.fail_next(2, status=status, path="/decisions/stream")
    assert call(sim, "POST", "/v3/metrics", {"bouncers": [], "machines": []}, token)[0] == 200, "other paths unaffected"
    assert [call(sim, "GET", "/v3/decisions/stream", token=token)[0] for _ in range(3)] == [status, status, 200]


def test_rate_limit_fault_sends_retry_after(sim):
    _, token = login(sim)
    sim.fail_next(status=429, retry_after=7)
    status, _, headers = call(sim, "GET", "/v3/decisions/stream", token=token)
    assert status == 429 and headers["Retry-After"] == "7"


def test_malformed_and_truncated_faults(sim):
    _, token = login(sim)
    sim.fail_next(kind="malformed")
    status, body, _ = call(sim, "GET", "/v3/decisions/stream", token=token)
    with pytest.raises(ValueError):
        json.loads(body)
    sim.fail_next(kind="truncated")
    with pytest.raises(http.client.IncompleteRead):
        call(sim, "GET", "/v3/decisions/stream", token=token)


def test_timeout_fault(sim):
    _, token = login(sim)
    sim.fail_next(kind="timeout", delay=5)
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        call(sim, "GET", "/v3/decisions/stream", token=token, timeout=0.3)
    assert call(sim, "GET", "/v3/decisions/stream", token=token)[0] == 200


def test_request_log_has_user_agent_and_no_secrets(sim):
    login(sim)
    log = sim.requests
    assert [r.path for r in log] == ["/v3/watchers", "/v3/watchers/login"]
    assert all(r.user_agent == "capi-fast-test/1.0" for r in log)
    assert "password" not in repr(log)


def test_enroll_and_unknown_paths(sim):
    _, token = login(sim)
    assert (
        call(
            sim,
            "POST",
            "/v3/watchers/enroll",
            {"attachment_key": "k", "name": "web-01", "overwrite": False, "tags": []},
            token,
        )[0]
        == 200
    )
    assert call(sim, "POST", "/v3/watchers/enroll", {"name": "x"}, token)[0] == 400
    assert call(sim, "GET", "/v4/nothing")[0] == 404


def test_runs_standalone():
    proc = subprocess.Popen(
        [sys.executable, "-m", "capi_fast.testing", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("CAPI simulator at http://127.0.0.1:")
        url = line.split(" at ")[1].strip()
        req = urllib.request.Request(
            url + "v3/watchers", data=b'{"machine_id": "abc", "password": "12345678"}', method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_cached_startup_answer_follows_changes_and_bare_tokens_are_accepted():
    clock = Clock()
    with CapiSimulator(clock=clock, token_lifetime=30 * 86400) as sim:
        sim.add_decisions(["192.0.2.1"])
        _, token = login(sim)

        def startup_values(bearer: bool = True) -> list[str]:
            req = urllib.request.Request(sim.url + "v3/decisions/stream?startup=true")
            req.add_header("Authorization", f"Bearer {token}" if bearer else token)
            with urllib.request.urlopen(req, timeout=5) as r:
                doc = json.loads(r.read())
            return sorted(d["value"] for g in doc["new"] for d in g["decisions"])

        assert startup_values() == ["192.0.2.1"]
        assert startup_values(bearer=False) == ["192.0.2.1"], "cscapi sends the bare token"
        sim.add_decisions(["192.0.2.2"])
        assert startup_values() == ["192.0.2.1", "192.0.2.2"]
        sim.delete_decisions(["192.0.2.1"])
        assert startup_values() == ["192.0.2.2"]
        clock.now += 8 * 86400
        assert startup_values() == [], "expired decisions leave the startup answer"
