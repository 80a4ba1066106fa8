"""Prometheus metrics (fastapi_rooms/metrics.py) served by real servers and read by
prometheus_client's own parser: values after known traffic, naming conventions, protection."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Server, server_fixture
from .helpers import http, next_event, open_ws, recv_json

pytestmark = pytest.mark.anyio

server = server_fixture("metrics_app", "metrics")


async def scrape(server: Server) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> labels -> value."""
    async with http(server) as rest:
        response = await rest.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def one(samples: dict[str, Any], name: str, **labels: str) -> float:
    return float(samples[name][tuple(sorted(labels.items()))])


async def test_metrics_after_known_traffic(server: Server) -> None:
    before = await scrape(server)
    async with open_ws(server, "/ws") as a, open_ws(server, "/ws") as b:
        for ws in (a, b):
            assert (await recv_json(ws))["type"] == "welcome"
            await ws.send(json.dumps({"type": "join", "room": "history:m"}))
            joined = await next_event(ws, "joined")
        for n in range(3):
            await a.send(json.dumps({"type": "publish", "room": "history:m", "data": n}))
        for ws in (a, b):
            for _ in range(3):
                await next_event(ws, "message")
        async with open_ws(server, "/ws") as c:
            await recv_json(c)
            since = {"offset": 1, "epoch": joined["epoch"]}
            await c.send(json.dumps({"type": "join", "room": "history:m", "since": since}))
            assert (await next_event(c, "joined"))["recovered"] is True
            now = await scrape(server)
    grew = lambda name, **labels: one(now, name, **labels) - one(before, name, **labels)  # noqa: E731
    assert one(now, "fastapi_rooms_connections") == 3
    assert one(now, "fastapi_rooms_rooms") == 1 and one(now, "fastapi_rooms_room_members") == 3
    assert grew("fastapi_rooms_connections_accepted_total") == 3
    assert grew("fastapi_rooms_messages_published_total") == 3
    assert grew("fastapi_rooms_messages_delivered_total") == 6
    assert grew("fastapi_rooms_fanout_seconds_count") == 3
    assert grew("fastapi_rooms_recoveries_total", outcome="recovered") == 1
    assert one(now, "fastapi_rooms_outbound_queue_depth_bucket", le="+Inf") == 3
    assert one(now, "fastapi_rooms_history_rooms") >= 1
    assert one(now, "fastapi_rooms_history_messages") >= 3
    assert one(now, "fastapi_rooms_messages_dropped_total", reason="slow_consumer") == 0


async def test_metric_names_and_labels_follow_prometheus_conventions(server: Server) -> None:
    samples = await scrape(server)
    ours = [name for name in samples if name.startswith("fastapi_rooms_")]
    assert len(ours) >= 20
    for name, series in samples.items():
        if not name.startswith("fastapi_rooms_"):
            continue
        for labels in series:
            assert {key for key, _ in labels} <= {"reason", "outcome", "code", "le"}, name
    async with http(server) as rest:
        text = (await rest.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("fastapi_rooms_"):
            continue
        if family.type == "counter":  # exposed as name_total
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family
        if family.type in ("histogram", "gaugehistogram"):  # units in the name
            assert family.name.endswith(("_seconds", "_depth")), family.name


async def test_metrics_are_protected_like_rest(tmp_path: Any) -> None:
    from fastapi import Depends, FastAPI, Header, HTTPException
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from fastapi_rooms import ConfigurationError, create_rooms_router

    def admin(x_admin_token: str = Header("")) -> None:
        if x_admin_token != "t":
            raise HTTPException(401)

    guarded = FastAPI()
    guarded.include_router(
        create_rooms_router(
            rest_dependencies=[Depends(admin)], metrics_url="/metrics",
            metrics_registry=CollectorRegistry(),
        )
    )  # fmt: skip
    unguarded = FastAPI()
    unguarded.include_router(
        create_rooms_router(metrics_url="/metrics", metrics_registry=CollectorRegistry())
    )
    with TestClient(guarded) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-Admin-Token": "t"}).status_code == 200
    with TestClient(unguarded) as client:
        assert client.get("/metrics").status_code == 403  # no guard given: refused
    shared = CollectorRegistry()
    create_rooms_router(metrics_registry=shared)
    with pytest.raises(ConfigurationError, match="give each its own metrics_registry"):
        create_rooms_router(metrics_registry=shared)
