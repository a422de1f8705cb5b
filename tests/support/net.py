"""Loopback ports for the servers the tests start."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that nothing is handed later
    unasked: above Ray's worker ports (10002-19999) and below the kernel's range for the
    local ports of outgoing connections. A port from `free_port` comes from that range, and
    one kept for minutes can be taken meanwhile by a connection's local end (Serve's proxy
    then failed to bind the session's port)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: no range known
        return free_port()
    if ephemeral <= 20_000:
        return free_port()
    for _ in range(200):
        port = random.randrange(20_000, ephemeral)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port between 20000 and {ephemeral}")
