"""RemediationEngine over a real CrowdSec Local API (Debian's crowdsec 1.4.6, ``-no-cs``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from capi_fast.async_engine import AsyncRemediationEngine
from capi_fast.engine import RemediationEngine
from capi_fast.errors import AuthenticationError, ConfigurationError
from capi_fast.lapi import AsyncLapiClient, LapiClient
from crowdsec_support import local_api, require_crowdsec, run_cscli

require_crowdsec()


run = run_cscli


@pytest.fixture
def lapi(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    with local_api(tmp_path) as found:
        yield found


def test_engine_follows_cscli_decisions(lapi):
    config, url, key = lapi
    with LapiClient(url, key) as client:
        engine = RemediationEngine(client)
        assert engine.min_interval == 0, "no 2-hour rule against a local API"
        r = engine.refresh_decisions()
        assert r.performed and r.startup and r.added == 0

        run(config, "decisions", "add", "--ip", "192.0.2.10", "--type", "ban", "--duration", "1h")
        run(config, "decisions", "add", "--range", "198.51.100.0/24", "--type", "captcha", "--duration", "1h")
        run(config, "decisions", "add", "--range", "2001:db8::/32", "--type", "ban", "--duration", "1h")
        run(config, "decisions", "add", "--ip", "192.0.2.11", "--type", "throttle", "--duration", "1h")
        r = engine.refresh_decisions()
        assert r.performed and not r.startup and r.added == 4, r
        assert engine.get_ip_remediation("192.0.2.10") == "ban"
        assert engine.get_ip_remediation("198.51.100.200") == "captcha"
        assert engine.get_ip_remediation("2001:db8:1::5") == "ban"
        assert engine.get_ip_remediation("192.0.2.11") == "captcha", "unknown type -> fallback"
        assert engine.get_ip_remediation("203.0.113.1") == "bypass"
        assert engine.counters == {("cscli", "ban"): 2, ("cscli", "captcha"): 2, ("clean", "bypass"): 1}

        async def async_twin() -> list[str]:
            async with AsyncLapiClient(url, key) as aclient:
                twin = AsyncRemediationEngine(aclient)
                report = await twin.refresh_decisions()
                assert report.performed and report.startup and report.added == 4, report
                return [twin.get_ip_remediation(ip) for ip in ("192.0.2.10", "198.51.100.1", "192.0.2.11", "10.0.0.1")]

        assert asyncio.run(async_twin()) == ["ban", "captcha", "captcha", "bypass"]

        run(config, "decisions", "delete", "--ip", "192.0.2.10")
        run(config, "decisions", "delete", "--range", "198.51.100.0/24")
        r = engine.refresh_decisions()
        assert r.deleted == 2, r
        assert engine.get_ip_remediation("192.0.2.10") == "bypass"
        assert engine.get_ip_remediation("198.51.100.200") == "bypass"
        assert engine.get_ip_remediation("2001:db8::1") == "ban"


def test_wrong_key_is_an_authentication_error(lapi):
    _, url, _ = lapi
    with LapiClient(url, "not-a-key", retries=0) as client:
        with pytest.raises(AuthenticationError, match="LAPI answered 403"):
            client.get_stream_decisions(startup=True)


def test_cli_reads_the_lapi_key_from_a_private_file(lapi, tmp_path, capsys):
    from capi_fast.cli import main

    config, url, key = lapi
    run(config, "decisions", "add", "-i", "192.0.2.44", "-d", "1h")
    keyfile = tmp_path / "lapi.key"
    keyfile.write_text(key + "\n")
    keyfile.chmod(0o644)
    home = ["--home", str(tmp_path / "home"), "--lapi-url", url, "--api-key-file", str(keyfile)]
    assert main([*home, "refresh"]) == 2
    assert "readable by other users" in capsys.readouterr().err, "a key others can read is refused"
    keyfile.chmod(0o600)
    assert main([*home, "refresh"]) == 0
    assert main([*home, "check", "192.0.2.44"]) == 1, "remediated: exit 1"
    assert capsys.readouterr().out.strip().endswith("192.0.2.44 ban")


def test_stream_filters_reach_the_lapi(lapi):
    """The remediation-component spec's stream filters, applied by a real crowdsec."""
    config, url, key = lapi
    run(config, "decisions", "add", "--ip", "192.0.2.20", "--type", "ban", "--duration", "1h")
    run(config, "decisions", "add", "--range", "198.51.100.0/24", "--type", "ban", "--duration", "1h")

    def values(**filters) -> set[str]:
        with LapiClient(url, key, **filters) as c:
            doc = c.get_stream_decisions(startup=True)
        return {d["value"] for d in doc.get("new") or []}

    assert values() == {"192.0.2.20", "198.51.100.0/24"}
    assert values(scopes=["ip"]) == {"192.0.2.20"}
    assert values(origins=["crowdsec"]) == set(), "cscli decisions are of origin cscli"
    assert values(origins=["cscli"]) == {"192.0.2.20", "198.51.100.0/24"}
    assert values(scenarios_not_containing=["manual"]) == set(), "cscli decisions are 'manual ...'"
    assert values(scenarios_containing=["manual"]) == {"192.0.2.20", "198.51.100.0/24"}
    with pytest.raises(ConfigurationError):
        LapiClient(url, key, scopes="ip")
    with pytest.raises(ConfigurationError):
        LapiClient(url, key, origins=["a,b"])
