from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from capi_fast import DecisionIndex
from capi_fast.reference import ReferenceIndex
from support import Clock


@pytest.fixture(params=["native", "reference"])
def make_index(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Builds the native index or the reference: the semantics tests run against both."""
    return DecisionIndex if request.param == "native" else ReferenceIndex


@pytest.fixture
def clock() -> Clock:
    """A controllable clock, shared by a simulator and the clients under test."""
    return Clock()
