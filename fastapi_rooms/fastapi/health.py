"""Liveness and readiness endpoints for load balancers and Kubernetes probes.

They answer anonymous callers (probes rarely carry credentials) and so say no more than
``alive``, ``ready`` or ``not_ready``; why a node is not ready is in the logs and in the
protected ``GET /stats``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import Request

from ..manager import RoomManager
from .dependencies import manager_for

__all__ = ["add_health_endpoints"]

_log = logging.getLogger("fastapi_rooms")


def add_health_endpoints(
    router: APIRouter,
    manager: RoomManager,
    liveness_url: str | None,
    readiness_url: str | None,
) -> None:
    """``GET liveness_url``: 200 while the process serves requests. ``GET readiness_url``:
    200 when the node should get new connections, else 503 (not started, draining, or its
    backend down or deaf). ``manager``: the router's (``dependency_overrides`` win)."""
    if liveness_url is not None:

        async def alive() -> JSONResponse:
            return JSONResponse({"status": "alive"})

        _add_open_route(router, liveness_url, alive, "fastapi_rooms_liveness")
    if readiness_url is not None:
        said: dict[int, str | None] = {}

        async def ready(request: Request) -> JSONResponse:
            serving = manager_for(request.scope, manager)
            reason = serving.not_ready()
            if said.get(id(serving)) != reason:  # log each change once
                said[id(serving)] = reason
                if reason is not None:
                    _log.warning("readiness probe: not ready (%s)", reason)
                else:
                    _log.info("readiness probe: ready")
            if reason is None:
                return JSONResponse({"status": "ready"})
            return JSONResponse({"status": "not_ready"}, status_code=503)

        _add_open_route(router, readiness_url, ready, "fastapi_rooms_readiness")


def _add_open_route(router: APIRouter, path: str, endpoint: Any, name: str) -> None:
    """A route without the router's own ``dependencies=`` (an auth guard there would keep a
    probe out, and Kubernetes would restart a healthy pod); ``include_router``'s still apply."""
    router.routes.append(
        APIRoute(router.prefix + path, endpoint, methods=["GET"], include_in_schema=False,
                 name=name)
    )  # fmt: skip
