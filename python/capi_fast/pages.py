"""The pages the bouncer answers with: the ban page and the captcha page, and their templates.

Templates are ``string.Template`` text. The ban page may use ``$ip``; the captcha page must hold
``$form`` (the widget, its script and the submit button) and may use ``$ip`` and ``$error``.
Every value is HTML-escaped before it is put in.
"""

from __future__ import annotations

import html
from string import Template

from capi_fast.captcha import Captcha
from capi_fast.errors import ConfigurationError

__all__ = ["BAN_TEMPLATE", "CAPTCHA_TEMPLATE", "Page", "captcha_form", "checked_template"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1f2328;display:flex;"
    "align-items:center;justify-content:center;min-height:100vh;margin:0}"
    "main{background:#fff;padding:2.5rem 3rem;border-radius:8px;box-shadow:0 1px 4px #0002;max-width:32rem}"
    "h1{font-size:1.4rem;margin-top:0}p.error{color:#b42318}button{margin-top:1rem;padding:.5rem 1.5rem}"
)

#: The default ban page (403).
BAN_TEMPLATE = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    f"<title>Access denied</title><style>{_STYLE}</style></head><body><main>"
    "<h1>Access denied</h1>"
    "<p>This site's security service has blocked requests from your address ($ip).</p>"
    "<p>If you think this is a mistake, contact the site's administrator.</p>"
    "</main></body></html>"
)

#: The default captcha page.
CAPTCHA_TEMPLATE = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    f"<title>Checking your browser</title><style>{_STYLE}</style></head><body><main>"
    "<h1>One moment</h1>"
    "<p>Unusual traffic has been seen from your address ($ip). Please show you are not a robot "
    "to continue.</p>$error$form</main></body></html>"
)


def checked_template(text: str, required: tuple[str, ...], name: str) -> Template:
    """``text`` as a template, refused with ``ConfigurationError`` when it lacks a placeholder."""
    if not isinstance(text, str):
        raise ConfigurationError(f"{name} must be a str")
    template = Template(text)
    if not template.is_valid():
        raise ConfigurationError(f"{name} has a malformed placeholder (write $$ for a dollar sign)")
    missing = [p for p in required if p not in template.get_identifiers()]
    if missing:
        raise ConfigurationError(f"{name} must contain {', '.join('$' + p for p in missing)}")
    return template


def captcha_form(captcha: Captcha) -> str:
    """The form posting the widget's token back to the page's own URL."""
    spec = captcha.spec
    return (
        f'<script src="{html.escape(spec.script)}" async defer></script>'
        '<form method="post" action="">'
        f'<div class="{spec.widget_class}" data-sitekey="{html.escape(captcha.site_key)}"></div>'
        '<button type="submit">Continue</button></form>'
    )


class Page:
    """A template filled once with everything but the client's address, then per request.

    ``string.Template`` scans the whole page with a regular expression (about 20 µs for the
    default pages); a ban answer must cost less than that, so the page is cut where ``$ip``
    goes and each answer only escapes the address and joins the pieces.
    """

    _MARK = "\x00capi-fast-ip\x00"

    def __init__(self, template: Template, raw: dict[str, str] | None = None) -> None:
        filled = template.safe_substitute((raw or {}) | {"ip": self._MARK})
        self._parts = [part.encode() for part in filled.split(self._MARK)]

    def render(self, ip: str) -> bytes:
        """The page for a client at ``ip`` (HTML-escaped)."""
        if len(self._parts) == 1:
            return self._parts[0]
        return html.escape(ip).encode().join(self._parts)
