"""Prometheus metrics of a RoomManager (the ``metrics`` extra: ``prometheus-client``).

Everything is read from the manager's own counters when Prometheus scrapes, so metrics cost
nothing per message, except the fan-out time histogram: one clock read before and after each
fan-out pass. Labels are bounded (reasons, outcomes, close codes): never a room or a user.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeHistogramMetricFamily,
        GaugeMetricFamily,
    )
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "fastapi_rooms.metrics needs the 'metrics' extra: pip install 'fastapi-rooms[metrics]'"
    ) from exc

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .fastapi.router import RoomsRouter
    from .manager import RoomManager

__all__ = ["RoomsCollector", "register_metrics"]

_QUEUE_BUCKETS = (0, 1, 4, 16, 64, 256, 1024, 4096)  # frames waiting per connection
_FANOUT_BUCKETS = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5)  # seconds


class RoomsCollector(Collector):
    """Collects one manager's metrics (and its router's handshake counters, if given)."""

    def __init__(self, manager: RoomManager, router: RoomsRouter | None = None) -> None:
        self.manager = manager
        self.router = router
        # No registry: it is collected here, under the manager's other metrics.
        self._fanout = Histogram(
            "fastapi_rooms_fanout_seconds",
            "Time to hand one message to every member of a room (or to a connection).",
            buckets=_FANOUT_BUCKETS,
            registry=None,
        )

    def describe(self) -> list[Metric]:
        """The families, for registries to refuse a second collector of the same names."""
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        manager, router = self.manager, self.router
        stats = manager.stats()
        yield _gauge("connections", "Connections registered on this node.", stats["connections"])
        yield _gauge("rooms", "Rooms with at least one member on this node.", stats["rooms"])
        yield _gauge(
            "room_members",
            "Room memberships on this node (a connection in two rooms counts twice).",
            sum(stats["room_sizes"].values()),
        )
        if router is not None:
            yield _counter(
                "connections_accepted", "WebSocket handshakes admitted.", router.accepted
            )
            refused = CounterMetricFamily(
                "fastapi_rooms_connections_refused",
                "WebSocket handshakes refused, by reason.",
                labels=["reason"],
            )
            for reason in ("origin", "capacity", "per_ip", "authentication", "draining"):
                refused.add_metric([reason], router.refused[reason])
            yield refused
        yield _counter(
            "messages_published", "Broadcasts and publishes made on this node.", manager._published
        )
        yield _counter(
            "messages_delivered",
            "Messages handed to a connection's outbound buffer.",
            stats["messages_delivered"],
        )
        backend = stats["backend"]
        dropped = CounterMetricFamily(
            "fastapi_rooms_messages_dropped",
            "Messages not delivered, by reason: a full buffer (slow consumer), over this node's "
            "size limit (too big), or not sent to other nodes (backplane down).",
            labels=["reason"],
        )
        dropped.add_metric(["slow_consumer"], stats["messages_dropped"] - manager._too_big)
        dropped.add_metric(["too_big"], manager._too_big)
        dropped.add_metric(["backplane_down"], backend.get("publish_dropped", 0))
        yield dropped
        yield _counter(
            "messages_discarded_at_close",
            "Messages still queued when their connection closed.",
            stats["messages_discarded_at_close"],
        )
        closes = CounterMetricFamily(
            "fastapi_rooms_closes", "Connections closed, by close code.", labels=["code"]
        )
        for code, count in sorted(stats["closes_by_code"].items()):
            closes.add_metric([code], count)
        yield closes
        yield self._queue_depths()
        yield from self._fanout.collect()
        recoveries = CounterMetricFamily(
            "fastapi_rooms_recoveries",
            "Rejoins that asked for missed messages, by outcome.",
            labels=["outcome"],
        )
        for outcome in ("recovered", "not_recovered"):
            recoveries.add_metric([outcome], manager._recoveries[outcome])
        yield recoveries
        yield _counter(
            "resync_closes",
            "Connections closed with 4000 to recover messages they missed.",
            stats["resync_closes"],
        )
        rooms, kept = manager._history_sizes()
        yield _gauge("history_rooms", "Rooms whose history is known on this node.", rooms)
        yield _gauge(
            "history_messages", "Messages kept in this process's room histories.", kept
        )
        yield from _backplane(backend)

    def _queue_depths(self) -> GaugeHistogramMetricFamily:
        """Frames waiting per connection, sampled now (a gauge histogram: it goes down)."""
        depths = [ws.buffered for ws in self.manager.connections.values()]
        buckets: list[tuple[str, float]] = [
            (str(bound), float(sum(1 for d in depths if d <= bound))) for bound in _QUEUE_BUCKETS
        ]
        buckets.append(("+Inf", float(len(depths))))
        return GaugeHistogramMetricFamily(
            "fastapi_rooms_outbound_queue_depth",
            "Frames waiting in each connection's outbound buffer, sampled at the scrape.",
            buckets=buckets,
            gsum_value=float(sum(depths)),
        )


def _backplane(backend: dict[str, Any]) -> Iterator[Metric]:
    if backend.get("type") == "local":
        return
    yield _gauge("backplane_connected", "1 while connected to the backend.", backend["connected"])
    yield _gauge(
        "backplane_silent_seconds",
        "Seconds since anything arrived on the backend subscription.",
        backend.get("silent_seconds") or 0.0,
    )
    for name, key, text in (
        ("backplane_reconnects", "reconnects", "Connection failures and reconnect attempts."),
        ("backplane_deaf", "deaf_events", "Times the subscription was found deaf."),
        ("backplane_publish_errors", "publish_errors", "Failed publish calls."),
        ("backplane_malformed_envelopes", "malformed_envelopes", "Invalid messages dropped."),
        ("backplane_messages_in", "messages_in", "Envelopes received from other nodes."),
        ("backplane_messages_out", "messages_out", "Envelopes published."),
    ):
        yield _counter(name, text, backend.get(key, 0))


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"fastapi_rooms_{name}", text, value=float(value))


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"fastapi_rooms_{name}", text, value=float(value))


def register_metrics(
    manager: RoomManager,
    registry: CollectorRegistry = REGISTRY,
    router: RoomsRouter | None = None,
) -> RoomsCollector:
    """Register ``manager``'s metrics on ``registry`` (prometheus_client's default one unless
    given); serve them the app's way, or with ``create_rooms_router(metrics_url=...)``."""
    collector = RoomsCollector(manager, router)
    try:
        registry.register(collector)
    except ValueError as exc:  # prometheus_client: "Duplicated timeseries in CollectorRegistry"
        raise ConfigurationError(
            "fastapi_rooms metrics are already registered on this registry (two routers or "
            "managers, or an app built twice in one process): give each its own "
            f"metrics_registry=CollectorRegistry() ({exc})"
        ) from None
    manager._observe_fanout = collector._fanout.observe  # the only per-message cost
    return collector
