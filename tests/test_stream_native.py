"""The native stream reader against the pure-Python one: same operations, same counts, any input."""

from __future__ import annotations

import ipaddress
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capi_fast import DecisionIndex
from capi_fast._native import parse_stream as native_parse
from capi_fast.errors import ServerError
from capi_fast.stream import parse_stream as python_parse
from support import NOW

PRIORITIES = ["ban", "captcha"]
FALLBACK = "captcha"
MISSING = object()

values = st.sampled_from(
    ["192.0.2.1", "192.0.2.0/24", "10.1.2.3/8", "2001:db8::1", "2001:db8::/48", "::ffff:192.0.2.1", "1.2.3", ""]
) | st.sampled_from([5, None, [], {}])
durations = st.sampled_from(["1h", "30m", "-1s", "1.5h", "500ms", "1h30m2.5s", "2h", "1x", "", "١h"]) | st.sampled_from(
    [3, None]
)
scopes = st.sampled_from(["ip", "Ip", "range", "Range", "country", "", 1, None])
types = st.sampled_from(["ban", "captcha", "custom", "", 2, None])
origins = st.sampled_from(["CAPI", "cscli", "lists:x", "", None, 3])


def _obj(**fields: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose members may each be missing."""
    return st.fixed_dictionaries({}, optional=fields)


flat = _obj(value=values, duration=durations, scope=scopes, type=types, origin=origins, id=st.integers(0, 9))
new_group = _obj(
    scenario=st.just("a/b"),
    scope=scopes,
    decisions=st.lists(_obj(value=values, duration=durations) | st.sampled_from([1, "x", None]), max_size=6)
    | st.sampled_from([None, 3, "x"]),
)
deleted_group = _obj(
    scope=scopes, decisions=st.lists(values, max_size=6) | st.sampled_from([None, 3, {}]), scenario=st.just("a/b")
)
junk = st.sampled_from([1, "x", None, [], [1]])
docs = _obj(
    new=st.lists(flat | new_group | junk, max_size=8) | st.sampled_from([None, {}, 3]),
    deleted=st.lists(flat | deleted_group | junk, max_size=8) | st.sampled_from([None, "x"]),
    links=st.sampled_from([{"blocklists": [{"name": "x", "url": "http://127.0.0.1:1/x"}]}, None, 1]),
    other=st.sampled_from([{"new": [1]}, [1, 2], "x"]),
)


def _mapped(kind: str) -> str:
    return kind if kind in PRIORITIES else FALLBACK


def _key(value: str) -> str | None:
    """The network an index holds for ``value`` (IPv4-mapped IPv6 as IPv4), None if it is not one."""
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is not None and net.prefixlen >= 96:
        return f"{mapped}/{net.prefixlen - 96}"
    return str(net)


def _stream_adds(batch: Any, held: dict[tuple[str, str, str], float]) -> list[tuple[str, str, float, str]]:
    """The stream rule on plain adds: an add never shortens what is held, an expired one does nothing."""
    live = dict(held)
    for v, o, t in batch.remove:
        for k in [k for k in live if k[0] == _key(v) and k[1] == o and (t is None or k[2] == _mapped(t))]:
            del live[k]
    longest: dict[tuple[str, str, str], float] = {}
    for v, t, ttl, o in batch.add:
        k = (_key(v) or v, o, _mapped(t))
        if ttl > 0:
            longest[k] = max(longest.get(k, 0.0), ttl, live.get(k, 0.0))
    return [
        (v, _mapped(t), longest.get((_key(v) or v, o, _mapped(t)), ttl), o)
        for v, t, ttl, o in batch.add
        if ttl > 0 or _key(v) is None  # a bad value is skipped and counted either way
    ]


def _apply_python(index: DecisionIndex, doc: dict[str, Any], held: dict[tuple[str, str, str], float]) -> Any:
    batch = python_parse(doc)
    result = index.apply(
        add=_stream_adds(batch, held),
        remove=[(v, o, None if t is None else _mapped(t)) for v, o, t in batch.remove],
        strict=False,
        now=NOW,
    )
    return batch, result


def _probe(index: DecisionIndex) -> list[Any]:
    addresses = ["192.0.2.1", "192.0.2.77", "10.200.0.1", "2001:db8::1", "2001:db8:0:1::5", "8.8.8.8"]
    return [len(index)] + [
        index.lookup(a, now=NOW + dt) for a in addresses for dt in (0.0, 0.4, 1000.0, 2000.0, 4000.0, 8000.0)
    ]


@settings(max_examples=300, deadline=None)
@given(docs, st.lists(st.tuples(values.filter(lambda v: isinstance(v, str)), st.sampled_from(PRIORITIES)), max_size=4))
def test_native_reader_matches_python(doc: dict[str, Any], held: list[tuple[str, str]]) -> None:
    body = orjson.dumps(doc)
    py_index, native_index = DecisionIndex(PRIORITIES), DecisionIndex(PRIORITIES)
    # Both start from the same decisions, so that removals have something to remove.
    for index in (py_index, native_index):
        index.apply(add=[(v, r, 3600.0, "CAPI") for v, r in held], strict=False, now=NOW)
    start = {(k, "CAPI", r): 3600.0 for v, r in held if (k := _key(v)) is not None}
    batch, expected = _apply_python(py_index, doc, start)
    parsed = native_parse(body)
    got = native_index.apply(stream=parsed, fallback=FALLBACK, strict=False, now=NOW)
    assert (got.added, got.refreshed, got.removed, got.skipped, got.normalized) == (
        expected.added,
        expected.refreshed,
        expected.removed,
        batch.skipped + expected.skipped,
        expected.normalized,
    )
    assert _probe(native_index) == _probe(py_index)
    links = doc.get("links", MISSING)
    assert parsed.links == (None if links is MISSING else orjson.dumps(links))


def test_v2_answer_of_crowdsec_146() -> None:
    body = (
        b'{"deleted":null,"new":[{"duration":"3h59m59.65s","id":1,"origin":"cscli","scenario":"test",'
        b'"scope":"Ip","type":"ban","value":"1.2.3.4"},{"duration":"3h59m59.65s","id":2,"origin":"cscli",'
        b'"scenario":"manual","scope":"Range","type":"captcha","value":"10.0.0.0/8"}]}'
    )
    parsed = native_parse(body)
    assert (parsed.adds, parsed.removes, parsed.skipped, parsed.links) == (2, 0, 0, None)
    index = DecisionIndex()
    index.apply(stream=parsed, now=NOW)
    assert index.lookup("10.9.9.9", now=NOW + 14399) == "captcha"
    assert index.lookup("10.9.9.9", now=NOW + 14400) is None
    assert index.lookup("1.2.3.4", now=NOW) == "ban"


def test_escaped_strings_are_read() -> None:
    body = b'{"new":[{"scope":"\\u0069p","decisions":[{"value":"192.0.2.\\u0031","duration":"1\\u0068"}]}]}'
    index = DecisionIndex()
    index.apply(stream=native_parse(body), now=NOW)
    assert index.lookup("192.0.2.1", now=NOW + 3599) == "ban"


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"null", b'"x"', b"{} {}", b'{"new":[}', b"\xff"])
def test_a_body_that_is_not_a_json_object_is_a_server_error(body: bytes) -> None:
    with pytest.raises(ServerError, match="not valid JSON"):
        native_parse(body)


def test_unknown_types_take_the_fallback_and_a_stream_applies_with_other_items() -> None:
    body = orjson.dumps(
        {"new": [{"scope": "ip", "value": "192.0.2.1", "type": "tarpit", "duration": "1h", "origin": "cscli"}]}
    )
    index = DecisionIndex()
    r = index.apply(
        add=[("198.51.100.1", "ban", 60.0, "lists:x")], stream=native_parse(body), fallback="captcha", now=NOW
    )
    assert r.added == 2
    assert index.lookup("192.0.2.1", now=NOW) == "captcha"
    assert index.lookup("198.51.100.1", now=NOW) == "ban"
    # Without fallback the type is kept as it is (ranked below the priorities).
    other = DecisionIndex()
    other.apply(stream=native_parse(body), now=NOW)
    assert other.lookup("192.0.2.1", now=NOW) == "tarpit"
