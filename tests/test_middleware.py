"""The ASGI and WSGI middleware under real servers: uvicorn (Starlette, FastAPI), gunicorn (Flask),
waitress (Django's WSGI handler), reached over real HTTP on loopback.

Every request comes from 127.0.0.1. Where a test needs other clients, 127.0.0.1 is a trusted
proxy and the address travels in the forwarding header, as behind a real reverse proxy.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from capi_fast import RemediationEngine
from capi_fast.asgi import BouncerMiddleware as AsgiBouncer
from capi_fast.captcha import COOKIE_NAME, Captcha
from capi_fast.errors import ConfigurationError
from capi_fast.wsgi import BouncerMiddleware as WsgiBouncer
from servers import TESTS, FakeVerify, gunicorn_serving, uvicorn_serving, waitress_serving
from support import Clock

BANNED = "192.0.2.66"
CAPTCHA_IP = "198.51.100.7"
CLEAN = "203.0.113.50"


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello {request.url.path} {request.url.query}")


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("welcome")
    await websocket.close()


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", _hello),
            Route("/page", _hello, methods=["GET", "POST"]),
            Route("/healthz", _hello),
            WebSocketRoute("/ws", _ws),
        ]
    )


def flask_hello() -> Any:
    from flask import Flask

    flask = Flask("hello")

    @flask.route("/", methods=["GET", "POST"])
    @flask.route("/page", methods=["GET", "POST"])
    def hello() -> str:
        return "hello from flask"

    return flask.wsgi_app


def engine_with_decisions() -> RemediationEngine:
    engine = RemediationEngine(None)
    engine.index.add(BANNED, "ban", origin="CAPI")
    engine.index.add("198.51.100.0/24", "captcha", origin="lists:tor-exit")
    return engine


@pytest.fixture
def engine() -> RemediationEngine:
    return engine_with_decisions()


def get(url: str, ip: str | None = None, **kw: object) -> httpx.Response:
    headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
    if ip is not None:
        headers["x-forwarded-for"] = ip
    return httpx.get(url, headers=headers, timeout=10, **kw)  # type: ignore[arg-type]


# -- ASGI under uvicorn -------------------------------------------------------------------------


def test_asgi_under_uvicorn_bans_and_lets_clean_clients_through(engine):
    app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"])
    with uvicorn_serving(app) as url:
        r = get(url + "/?a=1", CLEAN)
        assert r.status_code == 200 and r.text == "hello / a=1"
        r = get(url + "/", BANNED)
        assert r.status_code == 403
        assert r.headers["content-type"].startswith("text/html") and "Access denied" in r.text
        assert BANNED in r.text and r.headers["cache-control"] == "no-store"
        r = get(url + "/", BANNED, headers={"accept": "application/json"})
        assert r.status_code == 403 and r.json() == {"error": "forbidden", "remediation": "ban"}
        # No captcha configured: a captcha decision is served as a ban, never let through.
        assert get(url + "/", CAPTCHA_IP).status_code == 403
    counts = engine.counters
    assert counts[("CAPI", "ban")] == 2 and counts[("clean", "bypass")] == 1
    assert counts[("lists:tor-exit", "captcha")] == 1


def test_fastapi_app_is_protected_the_same_way(engine):
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/items/{n}")
    def item(n: int) -> dict[str, int]:
        return {"n": n}

    app = AsgiBouncer(api, engine, trusted_proxies=["127.0.0.1"])
    with uvicorn_serving(app) as url:
        assert get(url + "/items/3", CLEAN).json() == {"n": 3}
        r = get(url + "/items/3", BANNED, headers={"accept": "application/json"})
        assert r.status_code == 403 and r.json()["remediation"] == "ban"


def test_spoofed_forwarding_headers_are_ignored(engine):
    # 127.0.0.1 is not a trusted proxy here: what it writes in X-Forwarded-For is not believed.
    app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["10.0.0.0/8"])
    engine.index.add("127.0.0.1", "ban", origin="CAPI")
    with uvicorn_serving(app) as url:
        assert get(url + "/", CLEAN).status_code == 403, "a clean address in the header hides nothing"
    engine.index.remove("127.0.0.1")
    with uvicorn_serving(app) as url:
        assert get(url + "/", BANNED).status_code == 200, "a banned address in the header is not believed"


def test_forwarding_chain_stops_at_its_first_untrusted_hop(engine):
    app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    with uvicorn_serving(app) as url:
        # The client wrote "BANNED" itself; CLEAN connected to the trusted proxy: CLEAN is the client.
        assert get(url + "/", f"{BANNED}, {CLEAN}").status_code == 200
        # A banned client behind two trusted hops is found.
        assert get(url + "/", f"{CLEAN}, {BANNED}, 10.1.2.3").status_code == 403
        # A chain with a hole is not trusted: the peer (127.0.0.1, clean) answers.
        assert get(url + "/", f"{BANNED}, not-an-ip").status_code == 200
        # Several header lines are one list, in order.
        r = httpx.get(url + "/", headers=[("x-forwarded-for", CLEAN), ("x-forwarded-for", BANNED)], timeout=10)
        assert r.status_code == 403


def test_rfc7239_forwarded_header_when_configured(engine):
    app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"], proxy_header="forwarded")
    with uvicorn_serving(app) as url:
        assert get(url + "/", headers={"forwarded": f'for="{BANNED}:4711";proto=https'}).status_code == 403
        assert get(url + "/", headers={"forwarded": f"for={CLEAN}"}).status_code == 200
        # The other header is not read when Forwarded is the configured one.
        assert get(url + "/", BANNED).status_code == 200


def test_excluded_paths_and_addresses_are_let_through_uncounted(engine):
    app = AsgiBouncer(
        starlette_app(),
        engine,
        trusted_proxies=["127.0.0.1"],
        exclude_paths=["/healthz", "/static/"],
        exclude_addresses=["192.0.2.64/30"],
    )
    engine.index.add("192.0.2.99", "ban", origin="CAPI")
    with uvicorn_serving(app) as url:
        assert get(url + "/healthz", "192.0.2.99").status_code == 200
        assert get(url + "/healthz/x", "192.0.2.99").status_code == 403, "an exact path excludes only itself"
        assert get(url + "/static/app.css", "192.0.2.99").status_code == 404, "the app answers"
        assert get(url + "/", BANNED).status_code == 200, "BANNED is in an excluded network"
    assert engine.counters == {("CAPI", "ban"): 1}


def test_banned_websocket_is_refused_at_the_handshake(engine):
    app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"])

    def handshake(url: str, ip: str) -> str:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                (
                    f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    f"X-Forwarded-For: {ip}\r\n\r\n"
                ).encode()
            )
            return s.recv(4096).split(b"\r\n", 1)[0].decode()

    with uvicorn_serving(app) as url:
        assert " 101 " in handshake(url, CLEAN)
        assert " 403 " in handshake(url, BANNED)


def test_unix_socket_without_unix_trusted_fails_closed(engine, tmp_path):
    # nginx -> uvicorn over a unix socket: there is no peer address. Unless "unix" is trusted,
    # the header is not read and the request has no client: it is refused, never let through.
    for trusted, ip, status in (
        (["127.0.0.1"], CLEAN, 403),
        (["unix"], CLEAN, 200),
        (["unix"], BANNED, 403),
        (["unix"], None, 403),
    ):
        app = AsgiBouncer(starlette_app(), engine, trusted_proxies=trusted)
        sock = str(tmp_path / "app.sock")
        with uvicorn_serving(app, uds=sock):
            with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=10) as c:
                headers = {"x-forwarded-for": ip} if ip else {}
                assert c.get("http://localhost/", headers=headers).status_code == status, (trusted, ip)
        assert app.bouncer.errors == (1 if status == 403 and ip != BANNED else 0)
        os.unlink(sock)


class BrokenEngine:
    """An engine whose lookups fail (fault injection at the middleware's boundary)."""

    fallback = "captcha"

    def __init__(self, stale_action: str) -> None:
        self.stale_action = stale_action

    def get_ip_remediation(self, ip: str) -> str:
        raise RuntimeError("the engine broke")

    def count_answer_as(self, ip: str, answer: str) -> None:
        raise AssertionError("not reached")


@pytest.mark.parametrize("stale_action,status", [("bypass", 200), ("ban", 403)])
def test_a_failing_decision_applies_stale_action(stale_action, status):
    app = AsgiBouncer(starlette_app(), BrokenEngine(stale_action))
    wsgi = WsgiBouncer(flask_hello(), BrokenEngine(stale_action))
    with uvicorn_serving(app) as url, waitress_serving(wsgi) as wsgi_url:
        assert httpx.get(url + "/", timeout=10).status_code == status
        assert httpx.get(wsgi_url + "/", timeout=10).status_code == status
    assert app.bouncer.errors == 1 and wsgi.bouncer.errors == 1


class BrokenVerify(Captcha):
    def verify(self, token: str, ip: str) -> bool:
        raise RuntimeError("verify broke")

    async def averify(self, token: str, ip: str) -> bool:
        raise RuntimeError("verify broke")


def test_an_error_while_answering_a_challenge_never_lets_the_client_in(engine):
    cap = BrokenVerify("turnstile", site_key="s", secret_key="k", cookie_key="c" * 32, verify_url="http://127.0.0.1:1/")
    app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"], captcha=cap)
    wsgi = WsgiBouncer(flask_hello(), engine, trusted_proxies=["127.0.0.1"], captcha=cap)
    with uvicorn_serving(app) as url, waitress_serving(wsgi) as wsgi_url, httpx.Client(timeout=10) as c:
        for base in (url, wsgi_url):
            r = post_token(c, base + "/page", CAPTCHA_IP, cap.spec.field, "token")
            assert r.status_code == 401 and 'class="cf-turnstile"' in r.text, "the captcha page, not the app"
    assert app.bouncer.errors == 1 and wsgi.bouncer.errors == 1


def test_addresses_are_read_as_the_engine_reads_them(engine):
    from capi_fast.bouncer import Bouncer

    engine.index.add("fe80::1", "ban", origin="CAPI")
    engine.index.add("10.1.2.3", "ban", origin="CAPI")
    no_headers = lambda name: []  # noqa: E731
    direct = Bouncer(engine, exclude_addresses=["10.1.0.0/16"])
    assert direct.decide("fe80::1%eth0", "/", no_headers)[1] == "ban", "a zone does not hide the address"
    assert direct.decide("::ffff:10.1.2.3", "/", no_headers) == ("10.1.2.3", "bypass"), "mapped: excluded"
    proxied = Bouncer(engine, trusted_proxies=["127.0.0.1"])
    xff = {"x-forwarded-for": ["fe80::1%eth0", "::ffff:127.0.0.2"]}
    assert proxied.decide("::ffff:127.0.0.1", "/", lambda n: xff.get(n, [])) == ("127.0.0.2", "bypass")
    assert (
        proxied.decide("127.0.0.1", "/", lambda n: ["[fe80::1%eth0]:443"] if n == "x-forwarded-for" else [])[1] == "ban"
    )
    assert direct.errors == 0 and proxied.errors == 0


def test_excluded_paths_do_not_cover_dot_segments(engine):
    from capi_fast.bouncer import Bouncer

    b = Bouncer(engine, exclude_paths=["/static/", "/healthz"])
    headers = lambda name: []  # noqa: E731
    assert b.decide(BANNED, "/static/app.css", headers)[1] == "bypass"
    assert b.decide(BANNED, "/healthz", headers)[1] == "bypass"
    for sneaky in ("/static/../admin", "/static/./x/../../admin", "/static//admin", "/static/..", "/static/a\\..\\b"):
        assert b.decide(BANNED, sneaky, headers)[1] == "ban", sneaky


def test_cookie_is_found_among_cookies_python_cannot_parse(engine):
    cap = captcha("http://127.0.0.1:1/")
    good = cap.cookie_value(CAPTCHA_IP)
    for header in (
        f'prefs={{"a":1,"b":2}}; {COOKIE_NAME}={good}',
        f"ga=GA1.1 x; {COOKIE_NAME}={good}",
        f'q=a"b; {COOKIE_NAME}={good}',
        f"{COOKIE_NAME}={good}; {COOKIE_NAME}=garbage",
        f"{COOKIE_NAME}=garbage; {COOKIE_NAME}={good}",
    ):
        assert cap.solved(CAPTCHA_IP, header), header
    assert not cap.solved("198.51.100.8", f"{COOKIE_NAME}={good}")
    assert not cap.solved(CAPTCHA_IP, f"x{COOKIE_NAME}={good}")


def test_async_engine_started_in_the_lifespan_of_the_app():
    from contextlib import asynccontextmanager

    from capi_fast import AsyncLapiClient, AsyncRemediationEngine
    from servers import FakeLapi

    with FakeLapi() as lapi:
        engine = AsyncRemediationEngine(AsyncLapiClient(lapi.url, FakeLapi.KEY))

        @asynccontextmanager
        async def lifespan(app: Starlette) -> Any:
            engine.start()
            yield
            await engine.stop()

        inner = Starlette(routes=[Route("/", _hello)], lifespan=lifespan)
        app = AsgiBouncer(inner, engine, trusted_proxies=["127.0.0.1"])
        with uvicorn_serving(app, lifespan="on") as url:
            assert engine.health().running
            engine.index.add(BANNED, "ban", origin="crowdsec")
            assert get(url + "/", BANNED).status_code == 403
            assert get(url + "/", CLEAN).status_code == 200
        assert not engine.health().running, "stopped by the lifespan's shutdown"


# -- the captcha flow ---------------------------------------------------------------------------


def captcha(verify_url: str, clock: Clock | None = None, provider: str = "turnstile") -> Captcha:
    return Captcha(
        provider,
        site_key="site-key-123",
        secret_key=FakeVerify.SECRET,
        cookie_key="a cookie key of 32 bytes or more!",
        verify_url=verify_url,
        ttl=3600,
        **({"clock": clock} if clock else {}),
    )


def status(url: str, ip: str, cookies: dict[str, str]) -> int:
    return httpx.get(url, headers={"x-forwarded-for": ip}, cookies=cookies, timeout=10).status_code


def post_token(client: httpx.Client, url: str, ip: str, field: str, token: str) -> httpx.Response:
    return client.post(url, data={field: token}, headers={"x-forwarded-for": ip})


@pytest.mark.parametrize("provider", ["turnstile", "hcaptcha", "recaptcha"])
def test_captcha_flow_under_uvicorn(engine, provider):
    clock = Clock()
    with FakeVerify() as verify:
        cap = captcha(verify.url, clock, provider)
        app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"], captcha=cap)
        field = cap.spec.field
        with uvicorn_serving(app) as url, httpx.Client(timeout=10) as client:
            page = get(url + "/page?x=1", CAPTCHA_IP)
            assert page.status_code == 401 and page.headers["cache-control"] == "no-store"
            assert f'class="{cap.spec.widget_class}"' in page.text and 'data-sitekey="site-key-123"' in page.text
            assert cap.spec.script in page.text and COOKIE_NAME not in page.headers.get("set-cookie", "")

            wrong = post_token(client, url + "/page?x=1", CAPTCHA_IP, field, "bad-token")
            assert wrong.status_code == 401 and "did not succeed" in wrong.text
            assert "set-cookie" not in wrong.headers
            assert verify.calls[-1]["remoteip"] == [CAPTCHA_IP], "the provider is told who solved it"

            right = post_token(client, url + "/page?x=1", CAPTCHA_IP, field, FakeVerify.TOKEN)
            assert right.status_code == 303 and right.headers["location"] == "/page?x=1"
            cookie = right.headers["set-cookie"]
            assert cookie.startswith(COOKIE_NAME + "=") and "HttpOnly" in cookie and "Max-Age=3600" in cookie
            value = cookie.split(";", 1)[0].split("=", 1)[1]
            jar = {COOKIE_NAME: value}

            ok = httpx.get(url + "/page?x=1", headers={"x-forwarded-for": CAPTCHA_IP}, cookies=jar, timeout=10)
            assert ok.status_code == 200 and ok.text == "hello /page x=1"
            # The cookie is bound to the address that solved it.
            other = "198.51.100.8"
            assert status(url + "/", other, jar) == 401
            # A forged or altered cookie is worthless.
            forged = {COOKIE_NAME: value[:-2] + ("AA" if not value.endswith("AA") else "BB")}
            assert (
                httpx.get(url + "/", headers={"x-forwarded-for": CAPTCHA_IP}, cookies=forged, timeout=10).status_code
                == 401
            )
            # A banned address gets no help from a cookie.
            assert status(url + "/", BANNED, jar) == 403
            # After ttl it expires.
            clock.now += 3601
            assert (
                httpx.get(url + "/", headers={"x-forwarded-for": CAPTCHA_IP}, cookies=jar, timeout=10).status_code
                == 401
            )
    counts = engine.counters
    # The solve and the request with the cookie count as bypass (the final answer); the rest captcha.
    assert counts[("lists:tor-exit", "bypass")] == 2
    assert counts[("lists:tor-exit", "captcha")] == 5


def test_captcha_provider_out_of_reach_shows_the_page_again(engine):
    with FakeVerify() as verify:
        dead_url = verify.url
    cap = captcha(dead_url)
    app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"], captcha=cap)
    with uvicorn_serving(app) as url, httpx.Client(timeout=10) as client:
        r = post_token(client, url + "/", CAPTCHA_IP, cap.spec.field, FakeVerify.TOKEN)
        assert r.status_code == 401 and "set-cookie" not in r.headers


def test_captcha_redirect_never_leaves_the_site(engine):
    with FakeVerify() as verify:
        cap = captcha(verify.url)
        app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"], captcha=cap)
        with uvicorn_serving(app) as url, httpx.Client(timeout=10) as client:
            r = post_token(
                client, url + "//evil.example/%0d%0aSet-Cookie:x=1", CAPTCHA_IP, cap.spec.field, FakeVerify.TOKEN
            )
            assert r.status_code == 303
            assert r.headers["location"].startswith("/") and not r.headers["location"].startswith("//")
            assert "\r" not in r.headers["location"] and r.headers.get_list("set-cookie")[0].startswith(COOKIE_NAME)


def test_redirect_keeps_the_path_as_sent_and_cookie_is_secure_behind_tls(engine):
    with FakeVerify() as verify:
        cap = captcha(verify.url)
        app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"], captcha=cap)
        with uvicorn_serving(app) as url, httpx.Client(timeout=10) as client:
            r = client.post(
                url + "/a%2Fb?x=%20y",
                data={cap.spec.field: FakeVerify.TOKEN},
                headers={"x-forwarded-for": CAPTCHA_IP, "x-forwarded-proto": "https"},
            )
            assert r.status_code == 303 and r.headers["location"] == "/a%2Fb?x=%20y"
            assert r.headers["set-cookie"].endswith("; Secure")
            r = post_token(client, url + "/", CAPTCHA_IP, cap.spec.field, FakeVerify.TOKEN)
            assert "Secure" not in r.headers["set-cookie"], "plain http: a Secure cookie would never come back"
    # X-Forwarded-Proto from an untrusted peer is not believed.
    app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["10.0.0.0/8"], captcha=cap)
    headers = {"x-forwarded-proto": ["https"]}
    assert not app.bouncer.secure("http", "127.0.0.1", lambda n: headers.get(n, []))
    assert app.bouncer.secure("https", "127.0.0.1", lambda n: [])


def test_json_clients_are_told_a_captcha_is_required(engine):
    with FakeVerify() as verify:
        app = AsgiBouncer(starlette_app(), engine, trusted_proxies=["127.0.0.1"], captcha=captcha(verify.url))
        with uvicorn_serving(app) as url:
            r = get(url + "/", CAPTCHA_IP, headers={"accept": "application/json"})
            assert r.status_code == 401 and r.json() == {"error": "captcha required", "remediation": "captcha"}


def test_custom_pages(engine):
    with FakeVerify() as verify:
        app = AsgiBouncer(
            starlette_app(),
            engine,
            trusted_proxies=["127.0.0.1"],
            captcha=captcha(verify.url),
            ban_template="<p>go away $ip</p>",
            captcha_template="<h1>prove it</h1>$error$form",
            ban_status=451,
        )
        with uvicorn_serving(app) as url:
            r = get(url + "/", BANNED)
            assert (r.status_code, r.text) == (451, f"<p>go away {BANNED}</p>")
            r = get(url + "/", CAPTCHA_IP)
            assert r.text.startswith("<h1>prove it</h1><script") and "cf-turnstile" in r.text


def test_bad_settings_are_refused_with_clear_errors(engine):
    app = starlette_app()
    with pytest.raises(ConfigurationError, match=r"\$form"):
        AsgiBouncer(app, engine, captcha_template="<p>no form</p>")
    with pytest.raises(ConfigurationError, match="provider"):
        Captcha("funcaptcha", site_key="a", secret_key="b", cookie_key="c" * 32)
    with pytest.raises(ConfigurationError, match="16 bytes"):
        Captcha("turnstile", site_key="a", secret_key="b", cookie_key="short")
    with pytest.raises(ConfigurationError, match="trusted proxy"):
        AsgiBouncer(app, engine, trusted_proxies=["not-a-net"])
    with pytest.raises(ConfigurationError, match="excluded address 'nope'"):
        AsgiBouncer(app, engine, exclude_addresses=["nope"])
    with pytest.raises(ConfigurationError, match="ban_status"):
        WsgiBouncer(lambda e, s: [], engine, ban_status=200)
    with pytest.raises(ConfigurationError, match="engine"):
        AsgiBouncer(app, object())
    assert "secret" not in repr(captcha("http://127.0.0.1:1/"))


# -- WSGI under gunicorn (Flask, followers of a snapshot) and waitress (Django) ------------------


@pytest.fixture
def snapshot(tmp_path: Path) -> Iterator[tuple[RemediationEngine, Path]]:
    path = tmp_path / "decisions.snapshot"
    engine = RemediationEngine(None, snapshot_path=path)
    for ip, rem, origin in ((BANNED, "ban", "CAPI"), ("198.51.100.0/24", "captcha", "lists:tor-exit")):
        engine.index.add(ip, rem, origin=origin)
    assert engine._save() is None
    yield engine, path


def test_flask_under_gunicorn_workers_follow_the_snapshot(snapshot):
    writer, path = snapshot
    env = {"CAPI_FAST_TEST_SNAPSHOT": str(path), "CAPI_FAST_TEST_TRUSTED": "127.0.0.1"}
    with gunicorn_serving("flask_app:app", env, workers=2) as url:
        assert get(url + "/", CLEAN).text == "hello from flask"
        r = get(url + "/", BANNED)
        assert r.status_code == 403 and "Access denied" in r.text
        assert get(url + "/", BANNED, headers={"accept": "application/json"}).json()["remediation"] == "ban"
        assert get(url + "/healthz", BANNED).text == "ok"
        assert get(url + "/", f"{BANNED}, 203.0.113.1").status_code == 200, "untrusted hop stops the chain"
        # A new decision reaches every worker through the snapshot (each checks every 50 ms).
        writer.index.add(CLEAN, "ban", origin="cscli")
        assert writer._save() is None
        with httpx.Client(headers={"x-forwarded-for": CLEAN}, timeout=10) as client:
            statuses = [client.get(url + "/").status_code for _ in range(200)]
        assert statuses[-20:] == [403] * 20, statuses


def test_flask_captcha_flow_under_gunicorn(snapshot):
    _, path = snapshot
    with FakeVerify() as verify:
        env = {
            "CAPI_FAST_TEST_SNAPSHOT": str(path),
            "CAPI_FAST_TEST_TRUSTED": "127.0.0.1",
            "CAPI_FAST_TEST_VERIFY_URL": verify.url,
        }
        with gunicorn_serving("flask_app:app", env) as url, httpx.Client(timeout=10) as client:
            assert get(url + "/page", CAPTCHA_IP).status_code == 401
            assert post_token(client, url + "/page", CAPTCHA_IP, "cf-turnstile-response", "nope").status_code == 401
            r = post_token(client, url + "/a%2Fb?x=%20y", CAPTCHA_IP, "cf-turnstile-response", FakeVerify.TOKEN)
            assert r.status_code == 303 and r.headers["location"] == "/a%2Fb?x=%20y", "the path as sent"
            client.cookies.clear()  # the client kept the solve: start again without it
            r = post_token(client, url + "/page?q=2", CAPTCHA_IP, "cf-turnstile-response", FakeVerify.TOKEN)
            assert r.status_code == 303 and r.headers["location"] == "/page?q=2"
            jar = {COOKIE_NAME: r.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]}
            ok = httpx.get(url + "/page?q=2", headers={"x-forwarded-for": CAPTCHA_IP}, cookies=jar, timeout=10)
            assert ok.status_code == 200 and ok.text == "page q=2"
            assert (
                httpx.get(url + "/", headers={"x-forwarded-for": "198.51.100.9"}, cookies=jar, timeout=10).status_code
                == 401
            )


def test_django_wsgi_handler_under_waitress(engine, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS / "apps"))
    import django_app  # noqa: F401 - configures Django
    from django.core.handlers.wsgi import WSGIHandler

    app = WsgiBouncer(WSGIHandler(), engine, trusted_proxies=["127.0.0.1"])
    with waitress_serving(app) as url:
        assert get(url + "/", CLEAN).text == "hello from django"
        r = get(url + "/", BANNED)
        assert r.status_code == 403 and "Access denied" in r.text
    assert engine.counters[("CAPI", "ban")] == 1
