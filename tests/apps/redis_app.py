"""The rooms router on a Redis backend; one process of a multi-node test.

Environment: ``REDIS_URL``, ``ROOMS_PREFIX`` (unique per test run), ``NODE_ID``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from fastapi_rooms import RoomManager, create_rooms_router
from fastapi_rooms.rsgi import RSGIApp

manager = RoomManager(
    os.environ["REDIS_URL"],
    prefix=os.environ["ROOMS_PREFIX"],
    node_id=os.environ.get("NODE_ID") or None,
)
app = FastAPI()
app.include_router(create_rooms_router(manager, insecure_rest=True))  # test app: REST open
rsgi_app = RSGIApp(app)
