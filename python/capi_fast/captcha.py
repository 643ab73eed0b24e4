"""Captcha challenges for the bouncer middleware: Cloudflare Turnstile, hCaptcha, Google reCAPTCHA.

A client whose answer is ``captcha`` gets a page with the provider's widget. The widget posts a
token back to the same URL; the middleware checks it server-side at the provider's verify
endpoint (configurable, so tests run against a local fake) and, when the provider says yes, sets
a cookie that lets that address through for ``ttl`` seconds and sends the client back to the
page it asked for with a ``303``.

The cookie is ``<expiry>.<HMAC-SHA256(cookie_key, "v1|<ip>|<expiry>")>``: signed, bound to the
client's address and to its expiry, so no server-side session store is needed, it cannot be
forged without the key, moved to another address, or kept past its time. Every worker of a
service that shares ``cookie_key`` accepts it. Rotate the key to revoke every cookie at once.

The request/response rules are here once; ``verify`` (sync, for WSGI) and ``averify`` (async,
for ASGI) only do the HTTP call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from capi_fast.errors import ConfigurationError

__all__ = ["COOKIE_NAME", "PROVIDERS", "Captcha", "Provider"]

log = logging.getLogger("capi_fast.captcha")

#: The cookie remembering a solved captcha.
COOKIE_NAME = "capi_fast_captcha"
_MIN_KEY = 16
#: Largest captcha form body read (tokens are a few KB).
MAX_FORM_BYTES = 16 * 1024


@dataclass(frozen=True)
class Provider:
    """What differs between captcha services: their script, widget, form field and verify URL."""

    script: str
    widget_class: str
    field: str
    verify_url: str


#: The supported providers, by the name ``Captcha`` takes.
PROVIDERS: Mapping[str, Provider] = {
    "turnstile": Provider(
        "https://challenges.cloudflare.com/turnstile/v0/api.js",
        "cf-turnstile",
        "cf-turnstile-response",
        "https://challenges.cloudflare.com/turnstile/v0/siteverify",
    ),
    "hcaptcha": Provider(
        "https://js.hcaptcha.com/1/api.js", "h-captcha", "h-captcha-response", "https://api.hcaptcha.com/siteverify"
    ),
    "recaptcha": Provider(
        "https://www.google.com/recaptcha/api.js",
        "g-recaptcha",
        "g-recaptcha-response",
        "https://www.google.com/recaptcha/api/siteverify",
    ),
}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Captcha:
    """A captcha provider's keys and how long a solve is remembered.

    Args:
        provider: ``turnstile``, ``hcaptcha`` or ``recaptcha`` (v2 checkbox).
        site_key: the public key the widget shows.
        secret_key: the private key sent to the provider's verify endpoint (never logged).
        cookie_key: at least 16 bytes (or characters) of secret used to sign the cookie; give
            every worker the same one.
        ttl: seconds a solved captcha lets the address through (default one hour).
        verify_url: the provider's verify endpoint (default: the provider's own).
        timeout: seconds to wait for the verify endpoint; a provider that does not answer in
            time counts as a failed solve (the page is shown again).
        secure_cookie: ``Secure`` on the cookie: None (default) sets it when the client came
            over https (the server's scheme, or a trusted proxy's ``X-Forwarded-Proto``).
        clock: Unix time source (for the cookie's expiry).
    """

    def __init__(
        self,
        provider: str,
        *,
        site_key: str,
        secret_key: str,
        cookie_key: str | bytes,
        ttl: float = 3600.0,
        verify_url: str | None = None,
        timeout: float = 5.0,
        secure_cookie: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if provider not in PROVIDERS:
            raise ConfigurationError(f"captcha provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
        if not isinstance(site_key, str) or not site_key or not isinstance(secret_key, str) or not secret_key:
            raise ConfigurationError("captcha site_key and secret_key must be non-empty strings")
        key = cookie_key.encode() if isinstance(cookie_key, str) else cookie_key
        if not isinstance(key, bytes) or len(key) < _MIN_KEY:
            raise ConfigurationError(f"cookie_key must be at least {_MIN_KEY} bytes of secret")
        if not (isinstance(ttl, int | float) and 0 < ttl < float("inf")):
            raise ConfigurationError(f"ttl must be a number of seconds above 0, got {ttl!r}")
        if not (isinstance(timeout, int | float) and 0 < timeout < float("inf")):
            raise ConfigurationError(f"timeout must be a number of seconds above 0, got {timeout!r}")
        self.provider = provider
        self.spec = PROVIDERS[provider]
        self.site_key = site_key
        self._secret = secret_key
        self._key = key
        self.ttl = float(ttl)
        self.verify_url = verify_url or self.spec.verify_url
        if not self.verify_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"verify_url must be an http(s) URL, got {self.verify_url!r}")
        self.timeout = float(timeout)
        self.secure_cookie = secure_cookie
        self.clock = clock
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        return f"Captcha({self.provider!r}, site_key={self.site_key!r}, ttl={self.ttl})"

    # -- the cookie ----------------------------------------------------------------------------

    def _signature(self, ip: str, expiry: int) -> str:
        return _b64(hmac.new(self._key, f"v1|{ip}|{expiry}".encode(), hashlib.sha256).digest())

    def cookie_value(self, ip: str) -> str:
        """The cookie value that lets ``ip`` through until ``ttl`` from now."""
        expiry = int(self.clock() + self.ttl)
        return f"{expiry}.{self._signature(ip, expiry)}"

    def set_cookie_header(self, ip: str, secure: bool) -> str:
        """The ``Set-Cookie`` header value remembering a solve for ``ip``."""
        attrs = f"Max-Age={int(self.ttl)}; Path=/; HttpOnly; SameSite=Lax"
        return f"{COOKIE_NAME}={self.cookie_value(ip)}; {attrs}" + ("; Secure" if secure else "")

    def solved(self, ip: str, cookie_header: str | None) -> bool:
        """Whether a ``Cookie`` header holds an unexpired solve signed for ``ip``.

        The header is split by hand: other cookies of the site (JSON values, quotes, spaces)
        must not hide ours, and any of several values of our name may be the good one.
        """
        if not cookie_header or COOKIE_NAME not in cookie_header:
            return False
        now = self.clock()
        for pair in cookie_header.split(";"):
            name, _, value = pair.partition("=")
            if name.strip() != COOKIE_NAME:
                continue
            expiry_text, _, signature = value.strip().strip('"').partition(".")
            if not expiry_text.isdigit() or len(expiry_text) > 12:
                continue
            expiry = int(expiry_text)
            if expiry > now and hmac.compare_digest(signature, self._signature(ip, expiry)):
                return True
        return False

    # -- the provider's verdict ----------------------------------------------------------------

    def token_of(self, form: Mapping[str, list[str]]) -> str | None:
        """The widget's token in a posted form, or None when the form holds none."""
        values = form.get(self.spec.field)
        if not values or not values[0] or len(values[0]) > MAX_FORM_BYTES:
            return None
        return values[0]

    def _form(self, token: str, ip: str) -> dict[str, str]:
        return {"secret": self._secret, "response": token, "remoteip": ip}

    def _verdict(self, response: httpx.Response) -> bool:
        if response.status_code != 200:
            log.warning("the captcha verify endpoint answered HTTP %s", response.status_code)
            return False
        try:
            body: Any = response.json()
        except ValueError:
            log.warning("the captcha verify endpoint answered something that is not JSON")
            return False
        return isinstance(body, dict) and body.get("success") is True

    def verify(self, token: str, ip: str) -> bool:
        """Asks the provider whether ``token`` is a solve by ``ip`` (False when it cannot answer)."""
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        try:
            return self._verdict(self._client.post(self.verify_url, data=self._form(token, ip)))
        except httpx.HTTPError as e:
            log.warning("could not reach the captcha verify endpoint: %s", type(e).__name__)
            return False

    async def averify(self, token: str, ip: str) -> bool:
        """``verify`` for async servers."""
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(timeout=self.timeout)
        try:
            return self._verdict(await self._aclient.post(self.verify_url, data=self._form(token, ip)))
        except httpx.HTTPError as e:
            log.warning("could not reach the captcha verify endpoint: %s", type(e).__name__)
            return False
