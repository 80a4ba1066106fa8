"""Redis backend on ``redis.asyncio`` (the ``redis`` extra): pub/sub and a connection directory.

Every command has a short socket timeout so a dead Redis fails fast; the client does not
retry on its own: the manager's backplane owns reconnection, backoff and logging.
"""

from __future__ import annotations

import hashlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the Redis backend needs the 'redis' extra: pip install 'fastapi-rooms[redis]'"
    ) from exc

from ..history import HistoryPage, Position
from .base import Append, room_tag

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


# Room history: a hash (e: epoch, n: latest offset) and two lists in step, the frames and the
# times (ms, Redis's clock) they were kept; the lists hold offsets n - LLEN + 1 .. n. Scripts
# run atomically, so an offset is assigned, kept and published in one step: one order per
# room across every node. KEYS: hash, frames, times.
_HISTORY_START = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function start(candidate, keep)
  local epoch = redis.call('HGET', KEYS[1], 'e')
  if not epoch then
    epoch = candidate
    redis.call('DEL', KEYS[2], KEYS[3])
    redis.call('HSET', KEYS[1], 'e', epoch, 'n', 0)
    redis.call('PEXPIRE', KEYS[1], keep)
  elseif redis.call('LLEN', KEYS[2]) ~= redis.call('LLEN', KEYS[3]) then
    redis.call('DEL', KEYS[2], KEYS[3])  -- one list evicted or expired alone: start them over
  end
  return epoch
end
local function trim(now, ttl)
  while true do
    local first = redis.call('LINDEX', KEYS[3], 0)
    if not first or now - tonumber(first) <= ttl then return end
    redis.call('LPOP', KEYS[3])
    redis.call('LPOP', KEYS[2])
  end
end
"""


def _append_script(publish: str) -> str:
    """The append script, publishing with ``publish`` (PUBLISH, or SPUBLISH on a cluster)."""
    # ARGV: channel, envelope prefix, frame head, frame tail, size, ttl ms, keep ms, epoch candidate
    return (
        _HISTORY_START
        + """
local now = now_ms()
local epoch = start(ARGV[8], tonumber(ARGV[7]))
local offset = redis.call('HINCRBY', KEYS[1], 'n', 1)
local frame = ARGV[3] .. offset .. ARGV[4]
redis.call('RPUSH', KEYS[2], frame)
redis.call('RPUSH', KEYS[3], now)
local size = tonumber(ARGV[5])
redis.call('LTRIM', KEYS[2], -size, -1)
redis.call('LTRIM', KEYS[3], -size, -1)
local ttl = tonumber(ARGV[6])
trim(now, ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
redis.call('"""
        + publish
        + """', ARGV[1], ARGV[2] .. offset .. ' ' .. epoch .. ' ' .. frame)
return offset
"""
    )


_HISTORY_APPEND = _append_script("PUBLISH")

# ARGV: since, limit (-1: all), ttl ms, keep ms, epoch candidate, epoch expected ('' any)
# -> {epoch, latest offset, oldest kept offset, frames after since (none if another epoch)}
_HISTORY_READ = (
    _HISTORY_START
    + """
local epoch = start(ARGV[5], tonumber(ARGV[4]))
trim(now_ms(), tonumber(ARGV[3]))
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
local oldest = n - redis.call('LLEN', KEYS[2]) + 1
local since, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local frames = {}
if (ARGV[6] == '' or ARGV[6] == epoch) and since >= oldest - 1 and since < n and limit ~= 0 then
  local first = since + 1 - oldest
  local last = -1
  if limit > 0 then last = first + limit - 1 end
  frames = redis.call('LRANGE', KEYS[2], first, last)
end
return {epoch, n, oldest, frames}
"""
)

# ARGV: keep ms, the latest offset a node delivered, epoch candidate -> {epoch, offset}, or {}
# when the history is gone. Behind what was delivered (a failover to a replica that lagged, a
# restore from an older dump), the history is not the one clients saw: start a new epoch.
_HISTORY_TOUCH = """
local kept = redis.call('HMGET', KEYS[1], 'e', 'n')
if not kept[1] then return {} end
if tonumber(kept[2]) < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'e', ARGV[3], 'n', 0)
  kept = {ARGV[3], 0}
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return kept
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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

    confirms_subscriptions = True  # SUBSCRIBE is only sent; Redis's reply comes on listen()
    _publish = "PUBLISH"
    _append = _HISTORY_APPEND

    def __init__(
        self, url: str, *, prefix: str = "fastapi_rooms", timeout: float = 1.0, **options: Any
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._append_sha = hashlib.sha1(self._append.encode()).hexdigest()  # Redis's script id
        self._options = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            "socket_keepalive": True,
            "socket_keepalive_options": _KEEPALIVE,
            **options,
        }
        self._client: aioredis.Redis | RedisCluster | None = None
        self._pubsub: Any = None

    def __repr__(self) -> str:
        return f"RedisBackend({redact(self.url)!r}, prefix={self.prefix!r})"

    def _key(self, connection_id: str) -> str:
        return f"{self.prefix}:conn:{connection_id}"

    def _history_keys(self, room: str) -> tuple[str, str, str]:
        # One hash tag per room, so its three keys share a Redis Cluster slot: a digest of
        # the name, as a name with braces ("}{") would make the tag empty or cut it short.
        base = f"{self.prefix}:history:{{{room_tag(room)}}}:{room}"
        return f"{base}:meta", f"{base}:frames", f"{base}:times"

    @property
    def client(self) -> aioredis.Redis | RedisCluster:
        if self._client is None:
            raise ConnectionError("RedisBackend is not connected: call connect() first")
        return self._client

    async def connect(self) -> None:
        await self.disconnect()
        client = aioredis.Redis.from_url(self.url, **self._options)
        await client.ping()
        await client.script_load(self._append)  # appends then send its SHA1 only
        # The pub/sub connection reads without a timeout; commands keep theirs.
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)
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
        return int(await self.client.execute_command(self._publish, channel, payload))

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish in order in one round trip (a non-transactional pipeline)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for channel, payload in items:
                pipe.execute_command(self._publish, channel, payload)
            return [int(n) for n in await pipe.execute()]

    async def write_many(
        self, items: Sequence[tuple[str, bytes | Append]]
    ) -> list[int | Exception]:
        """``publish_many``, each ``Append`` run by the history script in the same pipeline;
        an item Redis refused (out of memory, a key of another type) is its error."""
        calls: dict[int, tuple[Any, ...]] = {}  # item index -> EVALSHA arguments
        async with self.client.pipeline(transaction=False) as pipe:
            for i, (channel, item) in enumerate(items):
                if isinstance(item, bytes):
                    pipe.execute_command(self._publish, channel, item)
                    continue
                calls[i] = args = (
                    self._append_sha, 3, *self._history_keys(item.room), channel, item.prefix,
                    item.head, item.tail, item.size, _ms(item.ttl), _ms(max(item.keep, item.ttl)),
                    uuid.uuid4().hex[:16],
                )  # fmt: skip
                # The script by its SHA1 (loaded at connect, not resent). Through execute_command:
                # redis-py's cluster pipeline blocks its evalsha(), as NOSCRIPT is ours to handle.
                pipe.execute_command("EVALSHA", *args)
            replies = list(await pipe.execute(raise_on_error=False))
        lost = [i for i in calls if isinstance(replies[i], NoScriptError)]
        if lost:  # Redis forgot the script (SCRIPT FLUSH): load it again, run those in order
            await self.client.script_load(self._append)
            async with self.client.pipeline(transaction=False) as pipe:
                for i in lost:
                    pipe.execute_command("EVALSHA", *calls[i])
                again = await pipe.execute(raise_on_error=False)
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
        out: list[int | Exception] = []
        for reply in replies:
            if isinstance(reply, Exception):
                if not self._refused(reply):
                    raise reply  # the link or the cluster, not this item: reconnect
                out.append(reply)
            else:
                out.append(int(reply))
        return out

    def _refused(self, error: Exception) -> bool:
        """An error about the item itself (out of memory, a key of another type), not the link."""
        return isinstance(error, aioredis.ResponseError)

    async def history_read(
        self, room: str, since: int, epoch: str | None, limit: int | None, ttl: float, keep: float
    ) -> HistoryPage:
        kept, latest, oldest, frames = await self.client.eval(
            _HISTORY_READ,
            3,
            *self._history_keys(room),
            since,
            -1 if limit is None else limit,
            _ms(ttl),
            _ms(max(keep, ttl)),
            uuid.uuid4().hex[:16],
            epoch or "",
        )
        position = Position(int(latest), _text(kept))
        complete = (
            (epoch is None or epoch == position.epoch)
            and 0 <= since <= position.offset
            and since + 1 >= int(oldest)
        )
        return HistoryPage(position, [_text(f) for f in frames] if complete else [], complete)

    async def history_touch(self, rooms: Sequence[tuple[str, float, int]]) -> list[Position | None]:
        if not rooms:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for room, keep, last in rooms:  # one script per room: rooms may be on other slots
                pipe.eval(
                    _HISTORY_TOUCH,
                    3,
                    *self._history_keys(room),
                    _ms(keep),
                    last,
                    uuid.uuid4().hex[:16],
                )
            replies = await pipe.execute()
        return [Position(int(r[1]), _text(r[0])) if r else None for r in replies]

    async def listen(self) -> AsyncIterator[tuple[str, bytes | None]]:
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
            kind = message.get("type")
            if kind == "subscribe":
                yield _text(message["channel"]), None  # Redis confirmed the subscription
                continue
            if kind != "message":
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
        # Separate namespaces: no room name can make one room's key another room's. One hash
        # tag: both keys share a Redis Cluster slot, as the presence scripts need.
        base = f"{self.prefix}:presence:{{{room_tag(room)}}}"
        return f"{base}:z:{room}", f"{base}:h:{room}"

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
