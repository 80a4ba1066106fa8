"""Gobstopper compatibility: its path syntax (``<int:name>``) and its names.

Attribute access to the scope (``websocket.scope.path``) lives with the WebSocket
(``fastapi_rooms.websocket.Scope``); Gobstopper's ``Message.kind`` numbers with ``Message``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from ..manager import RoomManager

__all__ = ["WebSocketManager", "convert_path"]

#: Gobstopper's name for the manager.
WebSocketManager = RoomManager

_CONVERTERS: dict[str, tuple[str, type[Any]]] = {
    "str": ("str", str),
    "string": ("str", str),
    "int": ("int", int),
    "float": ("float", float),
    "uuid": ("uuid", uuid.UUID),
    "path": ("path", str),
}
_ANGLE = re.compile(r"<(?:(?P<conv>[A-Za-z_]+):)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>")
_BRACE = re.compile(r"{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<conv>[A-Za-z_]+))?}")


def convert_path(path: str) -> tuple[str, dict[str, type[Any]]]:
    """Return the Starlette path and each parameter's Python type."""
    types: dict[str, type[Any]] = {}

    def angle(match: re.Match[str]) -> str:
        conv = match["conv"] or "str"
        if conv not in _CONVERTERS:
            raise ValueError(
                f"unknown path converter {conv!r} in {path!r}: "
                f"expected one of {sorted(_CONVERTERS)}"
            )
        starlette_conv, kind = _CONVERTERS[conv]
        types[match["name"]] = kind
        return "{" + match["name"] + ("" if starlette_conv == "str" else ":" + starlette_conv) + "}"

    converted = _ANGLE.sub(angle, path)
    for match in _BRACE.finditer(converted):
        conv = match["conv"] or "str"
        types.setdefault(match["name"], _CONVERTERS.get(conv, ("str", str))[1])
    return converted, types
