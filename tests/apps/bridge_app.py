"""An app exercising the HTTP bridge: streaming, files, cookies, errors, a native WebSocket."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi import WebSocket as FastAPIWebSocket
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel

from fastapi_rooms import create_rooms_router
from fastapi_rooms.rsgi import RSGIApp

app = FastAPI()
rooms = create_rooms_router(prefix="/rooms-api", insecure_rest=True)  # test app: REST open
app.include_router(rooms)

_FILE = Path(tempfile.gettempdir()) / "fastapi-rooms-bridge-file.bin"
_FILE.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
_release = asyncio.Event()


class Item(BaseModel):
    name: str
    count: int


@app.post("/upload")
async def upload(request: Request) -> dict[str, object]:
    digest = hashlib.sha256()
    size = chunks = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
        chunks += 1
    return {"size": size, "sha256": digest.hexdigest(), "chunks": chunks}


@app.get("/stream")
async def stream() -> StreamingResponse:
    """First chunk goes out, then the stream waits until /release is called."""

    async def body() -> AsyncIterator[bytes]:
        yield b"first\n"
        await asyncio.wait_for(_release.wait(), 10)
        _release.clear()
        yield b"last\n"

    return StreamingResponse(body(), media_type="text/plain")


@app.post("/release")
async def release() -> dict[str, bool]:
    _release.set()
    return {"released": True}


@app.get("/sse")
async def sse() -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        for i in range(3):
            yield f"data: {i}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/file")
async def file() -> FileResponse:
    return FileResponse(_FILE, media_type="application/octet-stream")


@app.get("/cookies")
async def cookies(response: Response) -> dict[str, bool]:
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return {"ok": True}


@app.post("/items")
async def items(item: Item) -> Item:
    return item


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("boom")


@app.get("/client")
async def client(request: Request) -> dict[str, object]:
    assert request.client is not None
    return {"host": request.client.host, "port": request.client.port,
            "scheme": request.url.scheme, "query": request.url.query}


@app.websocket("/native")
async def native(ws: FastAPIWebSocket) -> None:
    await ws.accept()
    text = await ws.receive_text()
    await ws.send_text(f"native: {text}")
    await ws.close()


@app.get("/gc")
async def gc_state() -> dict[str, int]:
    return {"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()[0]}


rsgi_app = RSGIApp(app)
python_gc_rsgi_app = RSGIApp(app, freeze_gc=False, gc_threshold=None)  # opted out
