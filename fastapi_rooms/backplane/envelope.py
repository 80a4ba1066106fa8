"""The envelope between nodes: a magic, a small JSON header, the payload (never pickle).

A numbered envelope (a message of a room with history) is written by the backend's append:
its header says ``"h": 1`` and its body is ``<offset> <epoch> <frame>``, the offset being
assigned by the backend as it keeps the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Envelope", "decode", "encode", "numbered_prefix"]

_MAGIC = b"FR1"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message between nodes: kind ``room``/``all``/``conn``/``user``, target, excluded ids."""

    origin: str
    kind: str
    target: str
    exclude: tuple[str, ...]
    data: str | bytes
    offset: int = 0  # a numbered envelope's offset in its room (0: not numbered)
    epoch: str = ""


def _header(envelope: Envelope, numbered: bool) -> bytes:
    header: dict[str, Any] = {
        "o": envelope.origin,
        "k": envelope.kind,
        "t": envelope.target,
        "b": isinstance(envelope.data, bytes),
    }
    if envelope.exclude:
        header["x"] = list(envelope.exclude)
    if numbered:
        header["h"] = 1
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > 0xFFFF:
        raise ValueError(
            f"envelope header of {len(raw)} bytes exceeds 65535 (too many excluded ids)"
        )
    return _MAGIC + len(raw).to_bytes(2, "big") + raw


def encode(envelope: Envelope) -> bytes:
    """``FR1`` + 2-byte header length + JSON header + payload (never pickle)."""
    body = envelope.data if isinstance(envelope.data, bytes) else envelope.data.encode()
    return _header(envelope, False) + body


def numbered_prefix(envelope: Envelope) -> bytes:
    """A numbered envelope up to its body: the backend appends ``<offset> <epoch> <frame>``."""
    return _header(envelope, True)


def decode(payload: bytes) -> Envelope:
    """Parse an envelope; ValueError says what was expected and what arrived."""
    if not payload.startswith(_MAGIC):
        raise ValueError(f"expected an envelope starting with {_MAGIC!r}, got {payload[:8]!r}")
    if len(payload) < 5:
        raise ValueError(f"envelope of {len(payload)} bytes is too short")
    size = int.from_bytes(payload[3:5], "big")
    if len(payload) < 5 + size:
        raise ValueError(f"envelope header claims {size} bytes, only {len(payload) - 5} present")
    try:
        header = json.loads(payload[5 : 5 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"envelope header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"envelope header should be an object, got {type(header).__name__}")
    origin, kind, target = header.get("o"), header.get("k"), header.get("t")
    exclude = header.get("x", [])
    if (
        not isinstance(origin, str)
        or kind not in ("room", "all", "conn", "user", "probe")
        or not isinstance(target, str)
    ):
        raise ValueError(f"envelope header lacks a valid origin, kind or target: {header!r}")
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        raise ValueError(f"envelope 'x' should be a list of ids, got {exclude!r}")
    body = payload[5 + size :]
    if header.get("h"):
        return _numbered(origin, kind, target, tuple(exclude), body)
    data: str | bytes
    if header.get("b"):
        data = bytes(body)
    else:
        try:
            data = body.decode()
        except UnicodeDecodeError:
            raise ValueError("envelope text payload is not UTF-8") from None
    return Envelope(origin, kind, target, tuple(exclude), data)


def _numbered(
    origin: str, kind: str, target: str, exclude: tuple[str, ...], body: bytes
) -> Envelope:
    number, _, rest = body.partition(b" ")
    epoch, _, frame = rest.partition(b" ")
    if kind != "room" or not number.isdigit() or not epoch or int(number) < 1:
        raise ValueError(
            f"numbered envelope should be a room message with '<offset> <epoch> <frame>', "
            f"got kind {kind!r} and {bytes(body[:40])!r}"
        )
    try:
        data, epoch_text = frame.decode(), epoch.decode()
    except UnicodeDecodeError:
        raise ValueError("numbered envelope is not UTF-8") from None
    return Envelope(origin, kind, target, exclude, data, int(number), epoch_text)
