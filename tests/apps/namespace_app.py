"""Apps for namespaces, the typed protocol and AsyncAPI (tests/test_namespaces.py, test_asyncapi.py).

- ``app``: ``chat:{name}`` (a model, presence events), ``ticker:{symbol}`` (server-only),
  ``vip:{name}`` (a publish policy), ``slow:{name}`` (a publish rate), ``duo:{name}`` (two
  members), ``nums:{name}`` (``list[int]``), ``tree:{name}`` (a recursive model),
  ``history:{name}`` (5 messages kept), ``race:{name}`` (1000 kept); other rooms follow the
  defaults. ``?user=`` names the user. ``POST /tick/{symbol}``
  publishes a model from the server, ``POST /raw-tick/{symbol}`` broadcasts it as a raw
  frame; ``POST /wrong-model/{symbol}`` sends the wrong one.
  ``/ws/echo/<int:n>`` is a Gobstopper-style handler declaring its payloads; ``/self-hosted``
  renders the AsyncAPI page from the AsyncAPI React component under ``ASYNCAPI_ASSETS``.
- ``strict_app``: strict namespaces, only ``chat:{name}``.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from fastapi.security import APIKeyQuery
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles

from fastapi_rooms import RoomManager, create_rooms_router, get_manager
from fastapi_rooms.fastapi.asyncapi import get_asyncapi_html
from fastapi_rooms.rsgi import RSGIApp

Manager = Annotated[RoomManager, Depends(get_manager)]


class ChatMessage(BaseModel):
    """A chat line."""

    text: str = Field(min_length=1, max_length=500)
    reply_to: int | None = None


class Tree(BaseModel):
    """A recursive model: its errors can sit hundreds of levels deep."""

    leaf: int | None = None
    children: dict[str, Tree] = {}


class Tick(BaseModel):
    """A price update, from the server only."""

    price: float
    volume: int = 0


def user_of(websocket: Any) -> str:
    return str(websocket.query_params.get("user") or "guest")


def only_alice(user_id: str | None, room: str) -> bool | str:
    return user_id == "alice" or f"only alice speaks in {room}"


def make_app(strict: bool = False) -> FastAPI:
    manager = RoomManager(strict_namespaces=strict)
    rooms = create_rooms_router(
        manager,
        insecure_rest=True,  # tests read GET /stats openly
        authenticate=user_of,
        security=[APIKeyQuery(name="user", description="Any name: the test's user.")],
    )
    rooms.namespace("chat:{name}", message=ChatMessage, presence_events=True)
    if not strict:
        rooms.namespace(
            "ticker:{symbol}", message=Tick, publish="nobody", description="Live prices."
        )
        rooms.namespace("vip:{name}", publish=only_alice)
        rooms.namespace("slow:{name}", rate=0.001, burst=1)
        rooms.namespace("duo:{name}", max_members=2)
        rooms.namespace("nums:{name}", message=list[int])
        rooms.namespace("tree:{name}", message=Tree)
        rooms.namespace("history:{name}", history_size=5)
        rooms.namespace("race:{name}", history_size=1000, history_ttl=600)

    @rooms.websocket("/ws/echo/<int:n>", receives=ChatMessage, sends=ChatMessage)
    async def echo(websocket: Any, n: int) -> None:
        """Echoes chat messages ``n`` times."""
        await websocket.accept()
        async for message in websocket:
            line = ChatMessage.model_validate_json(message.data)
            for _ in range(n):
                await websocket.send_text(line.model_dump_json())

    app = FastAPI(title="Namespace test app", version="1.2.3")
    app.include_router(rooms)

    @app.post("/tick/{symbol}")
    async def tick(symbol: str, body: Tick, manager: Manager) -> dict[str, int]:
        return {"delivered": await manager.publish(f"ticker:{symbol}", body)}

    @app.post("/raw-tick/{symbol}")
    async def raw_tick(symbol: str, body: Tick, manager: Manager) -> dict[str, int]:
        """A model as the app's own frame (broadcast_to_room): checked, encoded once."""
        return {"delivered": await manager.broadcast_to_room(f"ticker:{symbol}", body)}

    @app.post("/wrong-model/{symbol}")
    async def wrong_model(symbol: str, manager: Manager) -> dict[str, int]:
        try:
            delivered = await manager.broadcast_to_room(
                f"ticker:{symbol}", ChatMessage(text="not a tick")
            )
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"delivered": delivered}

    assets = os.environ.get("ASYNCAPI_ASSETS")
    if assets:
        app.mount("/assets", StaticFiles(directory=assets), name="assets")

        @app.get("/self-hosted", include_in_schema=False)
        async def self_hosted() -> HTMLResponse:
            return get_asyncapi_html(
                asyncapi_url="/asyncapi.json",
                title="Self-hosted AsyncAPI",
                js_url="/assets/browser/standalone/index.js",
                css_url="/assets/styles/default.min.css",
            )

    return app


app = make_app()
rsgi_app = RSGIApp(app)
strict_app = make_app(strict=True)
strict_rsgi_app = RSGIApp(strict_app)
