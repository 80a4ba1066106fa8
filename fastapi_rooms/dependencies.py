"""``get_manager``: the FastAPI dependency that returns the app's RoomManager."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from .manager import RoomManager

__all__ = ["get_manager"]

STATE_KEY = "fastapi_rooms_manager"


def get_manager(connection: HTTPConnection) -> RoomManager:
    """The RoomManager of the app that serves this request or WebSocket.

    Set by the lifespan of an included rooms router; override it like any dependency
    (``app.dependency_overrides[get_manager] = ...``).
    """
    manager = getattr(connection.app.state, STATE_KEY, None)
    if manager is None:
        raise RuntimeError(
            "get_manager found no RoomManager on this app: include a rooms router "
            "(app.include_router(create_rooms_router())) and run the app with its lifespan "
            "(uvicorn and granian do; in tests use 'with TestClient(app) as client:')"
        )
    if not isinstance(manager, RoomManager):
        raise RuntimeError(
            f"app.state.{STATE_KEY} should be a RoomManager, got {type(manager).__name__}"
        )
    return manager
