"""``BouncerMiddleware`` for WSGI apps: Flask, Django's WSGI handler, Pyramid, Bottle.

```python
app.wsgi_app = BouncerMiddleware(app.wsgi_app, engine, trusted_proxies=["10.0.0.0/8"])  # Flask
application = BouncerMiddleware(get_wsgi_application(), engine)                          # Django
```

The same arguments and rules as ``capi_fast.asgi.BouncerMiddleware`` (``capi_fast.bouncer``).
Under a pre-forking server (gunicorn ``-w N``), let one process refresh and write a snapshot and
give each worker ``RemediationEngine.follow(snapshot_path)``, or start a refreshing engine in
each worker after the fork (gunicorn's ``post_fork`` hook): a thread started before the fork
does not run in the workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from capi_fast.bouncer import BYPASS, CAPTCHA, Bouncer, Headers, Reply, location_of
from capi_fast.captcha import MAX_FORM_BYTES

__all__ = ["BouncerMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_REASONS = {303: "See Other", 401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests"}


def _headers(environ: Environ) -> Headers:
    def values(name: str) -> list[str]:
        if name == "content-type" or name == "content-length":
            key = name.upper().replace("-", "_")
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        value = environ.get(key)
        return [value] if value else []

    return values


def _respond(start_response: StartResponse, reply: Reply) -> list[bytes]:
    headers = [*reply.headers, ("content-length", str(len(reply.body)))]
    start_response(f"{reply.status} {_REASONS.get(reply.status, 'Error')}", headers)
    return [reply.body]


def _target(environ: Environ) -> str:
    """Where a solve sends the client back.

    The request's path as sent (gunicorn's ``RAW_URI``, waitress's and uWSGI's ``REQUEST_URI``),
    else as the server decoded it.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw.startswith("/"):
        path, _, query = raw.partition("?")
        return location_of(path.encode("latin-1", "replace"), query, encoded=True)
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "/")
    return location_of(path.encode("latin-1", "replace"), environ.get("QUERY_STRING", ""))


def _read_body(environ: Environ) -> bytes | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if not 0 <= length <= MAX_FORM_BYTES:
        return None
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    body: bytes = stream.read(length)
    return body


class BouncerMiddleware:
    """Answers each request with the engine's remediation for its client, or calls ``app``.

    Args:
        app: the WSGI application to protect.
        engine: a ``RemediationEngine`` or a follower.
        trusted_proxies: the reverse proxies whose forwarding header is believed (default none).
        **options: the other ``capi_fast.bouncer.Bouncer`` settings: ``proxy_header``,
            ``captcha``, ``exclude_paths``, ``exclude_addresses``, ``ban_template``,
            ``captcha_template``, ``ban_status``, ``captcha_status``.
    """

    def __init__(self, app: WSGIApp, engine: Any, trusted_proxies: Sequence[str] = (), **options: Any) -> None:
        self.app = app
        self.bouncer = Bouncer(engine, trusted_proxies, **options)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI entry point."""
        b = self.bouncer
        headers = _headers(environ)
        ip, action = b.decide(environ.get("REMOTE_ADDR"), environ.get("PATH_INFO", ""), headers)
        if action == BYPASS:
            return self.app(environ, start_response)
        try:
            reply = self._reply(environ, ip, action, headers)
        except Exception as e:  # the request path never raises, and never lets this client in
            reply = b.reply_failed(e, ip, action, headers)
        return _respond(start_response, reply)

    def _reply(self, environ: Environ, ip: str, action: str, headers: Headers) -> Reply:
        b = self.bouncer
        if action != CAPTCHA:
            return b.ban_reply(ip, headers)
        if not b.wants_form(environ.get("REQUEST_METHOD", ""), headers):
            return b.captcha_reply(ip, headers)
        body = _read_body(environ)
        token = b.token_of(body) if body is not None else None
        if token is None:
            return b.captcha_reply(ip, headers)
        assert b.captcha is not None
        if not b.captcha.verify(token, ip):
            return b.captcha_reply(ip, headers, retry=True)
        secure = b.secure(environ.get("wsgi.url_scheme", "http"), environ.get("REMOTE_ADDR"), headers)
        return b.solved_reply(ip, _target(environ), secure)
