"""Log records an aggregator can index: every record of a manager or its backplane carries
``node`` (the manager's ``node_id``) and, where one applies, ``room`` and ``connection_id``,
as ``extra`` fields (``%(node)s`` in a format string, or a JSON formatter's keys).

Every WARNING and ERROR message, and what to do about it, is listed in docs/logs.md.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

__all__ = ["NodeLogger"]

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
