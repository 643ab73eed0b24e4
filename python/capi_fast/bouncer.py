"""The bouncer's rules, without I/O: which client, what answer, what reply.

``capi_fast.asgi`` and ``capi_fast.wsgi`` are thin adapters over ``Bouncer``: they read the
socket peer, the path and headers from their server's request, ask ``decide``, and either call
the app (``bypass``) or send the reply built here. The order of the rules, once for both:

1. an excluded path (health checks, static files) goes to the app, uncounted;
2. the client is the socket peer, or, behind ``trusted_proxies``, the address the forwarding
   header names (``ClientAddress``);
3. an excluded address goes to the app, uncounted;
4. the engine answers (``ban``, ``captcha``, ``bypass``; its bouncing level and stale action
   applied); a remediation the middleware has no page for follows the engine's ``fallback``;
   ``captcha`` without a ``Captcha`` configured is served as ``ban`` (never let through);
5. ``captcha`` with a valid solve cookie for that address goes to the app and is counted as
   ``bypass``.

Nothing here raises to the server: an error on the way is logged (at most once a minute) and
the engine's ``stale_action`` answers, the same failure action as a LAPI out of reach.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs, quote

import orjson

from capi_fast.captcha import MAX_FORM_BYTES, Captcha
from capi_fast.client_address import ClientAddress, Networks, address_text
from capi_fast.errors import ConfigurationError
from capi_fast.pages import BAN_TEMPLATE, CAPTCHA_TEMPLATE, Page, captcha_form, checked_template

__all__ = ["BAN", "BYPASS", "CAPTCHA", "Bouncer", "Reply"]

log = logging.getLogger("capi_fast.bouncer")

BYPASS, BAN, CAPTCHA = "bypass", "ban", "captcha"
_ERROR_LOG_EVERY = 60.0
_RETRY = "The check did not succeed. Please try again."

#: A function giving the values of one request header (lower-case name), in order.
Headers = Callable[[str], list[str]]


class _Engine(Protocol):
    """What the bouncer needs of an engine (``RemediationEngine``, its async twin, a follower)."""

    fallback: str
    stale_action: str

    def get_ip_remediation(self, ip: str) -> str: ...  # noqa: D102

    def count_answer_as(self, ip: str, answer: str) -> None: ...  # noqa: D102


@dataclass(frozen=True)
class Reply:
    """A response the bouncer sends instead of calling the app."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


_NO_STORE = ("cache-control", "no-store")


class Bouncer:
    """The rules shared by the ASGI and WSGI middleware (see the module's docstring).

    Args:
        engine: the ``RemediationEngine`` (or ``AsyncRemediationEngine``, or a follower) answering.
        trusted_proxies: addresses or networks of the reverse proxies in front of the app; the
            forwarding header is read only from them. Empty (default): the socket peer is the client.
        proxy_header: ``x-forwarded-for`` (default) or ``forwarded`` (RFC 7239).
        captcha: the captcha provider; without one, ``captcha`` answers are served as ``ban``.
        exclude_paths: paths let through unchecked: an entry matches that path exactly, or, when
            it ends with ``/``, every path under it (``"/static/"``).
        exclude_addresses: addresses or networks let through unchecked (monitoring, offices).
        ban_template: HTML of the ban page (``string.Template``; may use ``$ip``).
        captcha_template: HTML of the captcha page (must hold ``$form``; may use ``$ip``, ``$error``).
        ban_status: HTTP status of a ban (default 403).
        captcha_status: HTTP status of the captcha page (default 401: not the app's content).
    """

    def __init__(
        self,
        engine: _Engine,
        trusted_proxies: Sequence[str] = (),
        *,
        proxy_header: str = "x-forwarded-for",
        captcha: Captcha | None = None,
        exclude_paths: Sequence[str] = (),
        exclude_addresses: Sequence[str] = (),
        ban_template: str = BAN_TEMPLATE,
        captcha_template: str = CAPTCHA_TEMPLATE,
        ban_status: int = 403,
        captcha_status: int = 401,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not callable(getattr(engine, "get_ip_remediation", None)):
            raise ConfigurationError("engine must be a RemediationEngine (it has no get_ip_remediation)")
        if captcha is not None and not isinstance(captcha, Captcha):
            raise ConfigurationError("captcha must be a capi_fast.captcha.Captcha")
        for name, status in (("ban_status", ban_status), ("captcha_status", captcha_status)):
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise ConfigurationError(f"{name} must be an HTTP error status (400-599), got {status!r}")
        if isinstance(exclude_paths, str) or isinstance(exclude_addresses, str):
            raise ConfigurationError("exclude_paths and exclude_addresses must be lists, not one str")
        self.engine = engine
        self.address = ClientAddress(trusted_proxies, proxy_header)
        self.captcha = captcha
        self._paths = frozenset(p for p in exclude_paths if not p.endswith("/"))
        self._prefixes = tuple(p for p in exclude_paths if p.endswith("/"))
        self._excluded = Networks(exclude_addresses, "excluded address")
        self._ban_page = Page(checked_template(ban_template, (), "ban_template"))
        captcha_page = checked_template(captcha_template, ("form",), "captcha_template")
        form = captcha_form(captcha) if captcha is not None else ""
        self._captcha_page = Page(captcha_page, {"form": form, "error": ""})
        self._captcha_retry = Page(captcha_page, {"form": form, "error": f'<p class="error">{_RETRY}</p>'})
        self.ban_status, self.captcha_status = ban_status, captcha_status
        self._clock = clock
        self._last_error_log = -_ERROR_LOG_EVERY
        #: Errors caught on the request path (each answered with the engine's stale action).
        self.errors = 0

    # -- the decision --------------------------------------------------------------------------

    def excluded_path(self, path: str) -> bool:
        """Whether ``path`` is let through unchecked.

        A path with a ``.`` or ``..`` segment, an empty segment or a backslash is never
        excluded: an app that normalizes it could serve something else than the excluded path.
        """
        if path not in self._paths and not (self._prefixes and path.startswith(self._prefixes)):
            return False
        return not ("\\" in path or "//" in path or "/./" in path or "/../" in path or path.endswith(("/.", "/..")))

    def decide(self, peer: str | None, path: str, headers: Headers) -> tuple[str, str]:
        """``(client address, action)``: the action is ``bypass``, ``ban`` or ``captcha``.

        Never raises: an error on the way answers the engine's ``stale_action``. A request with
        no client address (a unix socket without ``"unix"`` in ``trusted_proxies``, or a proxy
        that sent no header) is answered ``ban``: failing open there would turn every ban off.
        """
        ip = peer or ""
        try:
            if self._paths or self._prefixes:
                if self.excluded_path(path):
                    return ip, BYPASS
            if self.address.trusted_any:
                ip = self.address.resolve(ip, headers(self.address.header))
            elif "%" in ip or ("." in ip and ":" in ip):  # a zone, or IPv4-mapped IPv6
                ip = address_text(ip) or ip
            if not ip:
                return ip, self._no_address()
            if self._excluded and self._excluded.holds(ip):
                return ip, BYPASS
            answer = self.engine.get_ip_remediation(ip)
            if answer == BYPASS:
                return ip, BYPASS
            return ip, self._action(ip, answer, headers)
        except Exception as e:  # the request path never raises
            return ip, self.failed(e)

    def _no_address(self) -> str:
        self.errors += 1
        if self._may_log():
            log.error(
                "a request has no client address (a unix socket? add 'unix' to trusted_proxies so the "
                "proxy's %s header is read); answering ban",
                self.address.header,
            )
        return BAN

    def _action(self, ip: str, answer: str, headers: Headers) -> str:
        if answer not in (BAN, CAPTCHA):
            answer = self.engine.fallback
            if answer not in (BAN, CAPTCHA, BYPASS):
                answer = BAN
        if answer == CAPTCHA:
            if self.captcha is None:
                return BAN
            cookies = headers("cookie")
            if cookies and self.captcha.solved(ip, "; ".join(cookies)):
                self.engine.count_answer_as(ip, BYPASS)
                return BYPASS
        return answer

    def _may_log(self) -> bool:
        now = self._clock()
        if now - self._last_error_log < _ERROR_LOG_EVERY:
            return False
        self._last_error_log = now
        return True

    def failed(self, error: BaseException) -> str:
        """Logs an error of the decision (at most once a minute); the stale action to apply."""
        self.errors += 1
        if self._may_log():
            log.error("the bouncer failed on a request; answering %r", self.engine.stale_action, exc_info=error)
        action = self.engine.stale_action
        if action == CAPTCHA and self.captcha is None:
            return BAN
        return action if action in (BAN, CAPTCHA) else BYPASS

    def reply_failed(self, error: BaseException, ip: str, action: str, headers: Headers) -> Reply:
        """After an error while answering ``ban`` or ``captcha``: that answer's page, never the app."""
        self.errors += 1
        if self._may_log():
            log.error("the bouncer failed while answering %r; serving its page", action, exc_info=error)
        try:
            return self.captcha_reply(ip, headers) if action == CAPTCHA else self.ban_reply(ip, headers)
        except Exception:
            return Reply(self.ban_status, [("content-type", "text/plain"), _NO_STORE], b"Forbidden")

    def secure(self, scheme: str, peer: str | None, headers: Headers) -> bool:
        """Whether the captcha cookie gets ``Secure``.

        As configured, else when the client came over https: the server's scheme, or a trusted
        proxy's ``X-Forwarded-Proto``.
        """
        assert self.captcha is not None
        if self.captcha.secure_cookie is not None:
            return self.captcha.secure_cookie
        if scheme == "https":
            return True
        proto = headers("x-forwarded-proto")
        return bool(proto) and proto[-1].strip().lower() == "https" and self.address.is_trusted_peer(peer)

    # -- the replies ---------------------------------------------------------------------------

    def ban_reply(self, ip: str, headers: Headers) -> Reply:
        """The ban answer: the HTML page, or JSON for a client that asks for JSON."""
        if _wants_json(headers):
            body = orjson.dumps({"error": "forbidden", "remediation": BAN})
            return Reply(self.ban_status, [("content-type", "application/json"), _NO_STORE], body)
        page = self._ban_page.render(ip)
        return Reply(self.ban_status, [("content-type", "text/html; charset=utf-8"), _NO_STORE], page)

    def captcha_reply(self, ip: str, headers: Headers, retry: bool = False) -> Reply:
        """The challenge page (JSON ``{"remediation": "captcha"}`` for a client asking for JSON)."""
        if _wants_json(headers):
            body = orjson.dumps({"error": "captcha required", "remediation": CAPTCHA})
            return Reply(self.captcha_status, [("content-type", "application/json"), _NO_STORE], body)
        page = (self._captcha_retry if retry else self._captcha_page).render(ip)
        return Reply(self.captcha_status, [("content-type", "text/html; charset=utf-8"), _NO_STORE], page)

    def wants_form(self, method: str, headers: Headers) -> bool:
        """Whether a ``captcha`` request may carry a solve the adapter should read (bounded)."""
        if method != "POST" or self.captcha is None:
            return False
        ctype = headers("content-type")
        if not ctype or not ctype[0].lower().startswith("application/x-www-form-urlencoded"):
            return False
        length = headers("content-length")
        try:
            return not length or 0 <= int(length[0]) <= MAX_FORM_BYTES
        except ValueError:
            return False

    def token_of(self, body: bytes) -> str | None:
        """The captcha token in a posted form body, or None."""
        assert self.captcha is not None
        if len(body) > MAX_FORM_BYTES:
            return None
        try:
            form = parse_qs(body.decode("ascii"), max_num_fields=32)
        except (UnicodeDecodeError, ValueError):
            return None
        return self.captcha.token_of(form)

    def solved_reply(self, ip: str, location: str, secure: bool) -> Reply:
        """After the provider confirmed a solve: the cookie, and back to the page asked for.

        ``location`` is the request's own path and query, so it cannot send the client elsewhere.
        """
        assert self.captcha is not None
        self.engine.count_answer_as(ip, BYPASS)
        return Reply(
            303,
            [("location", location), ("set-cookie", self.captcha.set_cookie_header(ip, secure)), _NO_STORE],
        )


def _wants_json(headers: Headers) -> bool:
    accept = headers("accept")
    if not accept:
        return False
    text = ",".join(accept).lower()
    return "json" in text and "text/html" not in text


def location_of(path: bytes, query: str, encoded: bool = False) -> str:
    """A same-site redirect target for a request's path and query: never another host.

    The path (decoded, or as sent with ``encoded``) is percent-encoded again, so nothing in it
    can end the header or name a host.
    """
    safe = "/:@!$&'()*+,;=-._~" + ("%" if encoded else "")
    quoted = quote(b"/" + path.lstrip(b"/\\"), safe=safe)
    query = quote(query, safe="=&;%+/?:@!$'()*,-._~")
    return f"{quoted}?{query}" if query else quoted


__all__ += ["Headers", "location_of"]
