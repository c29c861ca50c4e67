"""What a browser may do with the query API / dashboard, beyond who the caller is (pipeline.access.web).

Three classes of attack come through a browser that the token check alone does not stop:

- **DNS rebinding.** Open access (no token, loopback only) trusts everyone who can reach 127.0.0.1, and a web page
  whose name is made to resolve to 127.0.0.1 is one of them: it would read every audit event. Requests are only
  answered when their ``Host`` names this machine by a loopback name or address (or a name listed in
  ``KAUDIT_API_ALLOWED_HOSTS``, which is then enforced in every mode).
- **Cross-site requests.** Credentials that a browser sends by itself (HTTP basic auth of ``kaudit serve --basic``,
  the ``kaudit_token`` cookie) let another site's form POST here. Requests that change something (any method but
  GET/HEAD/OPTIONS) are refused when the browser says they come from another site (``Sec-Fetch-Site``) or their
  ``Origin`` is not this server, and their bodies must be ``application/json`` (which no cross-site form can send
  without a CORS preflight, and none is ever granted).
- **Content in the page.** Audit events are attacker-controlled text (user agents, names, request URIs); the page
  builds everything with textContent, and a Content-Security-Policy that allows only the server's own scripts makes
  an injection that slipped through inert. Responses also carry nosniff, no framing, no referrer, and API answers
  are not cached."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import web

log = logging.getLogger("kaudit.access")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The dashboard loads /static/ files only; Chart.js draws on canvases (no inline script or style needed).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
AUTH_IN_FRONT = web.AppKey("kaudit_auth_in_front", bool)  # set by `kaudit serve --basic`: open behind basic auth


def host_name(host_header: str) -> str:
    """The name of a ``Host`` header without its port, lower case ('' when it is not a plausible host)."""
    h = host_header.strip().lower()
    if h.startswith("["):  # [v6]:port
        end = h.find("]")
        return h[1:end] if end > 0 else ""
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def is_loopback_name(name: str) -> bool:
    """localhost (and *.localhost, which resolvers must keep on loopback: RFC 6761) or a loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class BrowserGuard:
    """The checks above for one app. ``allowed_hosts`` empty: only open access checks the Host (loopback names);
    else the Host must be one of them or a loopback name, in every mode."""

    def __init__(self, allowed_hosts: Iterable[str], open_access: bool) -> None:
        self.allowed = {host_name(h) for h in allowed_hosts if h.strip()}
        self.open_access = open_access

    def host_refusal(self, host_header: str, auth_in_front: bool = False) -> str | None:
        name = host_name(host_header)
        if not name:  # HTTP/1.0 without Host: not a browser (they all send one), so not a rebinding
            return None
        open_access = self.open_access and not auth_in_front
        if self.allowed:
            if name in self.allowed or is_loopback_name(name):
                return None
            return f"Host {name or '(none)'!r} is not one of KAUDIT_API_ALLOWED_HOSTS"
        if open_access and not is_loopback_name(name):
            return (
                f"Host {name or '(none)'!r} is not a loopback name: open access (no token) answers only "
                "http://127.0.0.1 / localhost (a guard against DNS rebinding); set KAUDIT_API_ALLOWED_HOSTS "
                "or a token to serve other names"
            )
        return None

    @staticmethod
    def cross_site_refusal(req: web.Request) -> str | None:
        if req.method in SAFE_METHODS:
            return None
        site = req.headers.get("Sec-Fetch-Site", "").lower()
        if site in ("cross-site", "same-site"):
            return f"{req.method} from another site refused (Sec-Fetch-Site: {site})"
        origin = req.headers.get("Origin")
        if origin is not None:
            scheme, _, rest = origin.partition("://")
            if origin == "null" or rest.lower().rstrip("/") != req.host.lower():
                return f"{req.method} from origin {origin!r} refused: only this server's own pages may change things"
        if req.can_read_body and req.content_type != "application/json":
            return f"{req.method} bodies must be application/json (got {req.content_type or 'none'})"
        return None


GUARD = web.AppKey("kaudit_browser_guard", BrowserGuard)


@web.middleware
async def browser_middleware(req: web.Request, handler: Any) -> web.StreamResponse:
    guard = req.app[GUARD]
    refusal = guard.host_refusal(req.headers.get("Host", ""), req.app.get(AUTH_IN_FRONT, False))
    status = 421 if refusal else 403
    if refusal is None:
        refusal = guard.cross_site_refusal(req)
        status = 415 if refusal and "application/json" in refusal else 403
    if refusal is not None:
        log.warning("refused %s %s from %s: %s", req.method, req.path, req.remote, refusal)
        return web.json_response({"error": refusal}, status=status)
    return await handler(req)


async def _security_headers(req: web.Request, resp: web.StreamResponse) -> None:
    for k, v in COMMON_HEADERS.items():
        resp.headers.setdefault(k, v)
    html = resp.content_type == "text/html" or req.path in ("/", "/dashboard")
    resp.headers.setdefault("Content-Security-Policy", PAGE_CSP if html else API_CSP)
    if req.path.startswith("/api/"):
        resp.headers.setdefault("Cache-Control", "no-store")


def install(app: web.Application, allowed_hosts: Iterable[str], open_access: bool) -> None:
    """Put the guard in front of ``app`` (outermost: a refused request reaches nothing, not even the token
    check) and the security headers on every response, errors included."""
    if GUARD in app:
        return
    app[GUARD] = BrowserGuard(allowed_hosts, open_access)
    app.middlewares.insert(0, browser_middleware)
    app.on_response_prepare.append(_security_headers)


def webhook_refusal(headers: Any, open_access: bool) -> str | None:
    """The bridge's version: an API server's webhook client (Go's net/http) never sends ``Origin`` or
    ``Sec-Fetch-*``, so a request that carries them is a browser, refused whatever its credentials; with
    ``--no-auth`` (loopback only) the Host must also be a loopback name, or a rebound web page could write
    invented audit events."""
    if "Origin" in headers or "Sec-Fetch-Site" in headers or "Sec-Fetch-Mode" in headers:
        return "requests from a web browser are refused (Origin / Sec-Fetch-* present): the webhook is for API servers"
    if open_access and not is_loopback_name(host_name(headers.get("Host", ""))):
        return "Host is not a loopback name: --no-auth answers only 127.0.0.1 / localhost (a DNS-rebinding guard)"
    return None
