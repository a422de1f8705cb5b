"""The dashboard (SPEC §9): web pages over the same registry, shipped as package data.

Wire it into `create_app` with the cookie middleware outside the guard::

    app.add_middleware(Guard)
    app.add_middleware(dashboard.CookieAuth)  # added after: runs before the guard
    app.include_router(dashboard.dashboard_router())

and let the guard pass `dashboard.is_public(method, path)` without a token.
"""

from __future__ import annotations

from serve_app.dashboard.router import dashboard_router
from serve_app.dashboard.session import COOKIE, CookieAuth, is_public, same_origin

__all__ = ["COOKIE", "CookieAuth", "dashboard_router", "is_public", "same_origin"]
