"""Who may talk to the gallery, and how: loopback by default, writes only with the page's token
from the page's own origin, and no page of another site reading it through DNS rebinding.

- A random token is made per server and embedded in the page it serves; every write (labels,
  finetune) must carry it in the `X-Faramir-Token` header. A page of another site cannot read it.
- A write whose `Origin` (or, failing that, `Sec-Fetch-Site`) says it comes from another site is
  refused even with the token.
- Bound to a loopback address, the server answers only requests whose `Host` names a loopback
  address: a hostile name re-pointed at 127.0.0.1 (DNS rebinding) gets nothing, not even the page.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

TOKEN_HEADER = "X-Faramir-Token"
LOOPBACK_NAMES = ("localhost",)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address, without port) is this machine only."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(netloc: str) -> str:
    """'127.0.0.1:8765' → '127.0.0.1'; '[::1]:8765' → '::1'."""
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:
        return ""


def host_refusal(host_header: str | None, loopback_only: bool) -> str | None:
    """Why a request with this Host header is refused (None: it is not)."""
    if not loopback_only:
        return None
    if not host_header or not is_loopback(host_name(host_header)):
        return (f"Host {str(host_header)[:80]!r} is not a loopback name; open the gallery at "
                f"http://127.0.0.1:PORT/")
    return None


def write_refusal(headers, token: str | None) -> str | None:
    """Why a write with these request headers is refused (None: it is allowed).

    `token` None means the server is read-only."""
    if token is None:
        return "this gallery is read-only (started with --read-only)"
    origin = headers.get("origin")
    host = headers.get("host") or ""
    if origin is not None and origin != "null":
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return f"cross-origin write refused (Origin {origin[:80]!r} is not this gallery's)"
    elif origin == "null" or headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "cross-origin write refused"
    given = headers.get(TOKEN_HEADER.lower())
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        return f"missing or wrong {TOKEN_HEADER} header; reload the gallery page to get the current token"
    return None
