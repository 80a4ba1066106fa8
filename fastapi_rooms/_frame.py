"""Encode a message once into a frame shared by every recipient."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

__all__ = [
    "Frame",
    "MessageTooBig",
    "default_max_message_bytes",
    "encode",
    "json_dumps",
    "oversize",
]

_DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


def default_max_message_bytes() -> int:
    """The message size limit: env ``MAX_WS_MESSAGE_BYTES``, default 1 MiB (as Gobstopper)."""
    raw = os.environ.get("MAX_WS_MESSAGE_BYTES")
    if raw is None:
        return _DEFAULT_MAX_MESSAGE_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"MAX_WS_MESSAGE_BYTES must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"MAX_WS_MESSAGE_BYTES must be a positive integer, got {raw!r}")
    return value


class MessageTooBig(ValueError):
    """An outbound message is larger than the connection's message size limit."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


def oversize(data: str | bytes, limit: int) -> int:
    """0 when ``data`` fits in ``limit`` bytes, else its size in bytes.

    Text is only UTF-8 encoded when its length alone cannot decide (1 to 4 bytes a code point).
    """
    n = len(data)
    if not isinstance(data, str):
        return n if n > limit else 0
    if n * 4 <= limit:
        return 0
    size = n if n > limit else len(data.encode("utf-8", "surrogatepass"))
    return size if size > limit else 0


class Frame:
    """An encoded message: ``data`` (str for text, bytes for binary) and its ASGI send event."""

    __slots__ = ("asgi", "data")

    def __init__(self, data: str | bytes) -> None:
        self.data = data
        self.asgi: dict[str, Any] = (
            {"type": "websocket.send", "text": data}
            if isinstance(data, str)
            else {"type": "websocket.send", "bytes": data}
        )


def encode(message: Any, limit: int, dumps: Callable[[Any], str]) -> Frame:
    """str goes out unchanged as text, bytes as binary, anything else JSON-encoded once as text."""
    data: str | bytes
    if isinstance(message, (str, bytes)):
        data = message
    elif isinstance(message, (bytearray, memoryview)):
        data = bytes(message)
    else:
        data = dumps(message)
    size = oversize(data, limit)
    if size:
        raise MessageTooBig(size, limit)
    return Frame(data)


def json_dumps(value: Any) -> str:
    """Compact JSON that keeps non-ASCII text as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
