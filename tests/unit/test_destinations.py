"""The callback address rule (SPEC §10), pure: nothing is sent anywhere, and host names
resolve through a fake resolver (tests/support/fake_dns.py)."""

from __future__ import annotations

import asyncio
import re

import pytest

from raybeam.destinations import (
    DestinationLimits,
    InvalidCallbackUrl,
    resolve_destination,
    validate_callback_url,
)
from tests.support.fake_dns import use_fake_dns


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_dns(monkeypatch)
    monkeypatch.delenv("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", raising=False)


# --- validate_callback_url -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        None,
        "http://example.com/hook",
        "https://example.com:8443/a?b=c",
        "https://93.184.216.34/hook",
        "http://[2606:4700::1111]:8080/hook",
        "https://v6.example/hook",
        "http://[::ffff:93.184.216.34]/hook",
        "https://user:secret@example.com/hook",
    ],
)
def test_validate_callback_url_accepts_public_destinations(url: str | None) -> None:
    assert validate_callback_url(url) == url


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "not a url", "http://", "https:///path", "example.com/hook"]
)
def test_validate_callback_url_rejects(url: str) -> None:
    with pytest.raises(InvalidCallbackUrl, match=re.escape("https://example.com/hook")):
        validate_callback_url(url)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",  # loopback
        "127.45.6.7",
        "localhost",
        "hooks.localhost",
        "10.1.2.3",  # private
        "172.16.0.1",
        "192.168.0.10",
        "100.64.0.1",  # shared address space (carrier NAT)
        "169.254.169.254",  # link-local: cloud metadata
        "0.0.0.0",  # unspecified
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "[::1]",
        "[::]",
        "[fe80::1]",
        "[fc00::1]",
        "[ff02::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped
        "[::ffff:10.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
        "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
        "[2001:db8::1]",
        "internal.example",  # names that resolve to such addresses
        "metadata.example",
        "mixed.example",  # one public address and one private: refused
        "mapped.example",
    ],
)
def test_addresses_webhooks_may_not_reach_are_refused(
    host: str,
) -> None:
    with pytest.raises(InvalidCallbackUrl, match="RAYBEAM_WEBHOOK_ALLOWED_NETWORKS"):
        validate_callback_url(f"http://{host}:8080/hook")


def test_a_bad_allowed_networks_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8,intranet")
    with pytest.raises(InvalidCallbackUrl, match="'intranet', which is not a network"):
        validate_callback_url("http://example.com/hook")


def test_a_name_that_does_not_resolve_now_passes_until_delivery() -> None:
    assert validate_callback_url("https://not-yet.example/hook") == "https://not-yet.example/hook"


def test_allowed_networks_open_exactly_what_they_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", " 10.0.0.0/8 , ::1/128,")
    assert validate_callback_url("http://10.200.0.1/hook") == "http://10.200.0.1/hook"
    assert validate_callback_url("http://internal.example/h") == "http://internal.example/h"
    assert validate_callback_url("http://[::1]:9/hook") == "http://[::1]:9/hook"
    assert validate_callback_url("http://[::ffff:10.0.0.1]/") == "http://[::ffff:10.0.0.1]/"
    for refused in ("http://127.0.0.1/", "http://192.168.0.1/", "http://169.254.169.254/"):
        with pytest.raises(InvalidCallbackUrl):
            validate_callback_url(refused)
    monkeypatch.setenv("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8")  # read at check time
    assert validate_callback_url("http://[::ffff:127.0.0.1]/") == "http://[::ffff:127.0.0.1]/"
    assert validate_callback_url("http://localhost:9/") == "http://localhost:9/"


def test_delivery_resolves_again_and_refuses_what_the_name_points_to_now() -> None:
    # checked at enqueue: public; at delivery the same name points at loopback
    assert validate_callback_url("http://rebind.example/hook") == "http://rebind.example/hook"
    assert asyncio.run(resolve_destination("http://rebind.example/hook")) is None
    found = asyncio.run(resolve_destination("https://example.com/hook"))
    assert found is not None
    assert (found.scheme, found.host, found.port) == ("https", "example.com", 443)
    assert [str(a) for a in found.addresses] == ["93.184.216.34"]
    assert asyncio.run(resolve_destination("http://mixed.example/")) is None


def test_destination_limits_hold_a_few_slots_per_destination() -> None:
    async def scenario() -> tuple[int, int, int]:
        limits = DestinationLimits(per_destination=2)
        inside = {"a": 0, "b": 0}
        most = {"a": 0, "b": 0}
        release = asyncio.Event()

        async def hold(name: str, url: str) -> None:
            async with limits.slot(url):
                inside[name] += 1
                most[name] = max(most[name], inside[name])
                await release.wait()
                inside[name] -= 1

        held = [asyncio.create_task(hold("a", "http://a.example:81/x")) for _ in range(6)]
        await asyncio.sleep(0.05)
        other = asyncio.create_task(hold("b", "http://b.example/y"))
        await asyncio.sleep(0.05)
        waiting = inside["b"]
        release.set()
        await asyncio.gather(*held, other)
        return most["a"], waiting, len(limits.slots)

    assert asyncio.run(scenario()) == (2, 1, 0)


def test_the_python_enqueue_paths_apply_the_rule() -> None:
    from raybeam import task_queue

    with pytest.raises(InvalidCallbackUrl, match=re.escape("169.254.169.254")):

        @task_queue(name="rule_decorated", callback_url="http://169.254.169.254/latest")
        def decorated() -> None: ...

    @task_queue(name="rule_options")
    def plain() -> None: ...

    for url in ("http://10.0.0.1/hook", "http://localhost:8080/", "http://[::1]/"):
        with pytest.raises(InvalidCallbackUrl):
            plain.options(callback_url=url)
    # public when checked (rebind.example turns to loopback only at delivery)
    for url in ("https://example.com/h", "http://rebind.example:1/x"):
        assert plain.options(callback_url=url)._overrides == {"callback_url": url}
