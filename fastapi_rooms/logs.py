"""Log records an aggregator can index: every record of the library carries ``node`` (the
manager's ``node_id``) and ``room`` and ``connection_id`` (None where they do not apply), as
``extra`` fields (``%(node)s`` in a format string, or a JSON formatter's keys). A manager and
its backplane say them; other layers (the socket, its buffer, the RSGI bridge) get the node
of the handler or lifespan they run in, from ``current_node``.

Every WARNING and ERROR message, and what to do about it, is listed in docs/logs.md.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

__all__ = ["NodeLogger", "current_node"]

current_node: ContextVar[str | None] = ContextVar("fastapi_rooms_node", default=None)
"""The node of the handler or lifespan running (set by the rooms router)."""

if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # subscriptable at run time only from Python 3.11
    _Adapter = logging.LoggerAdapter


class NodeLogger(_Adapter):
    """A logger whose records carry the node id, merged with each call's own ``extra``."""

    def __init__(self, logger: logging.Logger, node: str) -> None:
        super().__init__(logger, {"node": node, "room": None, "connection_id": None})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


class _Fields(logging.Filter):
    """Gives every record of the library's loggers the fields, even where no one set them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "node", None) is None:
            record.node = current_node.get()
        for key in ("room", "connection_id"):
            if not hasattr(record, key):
                setattr(record, key, None)
        return True


for _name in ("fastapi_rooms", "fastapi_rooms.backplane"):
    logging.getLogger(_name).addFilter(_Fields())
