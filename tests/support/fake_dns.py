"""A resolver for tests: host names resolve from a table, so no DNS query leaves the machine.

`rebind.example` resolves to a public address when a URL is checked and to loopback when a
delivery connects (DNS rebinding); a name missing from the table does not resolve.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from raybeam import destinations

NAMES: dict[str, list[str]] = {
    "example.com": ["93.184.216.34"],
    "v6.example": ["2606:4700::1111"],
    "internal.example": ["10.0.0.5"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": ["93.184.216.34", "192.168.1.10"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "hooks.example": ["127.0.0.1"],
}
REBINDING = "rebind.example"


def fake_addresses(host: str, when: str) -> tuple[Any, ...]:
    literal = destinations._literal(host)
    if literal is not None:
        return literal
    if host == REBINDING:
        return (ipaddress.ip_address("93.184.216.34" if when == "check" else "127.0.0.1"),)
    if host not in NAMES:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return tuple(ipaddress.ip_address(a) for a in NAMES[host])


def use_fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve names from NAMES, at enqueue (`lookup`) and at delivery (`alookup`)."""

    async def alookup(host: str, port: int) -> tuple[Any, ...]:
        return fake_addresses(host, "deliver")

    monkeypatch.setattr(destinations, "lookup", lambda host, port: fake_addresses(host, "check"))
    monkeypatch.setattr(destinations, "alookup", alookup)
