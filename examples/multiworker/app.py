"""The chat example across worker processes: every worker shares rooms through Redis.

Run from the repository root (Redis at ``REDIS_URL``, default redis://127.0.0.1:6379/0)::

    uvicorn examples.multiworker.app:app --workers 4

Each worker imports this module and gets its own manager; the Redis backend makes their rooms
one. Open http://127.0.0.1:8000 in several windows: whichever worker a window lands on, room
messages and ``POST /api/announce`` reach every window, in one order, and a window that
reconnects (to any worker, or after a restart) recovers what it missed from Redis. The ``welcome`` event names the worker
(``node``) a connection landed on.
"""

from __future__ import annotations

import os

from examples.chat.app import build_app
from fastapi_rooms import RoomManager

manager = RoomManager(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    prefix=os.environ.get("ROOMS_PREFIX", "chat"),  # keys and channels of this app in Redis
    history_size=500,  # Redis keeps each room's last 500 messages for an hour: a page that
    history_ttl=3600,  # reconnects, to any worker, gets what it missed
)
app = build_app(manager)
