"""RoomsRouter: Gobstopper-style WebSocket handlers, REST endpoints that broadcast, lifespan."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal, TypeVar, get_type_hints

from fastapi import APIRouter, HTTPException, params
from fastapi.routing import APIWebSocketRoute
from pydantic import BaseModel, Field, JsonValue
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket as StarletteWebSocket

from ._frame import MessageTooBig
from ._paths import convert_path
from .dependencies import STATE_KEY
from .manager import RoomManager
from .message import ConnectionClosed
from .protocol import serve_protocol
from .security import Limits, _header, client_ip, origin_allowed, user_id_of
from .websocket import WebSocket

__all__ = ["RoomsRouter", "create_rooms_router"]

_log = logging.getLogger("fastapi_rooms")

Handler = Callable[..., Awaitable[None]]
#: ``authenticate(websocket)`` returns a user (a str id, or with ``.id``) or None to refuse.
Authenticate = Callable[[WebSocket], Any]


H = TypeVar("H", bound=Handler)


# REST models --------------------------------------------------------------------------------


class MessageBody(BaseModel):
    """A string reaches clients unchanged as one text frame; other JSON values JSON-encoded."""

    message: JsonValue = Field(description="Text sent as is, or any JSON value sent JSON-encoded.")
    exclude: list[str] = Field(default_factory=list, description="Connection ids to skip.")


class SendBody(BaseModel):
    """A string reaches the client unchanged as one text frame; other JSON values JSON-encoded."""

    message: JsonValue = Field(description="Text sent as is, or any JSON value sent JSON-encoded.")


class BroadcastResult(BaseModel):
    status: Literal["broadcasted"] = "broadcasted"
    connections: int = Field(
        description="Connections on this node the message was handed to (with a backend, "
        "other nodes deliver to theirs and are not counted)."
    )


class RoomBroadcastResult(BaseModel):
    status: Literal["sent"] = "sent"
    room_connections: int = Field(
        description="Members on this node the message was handed to (with a backend, "
        "members on other nodes are not counted)."
    )


class SendResult(BaseModel):
    status: Literal["sent"] = "sent"
    connection_id: str


class RoomSummary(BaseModel):
    room: str
    connections: int


class RoomList(BaseModel):
    rooms: list[RoomSummary]


class PresenceConnection(BaseModel):
    connection_id: str
    meta: JsonValue = Field(default=None, description="What the connection gave at join.")
    node: str | None = Field(default=None, description="The process holding the connection.")


class PresenceEntry(BaseModel):
    user_id: str | None = Field(description="None for a connection without a user.")
    connections: list[PresenceConnection]


class RoomDetail(BaseModel):
    room: str
    connections: int = Field(description="Members on this node.")
    connection_ids: list[str] = Field(description="Members on this node.")
    presence: list[PresenceEntry] = Field(
        default_factory=list, description="Members on every node, grouped by user."
    )


class UserSendResult(BaseModel):
    status: Literal["sent"] = "sent"
    user_id: str


# Handlers ------------------------------------------------------------------------------------


#: Serves one connection: (handler, websocket, keyword arguments, authenticate?).
Serve = Callable[[Handler, WebSocket, dict[str, Any], bool], Awaitable[None]]


_NO_ARGUMENTS: dict[str, Any] = {}  # shared, never changed: handler(ws, **_NO_ARGUMENTS)


class _ReadyEndpoint:
    """The ready endpoint's ASGI app. Not a coroutine itself: it returns the router's serve
    coroutine, so an idle connection holds only that frame and the protocol's."""

    __slots__ = ("_authenticate", "_handler", "_router")

    def __init__(self, router: RoomsRouter, handler: Handler, authenticate: bool) -> None:
        self._router = router
        self._handler = handler
        self._authenticate = authenticate

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        manager = self._router.manager
        ws = WebSocket(
            scope,
            receive,
            send,
            max_message_bytes=manager.max_message_bytes,
            max_buffer=manager.max_buffer,
            overflow=manager.overflow,
        )
        return self._router._serve(self._handler, ws, _NO_ARGUMENTS, self._authenticate)


def _endpoint(
    handler: Handler, path: str, manager: RoomManager, serve: Serve, authenticate: bool
) -> Callable[..., Awaitable[None]]:
    """A FastAPI WebSocket endpoint that calls ``handler(websocket, **path_params, **deps)``."""
    starlette_path, path_types = convert_path(path)
    signature = inspect.signature(handler)
    params_ = list(signature.parameters.values())
    if not params_ or params_[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(
            f"{handler.__qualname__} must take the websocket as its first positional parameter"
        )
    try:
        hints = get_type_hints(handler, include_extras=True)
    except Exception:  # unresolvable string annotations: let FastAPI report them
        hints = {}
    ws_name = params_[0].name
    rest: list[inspect.Parameter] = []
    takes_kwargs = False
    for param in params_[1:]:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            takes_kwargs = True
            continue
        if param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            raise TypeError(
                f"{handler.__qualname__}: parameter {param.name!r} must be passable by keyword"
            )
        annotation = hints.get(param.name, param.annotation)
        if annotation is inspect.Parameter.empty and param.name in path_types:
            annotation = path_types[param.name]
        rest.append(param.replace(annotation=annotation, kind=inspect.Parameter.KEYWORD_ONLY))
    declared = {p.name for p in rest}
    if takes_kwargs:
        for name, kind in path_types.items():
            if name not in declared:
                rest.append(
                    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind)
                )
    missing = set(path_types) - {p.name for p in rest}
    if missing:
        raise TypeError(
            f"{handler.__qualname__} does not take path parameter(s) {sorted(missing)} of {path!r}"
        )
    ws_param = inspect.Parameter(
        ws_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=StarletteWebSocket
    )

    async def endpoint(**kwargs: Any) -> None:
        await serve(handler, manager.wrap(kwargs.pop(ws_name)), kwargs, authenticate)

    endpoint.__signature__ = inspect.Signature([ws_param, *rest])  # type: ignore[attr-defined]
    endpoint.__name__ = getattr(handler, "__name__", "websocket_handler")
    endpoint.__qualname__ = getattr(handler, "__qualname__", endpoint.__name__)
    endpoint.__doc__ = handler.__doc__
    endpoint.__rooms_handler__ = (handler, starlette_path)  # type: ignore[attr-defined]
    return endpoint


# Lifespan ------------------------------------------------------------------------------------


def _install_going_away(app: Any) -> None:
    """Close WebSockets to unmatched paths with 1001 (Going Away), as Gobstopper's guide says."""
    router = getattr(app, "router", None)
    if router is None or getattr(router.default, "_fastapi_rooms_going_away", False):
        return
    previous: ASGIApp = router.default

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await previous(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "fastapi_rooms.rsgi" in scope.get("extensions", {}):
            # RSGI cannot send a close code: refuse the upgrade with 404 instead.
            await send({"type": "websocket.http.response.start", "status": 404, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b""})
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1001, "reason": "no route for this path"})

    default._fastapi_rooms_going_away = True  # type: ignore[attr-defined]
    router.default = default


def _lifespan(manager: RoomManager) -> Callable[[Any], Any]:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state = getattr(app, "state", None)
        if state is not None:
            current = getattr(state, STATE_KEY, None)
            if current is not None and current is not manager:
                raise RuntimeError(
                    "this app includes rooms routers with different RoomManagers; "
                    "pass one manager to every create_rooms_router(manager=...)"
                )
            setattr(state, STATE_KEY, manager)
        _install_going_away(app)
        owner = not manager.started
        if owner:
            await manager.start()
        try:
            yield None
        finally:
            if owner:
                await manager.stop()
            if state is not None and getattr(state, STATE_KEY, None) is manager:
                delattr(state, STATE_KEY)

    return lifespan


# Router --------------------------------------------------------------------------------------


class RoomsRouter(APIRouter):
    """An APIRouter with a RoomManager, Gobstopper-style ``.websocket`` and broadcast endpoints.

    ``dependencies=`` protects the REST endpoints and any HTTP route added to this router;
    WebSocket handlers (and the ready endpoint) take their own ``dependencies=``.
    """

    def __init__(
        self,
        manager: RoomManager | None = None,
        *,
        ready_endpoint: str | None = "/ws",
        rest: bool = True,
        authenticate: Authenticate | None = None,
        allowed_origins: Sequence[str] | None = None,
        limits: Limits | None = None,
        **kwargs: Any,
    ) -> None:
        user_lifespan = kwargs.pop("lifespan", None)
        super().__init__(**kwargs)
        self.manager = manager if manager is not None else RoomManager()
        self.authenticate = authenticate
        self.allowed_origins = allowed_origins
        self.limits = limits if limits is not None else Limits()
        self._open = 0
        self._open_by_ip: dict[str, int] = {}
        lifespan = _lifespan(self.manager)
        if user_lifespan is not None:
            from fastapi.routing import _merge_lifespan_context

            lifespan = _merge_lifespan_context(lifespan, user_lifespan)
        self.lifespan_context = lifespan
        self.rooms_handlers: list[tuple[str, Handler]] = []
        if rest:
            self._add_rest_endpoints()
        if ready_endpoint is not None:
            # a partial, not a wrapper coroutine: one frame less per idle connection
            protocol = functools.partial(serve_protocol, manager=self.manager, limits=self.limits)
            self._add_ready_endpoint(
                ready_endpoint, protocol, authenticate=authenticate is not None
            )

    # WebSocket handlers ----------------------------------------------------------------------

    def add_rooms_websocket(
        self,
        path: str,
        handler: Handler,
        name: str | None = None,
        *,
        dependencies: Sequence[params.Depends] | None = None,
        authenticate: bool = False,
    ) -> None:
        """Register ``handler(websocket, **path_params)`` at ``path`` (``{x}`` or ``<int:x>``).

        Every handler passes the router's origin check and connection limits before it runs;
        with ``authenticate=True`` also the router's ``authenticate`` hook (``websocket.user``
        and ``websocket.user_id`` are set when it runs).
        """
        if authenticate and self.authenticate is None:
            raise ValueError(
                f"{path}: authenticate=True needs create_rooms_router(authenticate=...)"
            )

        endpoint = _endpoint(handler, path, self.manager, self._serve, authenticate)
        starlette_path = endpoint.__rooms_handler__[1]  # type: ignore[attr-defined]
        route = APIWebSocketRoute(
            self.prefix + starlette_path,
            endpoint=endpoint,
            name=name,
            dependencies=list(dependencies or []),
            dependency_overrides_provider=self.dependency_overrides_provider,
        )
        self.routes.append(route)
        mark = getattr(self, "_mark_routes_changed", None)
        if mark is not None:
            mark()
        self.rooms_handlers.append((self.prefix + starlette_path, handler))

    def _add_ready_endpoint(self, path: str, handler: Handler, *, authenticate: bool) -> None:
        """The ready endpoint as a plain Starlette route to a raw ASGI app: it takes no
        parameters, so FastAPI's per-connection dependency machinery (about 7 KB per idle
        connection) and Starlette's WebSocket and session wrapper buy nothing."""
        endpoint = _ReadyEndpoint(self, handler, authenticate)
        self.routes.append(WebSocketRoute(self.prefix + path, endpoint, name="fastapi_rooms_ws"))
        mark = getattr(self, "_mark_routes_changed", None)
        if mark is not None:
            mark()
        self.rooms_handlers.append((self.prefix + path, handler))

    def websocket(
        self,
        path: str,
        name: str | None = None,
        *,
        dependencies: Sequence[params.Depends] | None = None,
        authenticate: bool = False,
    ) -> Callable[[H], H]:
        """Decorator for a Gobstopper-style handler ``async def handler(websocket, **params)``."""

        def decorator(handler: H) -> H:
            self.add_rooms_websocket(
                path, handler, name, dependencies=dependencies, authenticate=authenticate
            )
            return handler

        return decorator

    # Admission -------------------------------------------------------------------------------

    async def _serve(
        self, handler: Handler, ws: WebSocket, kwargs: dict[str, Any], authenticate: bool
    ) -> None:
        """Admit (origin, limits, authentication), run the handler, free the slot after.

        1011 if the handler raises after accept, 403 if it returns without accepting.
        """
        claimed = await self._admit(ws, authenticate)
        if claimed is None:
            return  # refused: the handshake was answered
        manager = self.manager
        manager._track(ws)
        try:
            await handler(ws, **kwargs)
        except Exception as exc:
            if not ws.accepted:
                raise  # the server answers the handshake with HTTP 500 and logs it
            if ws.closed and isinstance(exc, ConnectionClosed):
                _log.debug("handler for %s ended on a closed connection", ws.path)
            else:
                _log.exception("WebSocket handler for %s raised; closing with 1011", ws.path)
                if not ws.closed:
                    await ws.close(1011, "internal error")
        else:
            if not ws.closed:
                await ws.close(1000)  # before accept this rejects the handshake with 403
        finally:
            manager._untrack(ws)
            self._release(claimed)

    async def _admit(self, ws: WebSocket, authenticate: bool) -> str | None:
        """Origin, connection limits, then authentication: the client address whose slot was
        claimed, or None after refusing the handshake."""
        if not origin_allowed(ws, self.allowed_origins):
            _log.warning("refused a WebSocket from origin %r", _header(ws, b"origin"))
            await ws.reject(403, "origin not allowed")
            return None
        limits = self.limits
        ip = client_ip(ws, limits.trusted_proxies)
        if limits.max_connections is not None and self._open >= limits.max_connections:
            _log.warning("refused a WebSocket from %s: %d connections open", ip, self._open)
            await ws.reject(503, "too many connections")
            return None
        per_ip = self._open_by_ip.get(ip, 0)
        if limits.max_connections_per_ip is not None and per_ip >= limits.max_connections_per_ip:
            _log.warning("refused a WebSocket from %s: %d connections from there", ip, per_ip)
            await ws.reject(429, "too many connections from this address")
            return None
        # Claim the slots now: the hook below may await, and other handshakes run meanwhile.
        self._open += 1
        self._open_by_ip[ip] = per_ip + 1
        if authenticate:
            try:
                user_id = await self._authenticate(ws)
            except BaseException:
                self._release(ip)
                raise
            if user_id is None:
                self._release(ip)
                await ws.reject(403, "authentication required")
                return None
        return ip

    def _release(self, ip: str) -> None:
        self._open -= 1
        left = self._open_by_ip.get(ip, 1) - 1
        if left > 0:
            self._open_by_ip[ip] = left
        else:
            self._open_by_ip.pop(ip, None)

    async def _authenticate(self, ws: WebSocket) -> str | None:
        """Run the hook; the user's id, or None to refuse (a failing hook is logged)."""
        hook = self.authenticate
        assert hook is not None
        try:
            user = hook(ws)
            if inspect.isawaitable(user):
                user = await user
            if user is None:
                return None
            user_id = user_id_of(user)
        except Exception:
            _log.exception("the authenticate hook failed; refusing the handshake")
            return None
        ws.user = user  # type: ignore[attr-defined]
        ws.user_id = user_id  # type: ignore[attr-defined]
        return user_id

    # REST ------------------------------------------------------------------------------------

    def _add_rest_endpoints(self) -> None:
        manager = self.manager
        deps: list[params.Depends] = []  # the router's own dependencies apply to HTTP routes
        tags: list[Any] = list(self.tags) or ["rooms"]

        @contextmanager
        def refused_as_http() -> Iterator[None]:
            """413 for a message over the size limit, 422 for other refused input."""
            try:
                yield
            except MessageTooBig as exc:
                raise HTTPException(status_code=413, detail=str(exc)) from None
            except ValueError as exc:  # e.g. too many excluded ids for the backend's envelope
                raise HTTPException(status_code=422, detail=str(exc)) from None

        @self.post("/broadcast", response_model=BroadcastResult, dependencies=deps, tags=tags)
        async def broadcast(body: MessageBody) -> BroadcastResult:
            """Send a message to every connection."""
            with refused_as_http():
                n = await manager.broadcast_to_all(body.message, exclude=body.exclude or None)
            return BroadcastResult(connections=n)

        @self.post(
            "/rooms/{room}/broadcast",
            response_model=RoomBroadcastResult,
            dependencies=deps,
            tags=tags,
        )
        async def broadcast_room(room: str, body: MessageBody) -> RoomBroadcastResult:
            """Send a message to every member of a room."""
            with refused_as_http():
                n = await manager.broadcast_to_room(
                    room, body.message, exclude=body.exclude or None
                )
            return RoomBroadcastResult(room_connections=n)

        @self.post(
            "/connections/{connection_id}/send",
            response_model=SendResult,
            dependencies=deps,
            tags=tags,
            responses={404: {"description": "No such connection"}},
        )
        async def send_to_connection(connection_id: str, body: SendBody) -> SendResult:
            """Send a message to one connection; 404 when it is not connected."""
            with refused_as_http():
                sent = await manager.send_to(connection_id, body.message)
            if not sent:
                raise HTTPException(404, detail=f"connection {connection_id!r} is not connected")
            return SendResult(connection_id=connection_id)

        @self.get("/rooms", response_model=RoomList, dependencies=deps, tags=tags)
        async def list_rooms() -> RoomList:
            """Rooms that have members, with their sizes."""
            return RoomList(
                rooms=[
                    RoomSummary(room=r, connections=len(ids)) for r, ids in manager.rooms.items()
                ]
            )

        @self.get(
            "/rooms/{room}",
            response_model=RoomDetail,
            dependencies=deps,
            tags=tags,
            responses={404: {"description": "The room has no members"}},
        )
        async def get_room(room: str) -> RoomDetail:
            """One room's members here and its presence on every node; 404 when it has none."""
            ids = manager.get_room_connections(room)
            presence = await manager.presence(room)
            if not ids and not presence:
                raise HTTPException(404, detail=f"room {room!r} has no members")
            return RoomDetail(
                room=room,
                connections=len(ids),
                connection_ids=sorted(ids),
                presence=[PresenceEntry.model_validate(entry) for entry in presence],
            )

        @self.post(
            "/users/{user_id}/send",
            response_model=UserSendResult,
            dependencies=deps,
            tags=tags,
            responses={404: {"description": "The user has no connection"}},
        )
        async def send_to_user(user_id: str, body: SendBody) -> UserSendResult:
            """Send a message to every connection of a user; 404 when none is connected."""
            with refused_as_http():
                sent = await manager.send_to_user(user_id, body.message)
            if not sent:
                raise HTTPException(404, detail=f"user {user_id!r} has no connection")
            return UserSendResult(user_id=user_id)

        @self.get("/stats", dependencies=deps, tags=tags)
        async def stats() -> dict[str, Any]:
            """Connection, room, delivery and backend counters."""
            return manager.stats()


def create_rooms_router(
    manager: RoomManager | None = None,
    *,
    prefix: str = "",
    ready_endpoint: str | None = "/ws",
    authenticate: Authenticate | None = None,
    allowed_origins: Sequence[str] | None = None,
    limits: Limits | None = None,
    **apirouter_kwargs: Any,
) -> RoomsRouter:
    """A RoomsRouter with ``manager`` (a new in-process one by default).

    ``app.include_router(router)`` starts and stops the manager with the app's lifespan, makes
    ``Depends(get_manager)`` work anywhere in the app and closes WebSockets to unknown paths
    with 1001. ``authenticate``, ``allowed_origins`` and ``limits``: see the Security docs.
    """
    return RoomsRouter(
        manager,
        prefix=prefix,
        ready_endpoint=ready_endpoint,
        authenticate=authenticate,
        allowed_origins=allowed_origins,
        limits=limits,
        **apirouter_kwargs,
    )
