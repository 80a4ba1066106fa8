"""Encode a message once into a frame shared by every recipient; the one JSON encoder."""

from __future__ import annotations

import json
import os
from typing import Any
from uuid import UUID

from pydantic_core import to_jsonable_python

from .errors import MessageTooBig

__all__ = [
    "Frame",
    "default_max_message_bytes",
    "encode",
    "json_dumps",
    "oversize",
    "room_name",
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


_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=to_jsonable_python
)


def json_dumps(value: Any) -> str:
    """Compact JSON a browser's ``JSON.parse`` accepts.

    Pydantic models, dataclasses, datetimes, UUIDs, Decimals, enums and sets are encoded as
    FastAPI encodes them (Pydantic's JSON mode). NaN and infinities raise ValueError (JSON has
    no such values), as does text that cannot be UTF-8 (a lone surrogate).
    """
    try:
        text = _encoder.encode(value)
    except (ValueError, TypeError) as exc:  # NaN; a key JSON cannot have (a UUID, a date)
        raise ValueError(f"message is not valid JSON: {exc}") from None
    _check_utf8(text)
    return text


def _check_utf8(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"text is not valid UTF-8 (a lone surrogate at index {exc.start})"
            ) from None


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


def encode(message: Any, limit: int) -> Frame:
    """str goes out unchanged as text, bytes as binary, anything else JSON-encoded once as text.

    MessageTooBig over ``limit`` bytes; ValueError for what no client could decode.
    """
    data: str | bytes
    if isinstance(message, str):
        _check_utf8(message)
        data = message
    elif isinstance(message, bytes):
        data = message
    elif isinstance(message, (bytearray, memoryview)):
        data = bytes(message)
    else:
        data = json_dumps(message)
    size = oversize(data, limit)
    if size:
        raise MessageTooBig(size, limit)
    return Frame(data)


def room_name(room: Any) -> str:
    """A room's name as the library keys it: str, or an int or UUID written as text.

    ``join_room(cid, 42)`` and ``POST /rooms/42/broadcast`` must reach one room, not two.
    """
    if isinstance(room, str):
        return room if type(room) is str else str.__str__(room)
    if (isinstance(room, int) and not isinstance(room, bool)) or isinstance(room, UUID):
        return str(room)
    raise TypeError(f"a room name should be a str (or an int or UUID), got {type(room).__name__}")
