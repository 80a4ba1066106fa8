"""``get_manager``: the FastAPI dependency that returns the app's RoomManager."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection

from ..errors import ConfigurationError
from ..manager import RoomManager

__all__ = ["STATE_KEY", "get_manager", "manager_for"]

#: Where the rooms router's lifespan puts the manager: the lifespan state (which reaches every
#: request's ``request.state``, mounted sub-apps included) and ``app.state``.
STATE_KEY = "fastapi_rooms_manager"

_NOT_STARTED = (
    "no RoomManager for this request: the rooms router's lifespan did not run for this app. "
    "Include the router with app.include_router(rooms) in the app that is served; a mounted "
    "sub-app's lifespan never runs (Starlette), so for app.mount('/x', subapp) give the parent "
    "FastAPI(lifespan=subapp.router.lifespan_context). In tests use 'with TestClient(app):'."
)


def get_manager(connection: HTTPConnection) -> RoomManager:
    """The RoomManager of the app that serves this request or WebSocket.

    Set by the lifespan of an included rooms router; override it like any dependency
    (``app.dependency_overrides[get_manager] = ...``): the router's own endpoints use the
    override too.
    """
    state = connection.scope.get("state")
    manager = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    if manager is None:
        app = connection.scope.get("app")
        manager = getattr(getattr(app, "state", None), STATE_KEY, None)
    if manager is None:
        raise ConfigurationError(_NOT_STARTED)
    if not isinstance(manager, RoomManager):
        raise ConfigurationError(
            f"the state's {STATE_KEY!r} should be a RoomManager, got {type(manager).__name__}"
        )
    return manager


def manager_for(scope: Any, default: RoomManager) -> RoomManager:
    """The manager for a connection outside FastAPI's dependency injection (the ready
    endpoint): the app's ``dependency_overrides[get_manager]`` when set, else ``default``.

    An override is called with no arguments, or with the connection if it takes one.
    """
    app = scope.get("app")
    overrides = getattr(app, "dependency_overrides", None)
    override = overrides.get(get_manager) if overrides else None
    if override is None:
        return default
    required = [
        p
        for p in inspect.signature(override).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    manager = override(HTTPConnection(scope)) if required else override()
    if not isinstance(manager, RoomManager):
        raise ConfigurationError(
            f"dependency_overrides[get_manager] should return a RoomManager, "
            f"got {type(manager).__name__}"
        )
    return manager
