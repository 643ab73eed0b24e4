"""A Flask app behind capi_fast's WSGI middleware, for gunicorn in tests and benchmarks.

Set by the environment: ``CAPI_FAST_TEST_SNAPSHOT`` (the snapshot the workers follow),
``CAPI_FAST_TEST_TRUSTED`` (comma-separated trusted proxies), ``CAPI_FAST_TEST_VERIFY_URL`` (a
captcha verify endpoint: enables a Turnstile captcha), ``CAPI_FAST_TEST_BARE=1`` (no middleware).
"""

from __future__ import annotations

import os

from flask import Flask, request

from capi_fast import RemediationEngine
from capi_fast.captcha import Captcha
from capi_fast.wsgi import BouncerMiddleware

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "hello from flask"


@app.route("/page", methods=["GET", "POST"])
def page() -> str:
    return f"page {request.query_string.decode()}"


@app.get("/healthz")
def healthz() -> str:
    return "ok"


if os.environ.get("CAPI_FAST_TEST_BARE") != "1":
    engine = RemediationEngine.follow(os.environ["CAPI_FAST_TEST_SNAPSHOT"], check_every=0.05)
    trusted = [t for t in os.environ.get("CAPI_FAST_TEST_TRUSTED", "").split(",") if t]
    verify = os.environ.get("CAPI_FAST_TEST_VERIFY_URL")
    captcha = (
        Captcha("turnstile", site_key="site-key", secret_key="verify-secret", cookie_key="k" * 32, verify_url=verify)
        if verify
        else None
    )
    app.wsgi_app = BouncerMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, engine, trusted_proxies=trusted, captcha=captcha, exclude_paths=["/healthz"]
    )
