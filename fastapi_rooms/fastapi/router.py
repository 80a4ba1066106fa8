"""RoomsRouter: Gobstopper-style WebSocket handlers, the ready endpoint, REST, lifespan."""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

from fastapi import APIRouter, Depends, params
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from fastapi.routing import APIWebSocketRoute
from fastapi.security.base import SecurityBase
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket as StarletteWebSocket
from typing_extensions import Unpack

from ..compat.gobstopper import convert_path
from ..errors import CloseCode, ConfigurationError, ConnectionClosed
from ..logs import current_node
from ..manager import RoomManager
from ..namespaces import Namespace, NamespaceOptions
from ..policy import Limits, _header, client_ip, origin_allowed, user_id_of
from ..websocket import RSGI_EXTENSION, WebSocket
from .admin import add_admin_page
from .asyncapi import HandlerDoc, get_asyncapi, get_asyncapi_html
from .dependencies import _NOT_STARTED, STATE_KEY, get_manager, manager_for
from .health import add_health_endpoints
from .ready import serve_protocol
from .rest import add_rest_endpoints, rest_guard

__all__ = ["RoomsRouter", "create_rooms_router"]

_log = logging.getLogger("fastapi_rooms")

Handler = Callable[..., Awaitable[None]]
#: ``authenticate(websocket)`` returns a user (a str id, or with ``.id``) or None to refuse.
Authenticate = Callable[[WebSocket], Any]

H = TypeVar("H", bound=Handler)

_MANAGER_PARAM = "fastapi_rooms_manager_"  # the hidden Depends(get_manager) of every handler


# Handlers ------------------------------------------------------------------------------------


class _ReadyEndpoint:
    """The ready endpoint as a raw ASGI app. Not a coroutine itself: it returns the router's
    serve coroutine, so an idle connection holds only that frame and the protocol's. It has
    no parameters, so FastAPI's per-connection dependency machinery (about 7 KB per idle
    connection) buys nothing; with router ``dependencies=`` a FastAPI route serves it."""

    __slots__ = ("_router", "_yield_to")

    def __init__(self, router: RoomsRouter) -> None:
        self._router = router
        self._yield_to: dict[int, WebSocketRoute] = {}  # app id -> the app's route it yields to

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        other = self._user_route(scope)
        if other is not None:
            return other.handle(scope, receive, send)
        router = self._router
        manager = manager_for(scope, router.manager)
        if not manager.started:
            _log.error("refused a WebSocket at %s: %s", scope.get("path"), _NOT_STARTED)
            raise ConfigurationError(_NOT_STARTED)
        ws = WebSocket(
            scope,
            receive,
            send,
            max_message_bytes=manager.max_message_bytes,
            max_buffer=manager.max_buffer,
            overflow=manager.overflow,
        )
        return router._serve(
            router._ready, ws, {"manager": manager, "limits": router.limits}, manager
        )

    def _user_route(self, scope: Scope) -> WebSocketRoute | None:
        """A WebSocket route registered on the app itself for this path: the user's claim
        wins over the library's default, whatever the registration order. A route found is
        remembered per app; while none is, each connection looks again (routes may be added)."""
        app = scope.get("app")
        route = self._yield_to.get(id(app))
        if route is None:
            for candidate in getattr(getattr(app, "router", None), "routes", ()):
                if (
                    isinstance(candidate, WebSocketRoute)
                    and candidate.endpoint is not self
                    and candidate.matches(scope)[0] is Match.FULL
                ):
                    route = self._yield_to[id(app)] = candidate
                    _log.info(
                        "ready endpoint yields %s to %s, registered on the app",
                        scope.get("path"),
                        getattr(candidate.endpoint, "__qualname__", candidate.endpoint),
                    )
                    break
        if route is not None:
            scope.update(route.matches(scope)[1])
        return route


def _endpoint(
    handler: Handler, path: str, router: RoomsRouter, authenticate: bool, pass_manager: bool
) -> Callable[..., Awaitable[None]]:
    """A FastAPI WebSocket endpoint that calls ``handler(websocket, **path_params, **deps)``.

    FastAPI builds a Starlette WebSocket and hands it to the dependencies and to this
    endpoint; ``WebSocket.adopt`` makes that same object this library's.
    """
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
        if pass_manager:
            break  # the ready protocol: its keyword arguments come from the router
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
    manager_param = inspect.Parameter(
        _MANAGER_PARAM,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[RoomManager, Depends(get_manager)],
    )

    async def endpoint(**kwargs: Any) -> None:
        manager: RoomManager = kwargs.pop(_MANAGER_PARAM)
        ws = manager.wrap(kwargs.pop(ws_name))
        if pass_manager:
            kwargs = {"manager": manager, "limits": router.limits}
        await router._serve(handler, ws, kwargs, manager, authenticate=authenticate)

    endpoint.__signature__ = inspect.Signature([ws_param, *rest, manager_param])  # type: ignore[attr-defined]
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
        if RSGI_EXTENSION in scope.get("extensions", {}):
            # RSGI cannot send a close code: refuse the upgrade with 404 instead.
            await send({"type": "websocket.http.response.start", "status": 404, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b""})
            return
        await send({"type": "websocket.accept"})
        reason = "no route for this path"
        await send({"type": "websocket.close", "code": CloseCode.GOING_AWAY, "reason": reason})

    default._fastapi_rooms_going_away = True  # type: ignore[attr-defined]
    router.default = default


def _lifespan(rooms: RoomsRouter) -> Callable[[Any], Any]:
    manager = rooms.manager

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        state = getattr(app, "state", None)
        if state is not None:
            current = getattr(state, STATE_KEY, None)
            if current is not None and current is not manager:
                raise ConfigurationError(
                    "this app includes rooms routers with different RoomManagers; "
                    "pass one manager to every create_rooms_router(manager=...)"
                )
            setattr(state, STATE_KEY, manager)
        if rooms.close_unmatched:
            _install_going_away(app)
        current_node.set(manager.node_id)  # this lifespan's log records name the node
        rooms._log_open_endpoints()
        owner = not manager.started
        if owner:
            await manager.start()
        try:
            yield {STATE_KEY: manager}
        finally:
            if owner:
                await manager.stop()
            if state is not None and getattr(state, STATE_KEY, None) is manager:
                delattr(state, STATE_KEY)

    return lifespan


# Router --------------------------------------------------------------------------------------


class RoomsRouter(APIRouter):
    """An APIRouter with a RoomManager, Gobstopper-style ``.websocket``, the ready endpoint and
    REST endpoints that broadcast.

    ``dependencies=`` apply to every route, WebSocket handlers included, as in any APIRouter;
    ``rest_dependencies=`` to the REST endpoints only. The REST endpoints refuse every call
    unless one of those protects them or ``insecure_rest=True``. ``asyncapi_url`` serves the
    AsyncAPI document and ``asyncapi_docs_url`` its page (None turns either off; without the
    document there is no page, as FastAPI's ``openapi_url=None`` turns off ``/docs``);
    ``security`` names the schemes ``authenticate`` reads, for that document.
    ``liveness_url`` and ``readiness_url`` are the probes of a load balancer or Kubernetes
    (anonymous; they answer a status word only).
    """

    def __init__(
        self,
        manager: RoomManager | None = None,
        *,
        ready_endpoint: str | None = "/ws",
        rest: bool = True,
        rest_dependencies: Sequence[params.Depends] | None = None,
        insecure_rest: bool = False,
        close_unmatched: bool = True,
        authenticate: Authenticate | None = None,
        allowed_origins: Sequence[str] | None = None,
        limits: Limits | None = None,
        asyncapi_url: str | None = "/asyncapi.json",
        asyncapi_docs_url: str | None = "/asyncapi",
        security: Sequence[SecurityBase] = (),
        client_js_url: str | None = "/client.js",
        liveness_url: str | None = "/livez",
        readiness_url: str | None = "/readyz",
        metrics_url: str | None = None,
        metrics_registry: Any = None,
        admin_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        user_lifespan = kwargs.pop("lifespan", None)
        super().__init__(**kwargs)
        self.manager = manager if manager is not None else RoomManager()
        self.authenticate = authenticate
        self.allowed_origins = allowed_origins
        self.limits = limits if limits is not None else Limits()
        self.close_unmatched = close_unmatched
        self.insecure_rest = insecure_rest
        self._open = 0
        self._open_by_ip: dict[str, int] = {}
        self.accepted = 0
        """Handshakes admitted (origin, limits and authentication passed)."""
        self.refused: Counter[str] = Counter()
        """Handshakes refused, by reason: origin, capacity, per_ip, authentication, draining."""
        lifespan = _lifespan(self)
        if user_lifespan is not None:
            from fastapi.routing import _merge_lifespan_context

            lifespan = _merge_lifespan_context(lifespan, user_lifespan)
        self.lifespan_context = lifespan
        self.rooms_handlers: list[tuple[str, Handler]] = []
        self.rooms_handler_docs: list[HandlerDoc] = []
        """What the AsyncAPI document says of each handler (the ready endpoint aside)."""
        self.security = tuple(security)
        self.asyncapi_url = asyncapi_url
        self.asyncapi_docs_url = asyncapi_docs_url
        self._asyncapi_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._ready: Handler = serve_protocol  # called with manager= and limits=
        self._ready_path = None if ready_endpoint is None else self.prefix + ready_endpoint
        self._ready_route: Any = None
        self._ready_moved_for: str | None = None
        self._open_rest: list[str] = []
        if rest:
            open_rest = add_rest_endpoints(
                self, insecure=insecure_rest, dependencies=list(rest_dependencies or [])
            )
            if insecure_rest:
                self._open_rest = open_rest
        if ready_endpoint is not None:
            self._add_ready_endpoint(ready_endpoint, authenticate=authenticate is not None)
        add_health_endpoints(self, self.manager, liveness_url, readiness_url)
        guard = rest_guard(self, insecure_rest, list(rest_dependencies or []))  # reveals state
        if admin_url is not None:
            add_admin_page(self, self.manager, admin_url, guard)
        if metrics_url is not None or metrics_registry is not None:
            self._add_metrics(metrics_url, metrics_registry, guard)
        if client_js_url is not None:
            self.add_api_route(
                client_js_url,
                _client_js,
                methods=["GET"],
                include_in_schema=False,
                name="fastapi_rooms_client_js",
            )
        if asyncapi_url is not None:
            self.add_api_route(
                asyncapi_url,
                self._asyncapi,
                methods=["GET"],
                include_in_schema=False,
                name="fastapi_rooms_asyncapi",
            )
            if asyncapi_docs_url is not None:
                self.add_api_route(
                    asyncapi_docs_url,
                    self._asyncapi_page,
                    methods=["GET"],
                    include_in_schema=False,
                    name="fastapi_rooms_asyncapi_page",
                )

    def _add_metrics(
        self, url: str | None, registry: Any, guard: list[params.Depends]
    ) -> None:
        """Register the manager's Prometheus metrics; serve them at ``url`` (if given), as
        protected as the REST endpoints (they reveal state)."""
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        from ..metrics import register_metrics

        registry = REGISTRY if registry is None else registry
        register_metrics(self.manager, registry, self)
        if url is None:
            return  # the app serves the registry itself

        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        self.add_api_route(
            url,
            metrics,
            methods=["GET"],
            dependencies=guard,
            include_in_schema=False,
            name="fastapi_rooms_metrics",
        )

    @property
    def ready_path(self) -> str | None:
        """The ready endpoint's path (with the prefix), None when it is not mounted."""
        return None if self._ready_route is None else self._ready_path

    def asyncapi(self, request: Request, *, root_path: str | None = None) -> dict[str, Any]:
        """The AsyncAPI 3.0 document as served to ``request``: its host and scheme, and
        ``root_path`` before the router's paths (default: the request's root path)."""
        if root_path is None:
            root_path = request.scope.get("root_path", "")
        app = request.scope.get("app")
        host = request.headers.get("host") or request.url.netloc
        protocol = "wss" if request.url.scheme in ("https", "wss") else "ws"
        namespaces = self.manager.namespaces
        key = (id(app), host, protocol, root_path, len(namespaces), namespaces.strict,
               len(self.rooms_handler_docs), self.ready_path)  # fmt: skip
        document = self._asyncapi_cache.get(key)
        if document is None:
            if len(self._asyncapi_cache) >= 32:  # hosts are the client's to choose
                self._asyncapi_cache.clear()
            document = self._asyncapi_cache[key] = get_asyncapi(
                self,
                title=f"{getattr(app, 'title', None) or 'Rooms'} (WebSockets)",
                version=str(getattr(app, "version", None) or "0.1.0"),
                description=getattr(app, "description", None) or None,
                host=host,
                protocol=protocol,
                root_path=root_path,
                security=self.security,
            )
        return document

    def _mounted_at(self, request: Request, own: str) -> str:
        """What precedes the router's own paths, from the path this request came in on (the
        root path, an include_router prefix)."""
        path = request.url.path
        own = self.prefix + own
        return path[: -len(own)] if path.endswith(own) else request.scope.get("root_path", "")

    async def _asyncapi(self, request: Request) -> JSONResponse:
        assert self.asyncapi_url is not None
        return JSONResponse(
            self.asyncapi(request, root_path=self._mounted_at(request, self.asyncapi_url))
        )

    async def _asyncapi_page(self, request: Request) -> HTMLResponse:
        assert self.asyncapi_url is not None
        assert self.asyncapi_docs_url is not None
        app = request.scope.get("app")
        mounted_at = self._mounted_at(request, self.asyncapi_docs_url)
        return get_asyncapi_html(
            asyncapi_url=mounted_at + self.prefix + self.asyncapi_url,
            title=f"{getattr(app, 'title', None) or 'Rooms'} - AsyncAPI",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Served as an ASGI app of its own, mounted in a plain Starlette app (no FastAPI app
        around it), the REST endpoints still get the exit stack FastAPI's app would give them."""
        if scope["type"] == "http" and "fastapi_middleware_astack" not in scope:
            await AsyncExitStackMiddleware(super().__call__)(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def namespace(self, pattern: str, /, **options: Unpack[NamespaceOptions]) -> Namespace:
        """Declare a kind of room on the router's manager (see ``RoomManager.namespace``)."""
        return self.manager.namespace(pattern, **options)

    def _mark_changed(self) -> None:
        mark = getattr(self, "_mark_routes_changed", None)
        if mark is not None:
            mark()

    # WebSocket handlers ----------------------------------------------------------------------

    def add_rooms_websocket(
        self,
        path: str,
        handler: Handler,
        name: str | None = None,
        *,
        dependencies: Sequence[params.Depends] | None = None,
        authenticate: bool = False,
        receives: Any = None,
        sends: Any = None,
    ) -> None:
        """Register ``handler(websocket, **path_params)`` at ``path`` (``{x}`` or ``<int:x>``).

        Every handler passes the router's origin check and connection limits before it runs;
        with ``authenticate=True`` also the router's ``authenticate`` hook (``websocket.user``
        and ``websocket.user_id`` are set when it runs). The router's ``dependencies=`` apply
        first, as in any APIRouter. A handler at the ready endpoint's path replaces it.
        ``receives``/``sends``: the types (Pydantic models) of what clients send and what the
        handler sends, for the AsyncAPI document (documented, not validated).
        """
        if authenticate and self.authenticate is None:
            raise ValueError(
                f"{path}: authenticate=True needs create_rooms_router(authenticate=...)"
            )
        self._add_handler(path, handler, name, dependencies, authenticate, ready=False)
        full_path = self.rooms_handlers[-1][0]
        _, path_types = convert_path(path)
        try:
            hints = get_type_hints(handler)
        except Exception:  # unresolvable annotations: the path's own types
            hints = {}
        params = {name: hints.get(name, kind) for name, kind in path_types.items()}
        self.rooms_handler_docs.append(
            HandlerDoc(
                path=full_path,
                name=name or str(getattr(handler, "__name__", "handler")),
                description=inspect.getdoc(handler),
                params=params,
                receives=None if receives is None else TypeAdapter(receives),
                sends=None if sends is None else TypeAdapter(sends),
                authenticate=authenticate,
            )
        )

    def _add_handler(
        self,
        path: str,
        handler: Handler,
        name: str | None,
        dependencies: Sequence[params.Depends] | None,
        authenticate: bool,
        *,
        ready: bool,
    ) -> None:
        endpoint = _endpoint(handler, path, self, authenticate, pass_manager=ready)
        full_path = self.prefix + endpoint.__rooms_handler__[1]  # type: ignore[attr-defined]
        for claimed, other in self.rooms_handlers:
            if claimed == full_path and other is not self._ready:
                raise ConfigurationError(
                    f"two WebSocket handlers claim {full_path!r}: "
                    f"{_describe(other)} and {_describe(handler)}"
                )
        if not ready and full_path == self._ready_path and self._ready_route is not None:
            self._remove_ready()
            self._ready_moved_for = _describe(handler)
            self.manager._log.info(
                "ready endpoint not mounted: %s is served by %s", full_path, self._ready_moved_for
            )
        route = APIWebSocketRoute(
            full_path,
            endpoint=endpoint,
            name=name,
            dependencies=[*self.dependencies, *(dependencies or [])],
            dependency_overrides_provider=self.dependency_overrides_provider,
        )
        self.routes.append(route)
        self._mark_changed()
        self.rooms_handlers.append((full_path, handler))
        if ready:
            self._ready_route = route

    def _add_ready_endpoint(self, path: str, *, authenticate: bool) -> None:
        if self.dependencies:  # they must run, as for any route of this router
            self._add_handler(path, self._ready, "fastapi_rooms_ws", None, authenticate, ready=True)
            return
        endpoint = _ReadyEndpoint(self)
        route = WebSocketRoute(self.prefix + path, endpoint, name="fastapi_rooms_ws")
        self.routes.append(route)
        self._mark_changed()
        self.rooms_handlers.append((self.prefix + path, self._ready))
        self._ready_route = route

    def _remove_ready(self) -> None:
        self.routes.remove(self._ready_route)
        self.rooms_handlers = [(p, h) for p, h in self.rooms_handlers if h is not self._ready]
        self._ready_route = None
        self._mark_changed()

    def websocket(
        self,
        path: str,
        name: str | None = None,
        *,
        dependencies: Sequence[params.Depends] | None = None,
        authenticate: bool = False,
        receives: Any = None,
        sends: Any = None,
    ) -> Callable[[H], H]:
        """Decorator for a Gobstopper-style handler ``async def handler(websocket, **params)``."""

        def decorator(handler: H) -> H:
            self.add_rooms_websocket(
                path,
                handler,
                name,
                dependencies=dependencies,
                authenticate=authenticate,
                receives=receives,
                sends=sends,
            )
            return handler

        return decorator

    def _log_open_endpoints(self) -> None:
        """One start-up line per thing left open on purpose, and what the router decided."""
        if self._open_rest:
            self.manager._log.warning(
                "rooms REST endpoints open to anonymous callers (insecure_rest=True): %s",
                ", ".join(self._open_rest),
            )
        if self._ready_route is not None and self.authenticate is None:
            self.manager._log.info(
                "ready endpoint %s accepts anonymous WebSocket connections (no authenticate)",
                self._ready_path,
            )
        if self._ready_moved_for is not None:
            self.manager._log.info(
                "ready endpoint not mounted: %s is served by %s",
                self._ready_path,
                self._ready_moved_for,
            )
        if self.close_unmatched:
            self.manager._log.info(
                "WebSockets to unmatched paths are closed with 1001 "
                "(create_rooms_router(close_unmatched=False) leaves them to the app)"
            )

    # Admission -------------------------------------------------------------------------------

    async def _serve(
        self,
        handler: Handler,
        ws: WebSocket,
        kwargs: dict[str, Any],
        manager: RoomManager,
        *,
        authenticate: bool | None = None,
    ) -> None:
        """Admit (origin, limits, authentication), run the handler, free the slot after.

        1011 if the handler raises after accept, 403 if it returns without accepting.
        """
        if authenticate is None:
            authenticate = self.authenticate is not None
        current_node.set(manager.node_id)  # this connection's log records name the node
        if manager.draining:
            self.refused["draining"] += 1
            self.manager._log.info("refused a WebSocket to %s: this node is draining", ws.path)
            await ws.reject(503, "server draining")
            return
        claimed = await self._admit(ws, authenticate)
        if claimed is None:
            return  # refused: the handshake was answered
        if manager.draining:  # began while the authenticate hook ran
            self._release(claimed)
            self.refused["draining"] += 1
            await ws.reject(503, "server draining")
            return
        self.accepted += 1
        manager._track(ws)
        try:
            await handler(ws, **kwargs)
        except Exception as exc:
            if not ws.accepted:
                raise  # the server answers the handshake with HTTP 500 and logs it
            if ws.closed and isinstance(exc, ConnectionClosed):
                _log.debug("handler for %s ended on a closed connection", ws.path)
            else:
                self.manager._log.exception(
                    "WebSocket handler for %s raised; closing with 1011", ws.path
                )
                if not ws.closed:
                    await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        else:
            if not ws.closed:
                await ws.close(CloseCode.NORMAL)  # before accept this rejects the handshake
        finally:
            manager._untrack(ws)
            self._release(claimed)

    async def _admit(self, ws: WebSocket, authenticate: bool) -> str | None:
        """Origin, connection limits, then authentication: the client address whose slot was
        claimed, or None after refusing the handshake."""
        if not origin_allowed(ws, self.allowed_origins):
            self.refused["origin"] += 1
            self.manager._log.warning("refused a WebSocket from origin %r", _header(ws, b"origin"))
            await ws.reject(403, "origin not allowed")
            return None
        limits = self.limits
        ip = client_ip(ws, limits.trusted_proxies)
        if limits.max_connections is not None and self._open >= limits.max_connections:
            self.refused["capacity"] += 1
            self.manager._log.warning(
                "refused a WebSocket from %s: %d connections open", ip, self._open
            )
            await ws.reject(503, "too many connections")
            return None
        per_ip = self._open_by_ip.get(ip, 0)
        if limits.max_connections_per_ip is not None and per_ip >= limits.max_connections_per_ip:
            self.refused["per_ip"] += 1
            self.manager._log.warning(
                "refused a WebSocket from %s: %d connections from there", ip, per_ip
            )
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
                self.refused["authentication"] += 1
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
            self.manager._log.exception("the authenticate hook failed; refusing the handshake")
            return None
        ws.user = user
        ws.user_id = user_id
        return user_id


_CLIENT_JS = Path(__file__).resolve().parent.parent / "static" / "rooms.js"


async def _client_js() -> Response:
    """The JavaScript client (``fastapi_rooms/static/rooms.js``), an ES module."""
    return Response(
        _CLIENT_JS.read_bytes(),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _describe(handler: Any) -> str:
    module = getattr(handler, "__module__", "?")
    return f"{module}.{getattr(handler, '__qualname__', handler)}()"


def create_rooms_router(
    manager: RoomManager | None = None,
    *,
    prefix: str = "",
    ready_endpoint: str | None = "/ws",
    rest: bool = True,
    rest_dependencies: Sequence[params.Depends] | None = None,
    insecure_rest: bool = False,
    close_unmatched: bool = True,
    authenticate: Authenticate | None = None,
    allowed_origins: Sequence[str] | None = None,
    limits: Limits | None = None,
    asyncapi_url: str | None = "/asyncapi.json",
    asyncapi_docs_url: str | None = "/asyncapi",
    security: Sequence[SecurityBase] = (),
    client_js_url: str | None = "/client.js",
    liveness_url: str | None = "/livez",
    readiness_url: str | None = "/readyz",
    metrics_url: str | None = None,
    metrics_registry: Any = None,
    admin_url: str | None = None,
    **apirouter_kwargs: Any,
) -> RoomsRouter:
    """A RoomsRouter with ``manager`` (a new in-process one by default).

    ``app.include_router(router)`` starts and stops the manager with the app's lifespan, makes
    ``Depends(get_manager)`` work anywhere in the app and (``close_unmatched``) closes
    WebSockets to unknown paths with 1001. The REST endpoints refuse calls unless
    ``dependencies=`` or ``rest_dependencies=`` protect them, or ``insecure_rest=True``.
    ``authenticate``, ``allowed_origins`` and ``limits``: see the Security docs.
    ``asyncapi_url``/``asyncapi_docs_url`` serve the AsyncAPI document and its page,
    ``client_js_url`` the JavaScript client, ``liveness_url``/``readiness_url`` the health
    probes (None turns any of them off). ``metrics_url`` serves Prometheus metrics (the
    ``metrics`` extra), as protected as the REST endpoints; ``metrics_registry`` alone
    registers them on that registry for the app to serve. ``admin_url`` serves a live admin
    page there, as protected as the REST endpoints.
    """
    return RoomsRouter(
        manager,
        prefix=prefix,
        ready_endpoint=ready_endpoint,
        rest=rest,
        rest_dependencies=rest_dependencies,
        insecure_rest=insecure_rest,
        close_unmatched=close_unmatched,
        authenticate=authenticate,
        allowed_origins=allowed_origins,
        limits=limits,
        asyncapi_url=asyncapi_url,
        asyncapi_docs_url=asyncapi_docs_url,
        security=security,
        client_js_url=client_js_url,
        liveness_url=liveness_url,
        readiness_url=readiness_url,
        metrics_url=metrics_url,
        metrics_registry=metrics_registry,
        admin_url=admin_url,
        **apirouter_kwargs,
    )
