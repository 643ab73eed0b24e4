"""``BouncerMiddleware`` for ASGI 3 apps: Starlette, FastAPI, Django's ASGI handler, Quart.

```python
app = BouncerMiddleware(app, engine, trusted_proxies=["10.0.0.0/8"], captcha=Captcha(...))
```

HTTP requests are checked (``capi_fast.bouncer`` holds the rules); a banned websocket is refused
before its handshake completes (HTTP 403); lifespan events pass through. The engine is not
started here: call ``engine.start()`` (or ``await engine.start()``) in your app's startup.

Behind a reverse proxy, give its address in ``trusted_proxies`` and run uvicorn with
``--no-proxy-headers`` (or leave ``trusted_proxies`` empty and let uvicorn's own
``--forwarded-allow-ips`` rewrite the peer): a server that rewrites the peer from the header
before the middleware sees it makes that header the server's trust decision, not this one's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from capi_fast.bouncer import BYPASS, CAPTCHA, Bouncer, Headers, Reply, location_of
from capi_fast.captcha import MAX_FORM_BYTES

__all__ = ["BouncerMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _headers(scope: Scope) -> Headers:
    raw: list[tuple[bytes, bytes]] = scope.get("headers") or []

    def values(name: str) -> list[str]:  # ASGI servers give header names in lower case
        key = name.encode()
        return [v.decode("latin-1") for k, v in raw if k == key]

    return values


async def _send_reply(send: Send, reply: Reply) -> None:
    headers = [(k.encode(), v.encode("latin-1")) for k, v in reply.headers]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None past ``MAX_FORM_BYTES`` or when the client goes away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class BouncerMiddleware:
    """Answers each request with the engine's remediation for its client, or calls ``app``.

    Args:
        app: the ASGI application to protect.
        engine: a ``RemediationEngine``, ``AsyncRemediationEngine`` or a follower.
        trusted_proxies: the reverse proxies whose forwarding header is believed (default none).
        **options: the other ``capi_fast.bouncer.Bouncer`` settings: ``proxy_header``,
            ``captcha``, ``exclude_paths``, ``exclude_addresses``, ``ban_template``,
            ``captcha_template``, ``ban_status``, ``captcha_status``.
    """

    def __init__(self, app: ASGIApp, engine: Any, trusted_proxies: Sequence[str] = (), **options: Any) -> None:
        self.app = app
        self.bouncer = Bouncer(engine, trusted_proxies, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI 3 entry point."""
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        b = self.bouncer
        client = scope.get("client")
        headers = _headers(scope)
        ip, action = b.decide(client[0] if client else None, scope.get("path", ""), headers)
        if action == BYPASS:
            await self.app(scope, receive, send)
            return
        if kind == "websocket":  # closing before accept refuses the handshake with 403
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            reply = await self._reply(scope, receive, ip, action, headers)
        except Exception as e:  # the request path never raises, and never lets this client in
            reply = b.reply_failed(e, ip, action, headers)
        await _send_reply(send, reply)

    async def _reply(self, scope: Scope, receive: Receive, ip: str, action: str, headers: Headers) -> Reply:
        b = self.bouncer
        if action != CAPTCHA:
            return b.ban_reply(ip, headers)
        if not b.wants_form(scope.get("method", ""), headers):
            return b.captcha_reply(ip, headers)
        body = await _read_body(receive)
        token = b.token_of(body) if body is not None else None
        if token is None:
            return b.captcha_reply(ip, headers)
        assert b.captcha is not None
        if not await b.captcha.averify(token, ip):
            return b.captcha_reply(ip, headers, retry=True)
        query = scope.get("query_string", b"").decode("latin-1")
        raw = scope.get("raw_path")
        target = location_of(raw, query, encoded=True) if raw else location_of(scope.get("path", "/").encode(), query)
        client = scope.get("client")
        secure = b.secure(scope.get("scheme", "http"), client[0] if client else None, headers)
        return b.solved_reply(ip, target, secure)
