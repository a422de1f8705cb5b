"""Where a webhook may go (SPEC §10): http(s) only, and never to an address on this machine,
its private networks, link-local (cloud metadata), multicast, unspecified or reserved space,
unless an operator lists the network in `RAYBEAM_WEBHOOK_ALLOWED_NETWORKS`.

The rule runs twice: when a `callback_url` is given (`validate_callback_url`), and at
delivery on the very addresses the sender then connects to (`resolve_destination`), so a
name that resolves elsewhere later (DNS rebinding) gains nothing. Nothing here sends a
request; a host name is resolved with the system resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from raybeam.errors import RaybeamError

__all__ = [
    "ALLOWED_NETWORKS_ENV",
    "NOT_ALLOWED",
    "Destination",
    "DestinationLimits",
    "InvalidCallbackUrl",
    "allowed_networks",
    "is_allowed",
    "resolve_destination",
    "validate_callback_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: comma-separated CIDRs an operator opens to webhooks, e.g. `127.0.0.0/8,10.0.0.0/8`
ALLOWED_NETWORKS_ENV = "RAYBEAM_WEBHOOK_ALLOWED_NETWORKS"
#: the error recorded on a delivery refused by the rule
NOT_ALLOWED = "address not allowed"
#: concurrent attempts to one scheme://host:port; more wait their turn
PER_DESTINATION = 8
_EXAMPLE = "give an absolute URL such as 'https://example.com/hook'"


class InvalidCallbackUrl(RaybeamError, ValueError):
    """A `callback_url` that is not an absolute http(s) URL with a host, or whose host is
    (or resolves to) an address that webhooks may not reach."""


@dataclass(frozen=True)
class Destination:
    """A checked webhook destination: the name from the URL and the addresses it resolved to."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def allowed_networks() -> tuple[Network, ...]:
    """The networks of `RAYBEAM_WEBHOOK_ALLOWED_NETWORKS`, read now (not cached)."""
    raw = os.environ.get(ALLOWED_NETWORKS_ENV, "")
    networks: list[Network] = []
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise InvalidCallbackUrl(
                f"{ALLOWED_NETWORKS_ENV} holds {part.strip()!r}, which is not a network; "
                "give comma-separated CIDRs such as '127.0.0.0/8,10.0.0.0/8'"
            ) from None
    return tuple(networks)


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """`ip`, and the IPv4 address that an IPv6 form of it carries (v4-mapped, 6to4, Teredo)."""
    found: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return [ip.ipv4_mapped]  # ::ffff:a.b.c.d is a.b.c.d, nothing else
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.append(ip.teredo[1])
    return found


def _forbidden(ip: IPAddress) -> bool:
    return (
        not ip.is_global
        or ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
    )


def is_allowed(ip: IPAddress, networks: tuple[Network, ...] | None = None) -> bool:
    """True when a webhook may connect to `ip` (a public address, or one in `networks`,
    by default `RAYBEAM_WEBHOOK_ALLOWED_NETWORKS`)."""
    networks = allowed_networks() if networks is None else networks
    candidates = _embedded(ip)
    if any(c in n for c in candidates for n in networks if c.version == n.version):
        return True
    return not any(_forbidden(c) for c in candidates)


def _parse(url: object) -> tuple[SplitResult, str, int]:
    if not isinstance(url, str):
        raise InvalidCallbackUrl(
            "callback_url must be a string such as 'https://example.com/hook', "
            f"got {type(url).__name__}"
        )
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise InvalidCallbackUrl(
            f"callback_url {url!r} has no valid host and port; {_EXAMPLE}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidCallbackUrl(f"callback_url {url!r} is not an http(s) URL; {_EXAMPLE}")
    if not parts.hostname or port == 0:
        raise InvalidCallbackUrl(f"callback_url {url!r} has no valid host and port; {_EXAMPLE}")
    return parts, parts.hostname.rstrip(".").lower(), port or (443 if scheme == "https" else 80)


def _literal(host: str) -> tuple[IPAddress, ...] | None:
    """The addresses a host names without DNS: an IP literal, or a `localhost` name."""
    try:
        return (ipaddress.ip_address(host.split("%", 1)[0]),)
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
        return (ipaddress.IPv4Address("127.0.0.1"),)
    return None


def _addresses(infos: list[tuple[object, ...]]) -> tuple[IPAddress, ...]:
    found: dict[IPAddress, None] = {}
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        found[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    return tuple(found)


def lookup(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to (the system resolver); raises OSError when none."""
    literal = _literal(host)
    if literal is not None:
        return literal
    return _addresses(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))  # type: ignore[arg-type]


async def alookup(host: str, port: int) -> tuple[IPAddress, ...]:
    """`lookup` without blocking the event loop."""
    literal = _literal(host)
    if literal is not None:
        return literal
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return _addresses(infos)  # type: ignore[arg-type]


def _refusal(url: str, host: str, refused: list[IPAddress]) -> InvalidCallbackUrl:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        where = "is"
    except ValueError:
        where = f"resolves to {', '.join(str(ip) for ip in refused)}, among them"
    return InvalidCallbackUrl(
        f"callback_url {url!r}: {host} {where} a loopback, private, link-local, multicast, "
        "unspecified or reserved address, where webhooks may not go; give a public URL, or "
        f"list its network in {ALLOWED_NETWORKS_ENV} (such as '10.0.0.0/8')"
    )


def validate_callback_url(url: str | None) -> str | None:
    """Return `url` unchanged when webhooks may go there (None passes too); else raise
    InvalidCallbackUrl. Sends nothing: a host name is only resolved. A name that does not
    resolve now passes, since delivery checks the addresses again before connecting.

    >>> validate_callback_url("https://93.184.216.34/hook")
    'https://93.184.216.34/hook'
    """
    if url is None:
        return None
    _, host, port = _parse(url)
    networks = allowed_networks()
    try:
        addresses = lookup(host, port)
    except (OSError, UnicodeError):
        return url
    refused = [ip for ip in addresses if not is_allowed(ip, networks)]
    if refused:
        raise _refusal(url, host, refused)
    return url


async def resolve_destination(url: str) -> Destination | None:
    """The destination of `url` resolved once, for the sender to connect to; None when one of
    its addresses is not allowed. Raises InvalidCallbackUrl for a malformed URL and OSError
    when the name does not resolve."""
    parts, host, port = _parse(url)
    networks = allowed_networks()
    addresses = await alookup(host, port)
    if not addresses or not all(is_allowed(ip, networks) for ip in addresses):
        return None
    return Destination(parts.scheme.lower(), host, port, addresses)


class DestinationLimits:
    """At most `per_destination` attempts at once to one scheme://host:port, so a slow
    receiver holds a few connections, not the sender's pool."""

    def __init__(self, per_destination: int = PER_DESTINATION) -> None:
        self.per_destination = per_destination
        self.slots: dict[tuple[str, ...], asyncio.Semaphore] = {}
        self.users: dict[tuple[str, ...], int] = {}

    @staticmethod
    def key(url: str) -> tuple[str, ...]:
        try:
            parts = urlsplit(url)
            return (parts.scheme.lower(), (parts.hostname or "").lower(), str(parts.port))
        except ValueError:
            return (url,)

    @contextlib.asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[None]:
        key = self.key(url)
        semaphore = self.slots.setdefault(key, asyncio.Semaphore(self.per_destination))
        self.users[key] = self.users.get(key, 0) + 1
        try:
            async with semaphore:
                yield
        finally:
            self.users[key] -= 1
            if not self.users[key]:  # nobody holds or awaits it: drop it
                del self.users[key], self.slots[key]
