"""Admission and limits: tokens, client addresses, origins, connection counts, message rates."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.requests import HTTPConnection

__all__ = ["Limits", "RateLimiter", "client_ip", "get_token", "origin_allowed", "user_id_of"]


@dataclass(frozen=True)
class Limits:
    """Limits a rooms router enforces; ``None`` means unlimited.

    Connections are counted per router and process; rates and idle time per connection (the
    ready endpoint enforces those; custom handlers use ``router.limits.rate_limiter()``).
    """

    max_connections: int | None = None  # open WebSockets; over it: HTTP 503
    max_connections_per_ip: int | None = None  # per client address; over it: HTTP 429
    trusted_proxies: Sequence[str] = ()  # addresses/networks whose X-Forwarded-For is believed
    rate: float | None = None  # inbound messages per second, refilled continuously
    burst: int = 20  # messages that may arrive at once before the rate applies
    idle_timeout: float | None = None  # seconds without an inbound message: closed with 1001

    def __post_init__(self) -> None:
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies entries should be IP addresses or networks, got {proxy!r}"
                ) from None
        if self.rate is not None and self.rate <= 0:
            raise ValueError(
                f"rate should be a positive number of messages a second, got {self.rate!r}"
            )
        if self.burst < 1:
            raise ValueError(f"burst should be at least 1, got {self.burst!r}")

    def rate_limiter(self) -> RateLimiter | None:
        """A new per-connection limiter for ``rate``/``burst`` (None when ``rate`` is None)."""
        return None if self.rate is None else RateLimiter(self.rate, self.burst)


def get_token(
    websocket: HTTPConnection, *, query_param: str = "token", cookie: str | None = "token"
) -> str | None:
    """The token a client sent: ``?token=``, ``Authorization: Bearer``, or a cookie."""
    values = parse_qs(websocket.scope.get("query_string", b"").decode("latin-1"))
    if values.get(query_param):
        return str(values[query_param][0])
    for name, value in websocket.scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = str(value.decode("latin-1")).partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"cookie" and cookie is not None:
            try:
                jar = SimpleCookie(value.decode("latin-1"))
            except CookieError:
                continue
            if cookie in jar and jar[cookie].value:
                return str(jar[cookie].value)
    return None


def _header(websocket: HTTPConnection, wanted: bytes) -> str | None:
    """The header's value; repeated lines joined with commas, in order (RFC 9110)."""
    values = [
        str(value.decode("latin-1"))
        for name, value in websocket.scope.get("headers", ())
        if name == wanted
    ]
    return ", ".join(values) if values else None


def _networks(
    trusted: Iterable[str],
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(t, strict=False) for t in trusted]


def client_ip(websocket: HTTPConnection, trusted_proxies: Sequence[str] = ()) -> str:
    """The client's address: the peer, or, behind trusted proxies, from X-Forwarded-For.

    X-Forwarded-For is read right to left and the first address that is not a trusted proxy
    is the client; a header from an untrusted peer is ignored (anyone can send one).
    """
    client = websocket.scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not trusted_proxies:
        return peer
    networks = _networks(trusted_proxies)

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in networks)

    if not trusted(peer):
        return peer
    forwarded = _header(websocket, b"x-forwarded-for")
    if not forwarded:
        return peer
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer


def origin_allowed(websocket: HTTPConnection, allowed_origins: Sequence[str] | None) -> bool:
    """Cross-site WebSocket hijacking guard.

    ``None`` (the default): a handshake without ``Origin`` (not a browser) or whose Origin's
    host equals the ``Host`` header (same site) passes. A list allows exactly those origins
    (``"https://app.example.com"``) and same-site ones; ``["*"]`` allows any.
    """
    origin = _header(websocket, b"origin")
    if origin is None:
        return True
    allowed = {o.rstrip("/") for o in allowed_origins or ()}
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    host = _header(websocket, b"host")
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def user_id_of(user: Any) -> str:
    """The id of what an ``authenticate`` hook returned: a str, ``.id`` or ``["id"]``."""
    if isinstance(user, str):
        found: Any = user
    elif isinstance(user, Mapping) and "id" in user:
        found = user["id"]
    elif hasattr(user, "id"):
        found = user.id
    else:
        found = _MISSING
    if found is None or found == "":
        raise ValueError(f"authenticate returned a user without an id: {user!r}")
    if found is not _MISSING:
        return str(found)
    raise TypeError(
        f"authenticate returned {type(user).__name__}; expected None, a user id (str), "
        "an object with .id or a mapping with 'id'"
    )


_MISSING = object()


class RateLimiter:
    """Token bucket: ``rate`` messages a second on average, ``burst`` at once.

    One per connection: ``if not limiter.allow(): ...`` before handling a message.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int = 20) -> None:
        if rate <= 0:
            raise ValueError(f"rate should be a positive number of messages a second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst should be at least 1, got {burst!r}")
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        """Take one token: True when the message is within the rate."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
