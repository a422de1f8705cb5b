"""Keep the Ray clusters that tests, benchmarks and the demo start on loopback.

Ray's dashboard (started even with `include_dashboard=False`, in its minimal mode) asks the
cloud metadata addresses (169.254.169.254, metadata.google.internal) which cloud it runs on,
whatever `RAY_USAGE_STATS_ENABLED` says. It asks through `requests`, which honours proxy
variables: pointing them at a closed loopback port, with loopback exempt, makes those probes
fail at once without a packet or a DNS query leaving the machine.
"""

from __future__ import annotations

import os

#: a loopback port nothing listens on (discard): a proxy there refuses every connection
DEAD_PROXY = "http://127.0.0.1:9"
LOOPBACK = "127.0.0.1,localhost,::1"


def keep_on_loopback(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Set the proxy variables (unless set already) before a Ray cluster starts."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        environ.setdefault(name, DEAD_PROXY)
    for name in ("no_proxy", "NO_PROXY"):
        environ.setdefault(name, LOOPBACK)
