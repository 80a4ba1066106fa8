"""Backends move messages between processes; the manager owns membership."""

from __future__ import annotations

from typing import Any

from .base import Backend
from .memory import MemoryBackend, MemoryBroker

__all__ = ["Backend", "MemoryBackend", "MemoryBroker", "backend_from_url"]


def backend_from_url(url: str, **options: Any) -> Backend:
    """``redis://`` / ``rediss://`` / ``unix://`` URLs make a RedisBackend;
    ``redis+cluster://host:port,host:port`` (or ``rediss+cluster://``) a RedisClusterBackend."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBackend

        return RedisBackend(url, **options)
    if scheme in ("redis+cluster", "rediss+cluster"):
        from .redis_cluster import RedisClusterBackend

        return RedisClusterBackend(url, **options)
    raise ValueError(
        f"unsupported backend URL {url!r}: expected redis://, rediss://, unix:// or "
        "redis+cluster:// (or pass a backend object)"
    )
