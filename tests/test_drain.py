"""Graceful drain (``POST /drain``, ``RoomManager.drain``) on both servers: clients of the
ready endpoint are told to reconnect after a random delay, readiness fails, new handshakes are
refused with 503, and what is still open after the grace is closed with 1001."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fastapi_rooms import client as client_module
from fastapi_rooms.client import RoomsClient

from .conftest import Server, app_for, sent_code
from .helpers import WAIT, http, next_event, open_ws, recv_json

pytestmark = pytest.mark.anyio

KINDS = ["uvicorn", "granian-rsgi"]


@pytest.mark.parametrize("kind", KINDS)
async def test_drain_tells_clients_refuses_new_ones_and_closes_the_rest(
    kind: str, serve: Callable[..., Server]
) -> None:
    server = serve(kind, app_for("core_app", kind))
    async with (
        open_ws(server, "/ws", max_queue=None) as polite,
        open_ws(server, "/ws", max_queue=None) as stubborn,
        open_ws(server, "/ws/echo", max_queue=None) as custom,  # a handler of the app's own
        http(server) as rest,
    ):
        for ws in (polite, stubborn):
            assert (await recv_json(ws))["type"] == "welcome"
        assert (await rest.get("/readyz")).status_code == 200
        response = await rest.post("/drain", json={"grace_seconds": 2, "spread_seconds": 1})
        assert response.status_code == 202
        assert response.json() == {"status": "draining", "connections": 2}
        asked = time.monotonic()
        for ws in (polite, stubborn):
            event = await next_event(ws, "shutdown")
            assert 0 <= event["reconnect_after_ms"] <= 1000
            assert (event["code"], event["reason"]) == (1001, "server draining")
        assert (await rest.get("/readyz")).status_code == 503
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(server, "/ws")
        assert refused.value.response.status_code == 503
        again = await rest.post("/drain", json={"grace_seconds": 60})  # changes nothing
        assert again.status_code == 202
        await polite.close()  # does what it was told
        for ws in (stubborn, custom):  # ignore it: closed when the grace ends
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == sent_code(kind, 1001)
        assert 1.5 <= time.monotonic() - asked <= 2 + WAIT / 2
    log = server.log()
    assert "draining: new connections refused; 2 client(s) told to reconnect" in log
    assert "drained: 2 connection(s) were still open and closed with 1001" in log


async def test_drain_refuses_bad_values_and_rest_stays_protected(
    serve: Callable[..., Server],
) -> None:
    server = serve("uvicorn", "secure_app:app")
    async with http(server) as anonymous:
        assert (await anonymous.post("/drain")).status_code in (401, 403)  # publishes: guarded
        assert (await anonymous.get("/readyz")).status_code == 200  # probes: open, a word only
    core = serve("uvicorn", "core_app:app")
    async with http(core) as rest:
        bad = await rest.post("/drain", json={"grace_seconds": -1})
        assert bad.status_code == 422
        assert (await rest.get("/readyz")).status_code == 200  # not draining after all


async def test_the_python_client_comes_back_after_the_servers_delay(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve("uvicorn", "core_app:app")
    events: list[tuple[str, float]] = []
    backoff_ran = asyncio.Event()
    real_connect = client_module.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        events.append(("connect", time.monotonic()))
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(client_module, "connect", connect)

    class Recording(RoomsClient):
        async def _backoff(self, attempt: int) -> None:  # a backoff would wait long
            events.append(("backoff", time.monotonic()))
            backoff_ran.set()
            await asyncio.sleep(3600)

    async with Recording(server.ws + "/ws", backoff=60.0) as client:
        await client.join("lobby")
        asked = time.monotonic()
        async with http(server) as rest:
            await rest.post("/drain", json={"grace_seconds": 30, "spread_seconds": 0.3})
        # it comes back after the server's delay (refused: the node drains), then backs off
        await asyncio.wait_for(backoff_ran.wait(), WAIT)
    kinds = [kind for kind, _ in events]
    assert kinds[:3] == ["connect", "connect", "backoff"], events
    assert events[1][1] - asked < 0.3 + 2.0  # the server's delay, not a 60 s backoff


async def test_two_drains_at_once_are_one(serve: Callable[..., Server]) -> None:
    server = serve("uvicorn", "core_app:app")
    async with open_ws(server, "/ws") as ws, http(server) as rest:
        await recv_json(ws)
        body = {"grace_seconds": 0.5, "spread_seconds": 0}
        answers = await asyncio.gather(*(rest.post("/drain", json=body) for _ in range(3)))
        assert [a.status_code for a in answers] == [202] * 3
        assert (await next_event(ws, "shutdown"))["reconnect_after_ms"] == 0
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), WAIT)  # closed once the grace ended
    assert server.log().count("draining: new connections refused") == 1
