"""The benchmark's ASGI app under uvicorn: a minimal Starlette app, bare or behind capi_fast.

``BENCH_MODE``: ``bare`` or ``capi_fast`` (a follower of ``BENCH_SNAPSHOT``, trusting the
``X-Forwarded-For`` that the load generator sets from 127.0.0.1).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from capi_fast import RemediationEngine
from capi_fast.asgi import BouncerMiddleware


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/", hello)])
if os.environ["BENCH_MODE"] == "capi_fast":
    engine = RemediationEngine.follow(os.environ["BENCH_SNAPSHOT"])
    app = BouncerMiddleware(app, engine, trusted_proxies=["127.0.0.1"])  # type: ignore[assignment]
