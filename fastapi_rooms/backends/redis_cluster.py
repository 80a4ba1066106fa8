"""Redis Cluster backend (the ``redis`` extra): sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``).

A room's channel, history and presence keys carry the room's hash tag, so they live on one
shard and the atomic history script publishes from the shard that numbers the message. Node,
user and probe channels spread over the shards by their names. There is one pub/sub connection
per master (not per room) and one cluster client for commands, which follows MOVED and ASK.

Failure is loud and whole: a shard that closes its connection, refuses a subscription (MOVED
after a failover or a reshard) or ends one (Redis unsubscribes a slot's channels when the slot
moves) makes ``listen()`` raise, and the backplane reconnects to every shard with the cluster's
new layout, as it does for one Redis; rooms with history recover what was missed by offsets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterError, MovedError, TryAgainError

from .redis import RedisBackend, _append_script, _text, redact

__all__ = ["RedisClusterBackend"]

_log = logging.getLogger("fastapi_rooms.backplane")

_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
_QUEUE = 10_000  # messages read from the shards, waiting for the backplane
# RedisCluster's own options; the rest also go to each master's pub/sub connection.
_CLUSTER_ONLY = frozenset({
    "require_full_coverage", "read_from_replicas", "load_balancing_strategy",
    "dynamic_startup_nodes", "reinitialize_steps", "cluster_error_retry_attempts",
    "address_remap", "policy_resolver",
})  # fmt: skip
# Replies about the cluster's layout, not about a message: the node reconnects with the new one.
_LAYOUT_ERRORS = (ClusterError, MovedError, AskError, TryAgainError)


def _startup(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``redis+cluster://[user:password@]host:port[,host:port...]`` -> nodes and options."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"a Redis Cluster URL starts redis+cluster:// or rediss+cluster://, got {url!r}"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    options: dict[str, Any] = {"ssl": _SCHEMES[scheme]}
    if userinfo:
        user, _, password = userinfo.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) or None
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"Redis Cluster has database 0 only; {url!r} names {parts.path[1:]!r}")
    if parse_qs(parts.query):
        raise ValueError(f"options go to RedisClusterBackend(..., **options), not the URL: {url!r}")
    nodes: list[tuple[str, int]] = []
    for hostport in filter(None, hosts.split(",")):
        host, sep, port = hostport.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected host:port in {url!r}, got {hostport!r}")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError(f"no host:port in {url!r}")
    return nodes, options


class RedisClusterBackend(RedisBackend):
    """Rooms over Redis Cluster 7+ with sharded pub/sub; ``RoomManager("redis+cluster://...")``.

    Everything ``RedisBackend`` guarantees holds: one order per room (its messages go through
    one shard), recovery by offsets, presence, loud failure. Give two or more seed nodes so
    start-up survives one being down.
    """

    _publish = "SPUBLISH"
    _append = _append_script("SPUBLISH")
    sharded = True  # channels are named per shard: the backplane refuses a prefix with braces

    def __init__(
        self, url: str, *, prefix: str = "fastapi_rooms", timeout: float = 1.0, **options: Any
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(
                f"a Redis Cluster prefix cannot hold braces (they would be every key's hash "
                f"tag, putting all rooms on one shard), got {prefix!r}"
            )
        self._seeds, credentials = _startup(url)
        super().__init__(url, prefix=prefix, timeout=timeout, **credentials, **options)
        self._shards: dict[str, tuple[aioredis.Redis, PubSub]] = {}  # master name -> pub/sub
        self._where: dict[str, str] = {}  # subscribed channel -> master name
        self._read_at: dict[str, float] = {}  # master name -> when its socket last gave a message
        # SUNSUBSCRIBE replies still due for our own unsubscribes (a channel may be subscribed
        # again before the reply to leaving it arrives); any other one is Redis's doing.
        self._leaving: Counter[str] = Counter()
        self._queue: asyncio.Queue[tuple[str, bytes | None] | Exception] | None = None

    def __repr__(self) -> str:
        return f"RedisClusterBackend({redact(self.url)!r}, prefix={self.prefix!r})"

    def probe_channels(self, node: str) -> list[str]:
        """One probe channel on each master, so the watchdog hears from every connection."""
        cluster = self._connected_cluster()
        wanted = {n.name for n in cluster.get_primaries()}
        found: dict[str, str] = {}
        for i in range(1 << 17):  # tags {0}..{131071} reach all 16384 slots; bounded anyway
            channel = f"{self.prefix}:probe:{{{i}}}:{node}"  # the prefix has no braces
            found.setdefault(_master(cluster, channel), channel)
            if len(found) == len(wanted):
                break
        return [found[name] for name in sorted(found)]

    def _connected_cluster(self) -> RedisCluster:
        client = self._client
        if not isinstance(client, RedisCluster):
            raise ConnectionError("RedisClusterBackend is not connected: call connect() first")
        return client

    async def connect(self) -> None:
        await self.disconnect()
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._seeds],
            # A slot without a master: not connected, loudly. Retries: none (in _options);
            # the backplane retries, with backoff and logs.
            **{"require_full_coverage": True, **self._options},
        )
        remap = self._options.get("address_remap")
        direct = {k: v for k, v in self._options.items() if k not in _CLUSTER_ONLY}
        shards: dict[str, tuple[aioredis.Redis, PubSub]] = {}
        try:
            await cluster.initialize()
            await cluster.script_load(self._append)  # on every master
            for master in cluster.get_primaries():
                host, port = master.host, int(master.port)
                if remap is not None:
                    host, port = remap((host, port))
                # Only the pub/sub connection is opened, by the first SSUBSCRIBE (the probe).
                client = aioredis.Redis(host=host, port=port, **direct)
                shards[master.name] = (client, client.pubsub(ignore_subscribe_messages=False))
        except BaseException:
            await _close(cluster, shards)
            raise
        self._client, self._shards = cluster, shards
        self._where.clear()
        self._leaving.clear()
        self._read_at.clear()

    async def disconnect(self) -> None:
        cluster, shards = self._client, self._shards
        self._client, self._shards = None, {}
        await _close(cluster, shards)

    def _shard_of(self, channel: str) -> tuple[str, PubSub]:
        name = _master(self._connected_cluster(), channel)
        shard = self._shards.get(name)
        if shard is None:  # the layout changed since connect(): start over with the new one
            raise ConnectionError(f"{channel!r} is now on {name}, not a master at connect")
        return name, shard[1]

    async def subscribe(self, channel: str) -> None:
        name, pubsub = self._shard_of(channel)
        self._where[channel] = name
        await pubsub.ssubscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        name = self._where.pop(channel, None)
        if name is None or name not in self._shards:
            raise ConnectionError(f"{channel!r} is not subscribed on this connection")
        self._leaving[channel] += 1
        await self._shards[name][1].sunsubscribe(channel)

    def heard_at(self, channel: str) -> float | None:
        """When the connection that carries ``channel`` last read anything; the time now while
        messages wait for the backplane (it is behind, not the shard). None: not subscribed."""
        name = self._where.get(channel)
        if name is None:
            return None
        if self._queue is not None and not self._queue.empty():
            return time.monotonic()
        return self._read_at.get(name)

    def _refused(self, error: Exception) -> bool:
        return super()._refused(error) and not isinstance(error, _LAYOUT_ERRORS)

    async def unregister(self, connection_ids: Iterable[str], node: str) -> None:
        # One script per key: directory keys are spread over the slots.
        keys = [self._key(cid) for cid in connection_ids]
        if not keys:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.eval(_UNREGISTER_ONE, 1, key, node)
            await pipe.execute()

    async def listen(self) -> AsyncIterator[tuple[str, bytes | None]]:
        if not self._shards:
            raise ConnectionError("RedisClusterBackend is not connected")
        queue: asyncio.Queue[tuple[str, bytes | None] | Exception] = asyncio.Queue(_QUEUE)
        self._queue = queue
        now = time.monotonic()
        self._read_at = {name: now for name in self._shards}
        readers = [  # every master with slots has a subscription (a probe) by now
            asyncio.ensure_future(self._read(name, pubsub, queue))
            for name, (_, pubsub) in self._shards.items()
            if pubsub.connection is not None
        ]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._queue = None
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read(
        self, name: str, pubsub: PubSub, queue: asyncio.Queue[tuple[str, bytes | None] | Exception]
    ) -> None:
        """One shard's messages into ``queue``; what ends the shard's stream goes there too."""
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                self._read_at[name] = time.monotonic()
                if message is None:
                    continue
                kind = _text(message.get("type"))
                if kind == "smessage":
                    data = message["data"]
                    await queue.put((_text(message["channel"]), bytes(data)))
                elif kind == "ssubscribe":
                    await queue.put((_text(message["channel"]), None))
                elif kind == "sunsubscribe":
                    channel = _text(message["channel"])
                    if self._leaving[channel] > 0:
                        self._leaving[channel] -= 1
                        continue
                    raise ConnectionError(
                        f"master {name} ended the subscription to {channel!r} (its slot moved "
                        "or the shard failed over)"
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put(exc)


def _master(cluster: RedisCluster, channel: str) -> str:
    """The name of the master that owns ``channel``'s slot, by the client's slot map."""
    node = cluster.get_node_from_key(channel)
    if node is None:
        raise ConnectionError(f"no master holds the slot of {channel!r}")
    return str(node.name)


_UNREGISTER_ONE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


async def _close(
    cluster: aioredis.Redis | RedisCluster | None,
    shards: dict[str, tuple[aioredis.Redis, PubSub]],
) -> None:
    """Close every connection, even when some fail (they may be why we are closing)."""
    closing: list[Any] = [c for shard in shards.values() for c in shard]
    if cluster is not None:
        closing.append(cluster)
    for thing in closing:
        try:
            await thing.aclose()
        except Exception as exc:
            _log.debug("closing %r failed: %r", thing, exc)
