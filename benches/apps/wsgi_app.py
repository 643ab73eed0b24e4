"""The benchmark's Flask app under gunicorn: bare, behind capi_fast, or behind pycrowdsec.

``BENCH_MODE``: ``bare``; ``capi_fast`` (a follower of ``BENCH_SNAPSHOT``); ``pycrowdsec``
(its Flask middleware over its ``Cache`` holding the decisions of ``BENCH_DECISIONS``, as its
StreamClient would insert them). Both bouncers read the client from ``X-Forwarded-For``.
"""

from __future__ import annotations

import os

from flask import Flask, abort

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "hello"


mode = os.environ["BENCH_MODE"]
if mode == "capi_fast":
    from capi_fast import RemediationEngine
    from capi_fast.wsgi import BouncerMiddleware

    engine = RemediationEngine.follow(os.environ["BENCH_SNAPSHOT"])
    app.wsgi_app = BouncerMiddleware(app.wsgi_app, engine, trusted_proxies=["127.0.0.1"])  # type: ignore[method-assign]
elif mode == "pycrowdsec":
    from pycrowdsec.cache import Cache
    from pycrowdsec.flask import get_crowdsec_middleware

    cache = Cache()
    with open(os.environ["BENCH_DECISIONS"]) as f:
        for line in f:
            value, kind = line.split()
            cache.insert(value, kind)
    actions = {"ban": lambda: abort(403), "captcha": lambda: abort(403)}
    app.before_request(
        get_crowdsec_middleware(actions, cache, ip_transformers=[lambda r: r.headers.get("X-Forwarded-For")])
    )
