"""Redis backend on ``redis.asyncio`` (the ``redis`` extra): pub/sub and a connection directory.

Every command has a short socket timeout so a dead Redis fails fast; the client does not
retry on its own: the manager's backplane owns reconnection, backoff and logging.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the Redis backend needs the 'redis' extra: pip install 'fastapi-rooms[redis]'"
    ) from exc

__all__ = ["RedisBackend"]

# Probe an idle connection after 5 s, every 2 s, give up after 3 misses: a dead host is
# noticed in about 11 s even while the pub/sub connection only reads.
_KEEPALIVE = {
    opt: value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if (opt := getattr(socket, name, None)) is not None
}

# Presence of a room: a sorted set (member: connection id, score: expiry in ms, by the Redis
# server's clock so hosts need not agree) and a hash (connection id -> info).
_PRESENCE_SET = """
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], expires, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[1]))
return 0
"""

_PRESENCE_GET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(expired))
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i, cid in ipairs(live) do
  out[#out + 1] = cid
  out[#out + 1] = redis.call('HGET', KEYS[2], cid) or ''
end
return out
"""

_UNREGISTER = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


def redact(url: str) -> str:
    """The URL without its password, for logs and stats."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RedisBackend:
    """Pub/sub channels and ``{prefix}:conn:{id}`` directory keys on one Redis server."""

    def __init__(
        self, url: str, *, prefix: str = "fastapi_rooms", timeout: float = 1.0, **options: Any
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._options = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            "socket_keepalive": True,
            "socket_keepalive_options": _KEEPALIVE,
            **options,
        }
        self._client: aioredis.Redis | None = None
        self._pubsub: Any = None

    def __repr__(self) -> str:
        return f"RedisBackend({redact(self.url)!r}, prefix={self.prefix!r})"

    def _key(self, connection_id: str) -> str:
        return f"{self.prefix}:conn:{connection_id}"

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise ConnectionError("RedisBackend is not connected: call connect() first")
        return self._client

    async def connect(self) -> None:
        await self.disconnect()
        client = aioredis.Redis.from_url(self.url, **self._options)
        await client.ping()
        # The pub/sub connection reads without a timeout; commands keep theirs.
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._client = client

    async def disconnect(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        if pubsub is not None:
            await pubsub.aclose()
        if client is not None:
            await client.aclose()

    async def subscribe(self, channel: str) -> None:
        if self._pubsub is None:
            raise ConnectionError("RedisBackend is not connected")
        await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        if self._pubsub is None:
            raise ConnectionError("RedisBackend is not connected")
        await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, payload: bytes) -> int:
        return int(await self.client.publish(channel, payload))

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish in order in one round trip (a non-transactional pipeline)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for channel, payload in items:
                pipe.publish(channel, payload)
            return [int(n) for n in await pipe.execute()]

    async def listen(self) -> AsyncIterator[tuple[str, bytes]]:
        pubsub = self._pubsub
        if pubsub is None:
            raise ConnectionError("RedisBackend is not connected")
        while True:
            # A blocking read: a server that goes away closes the socket; a host that vanishes
            # is caught by TCP keepalive (see __init__). A read timeout here would race with
            # task cancellation inside redis-py.
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            if message.get("type") != "message":
                continue
            channel = message["channel"]
            data = message["data"]
            yield (
                channel.decode() if isinstance(channel, bytes) else str(channel),
                data if isinstance(data, bytes) else str(data).encode(),
            )

    async def register(self, connection_ids: Iterable[str], node: str, ttl: float) -> None:
        ids = list(connection_ids)
        if not ids:
            return
        ms = max(1, int(ttl * 1000))
        async with self.client.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.set(self._key(cid), node, px=ms)
            await pipe.execute()

    async def unregister(self, connection_ids: Iterable[str], node: str) -> None:
        keys = [self._key(cid) for cid in connection_ids]
        if keys:
            await self.client.eval(_UNREGISTER, len(keys), *keys, node)

    async def locate(self, connection_id: str) -> str | None:
        node = await self.client.get(self._key(connection_id))
        if node is None:
            return None
        return node.decode() if isinstance(node, bytes) else str(node)

    def _presence_keys(self, room: str) -> tuple[str, str]:
        # Separate namespaces: no room name can make one room's key another room's.
        return f"{self.prefix}:presence:z:{room}", f"{self.prefix}:presence:h:{room}"

    async def presence_set(self, entries: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        by_room: dict[str, list[str | bytes]] = {}
        for room, cid, info in entries:
            by_room.setdefault(room, []).extend((cid, info))
        ms = max(1, int(ttl * 1000))
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for room, args in by_room.items():
                    pipe.eval(_PRESENCE_SET, 2, *self._presence_keys(room), ms, *args)
                await pipe.execute()
        except aioredis.ResponseError as exc:  # the server refused: data, not the link
            raise ValueError(f"Redis refused presence entries: {exc}") from exc

    async def presence_remove(self, entries: Sequence[tuple[str, str]]) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for room, cid in entries:
                    zkey, hkey = self._presence_keys(room)
                    pipe.zrem(zkey, cid)
                    pipe.hdel(hkey, cid)
                await pipe.execute()
        except aioredis.ResponseError as exc:
            raise ValueError(f"Redis refused removing presence entries: {exc}") from exc

    async def presence_get(self, room: str) -> dict[str, bytes]:
        flat = await self.client.eval(_PRESENCE_GET, 2, *self._presence_keys(room))
        out: dict[str, bytes] = {}
        for i in range(0, len(flat), 2):
            cid, info = flat[i], flat[i + 1]
            out[cid.decode() if isinstance(cid, bytes) else str(cid)] = (
                info if isinstance(info, bytes) else str(info).encode()
            )
        return out
