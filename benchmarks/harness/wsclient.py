"""A lean WebSocket client for holding many connections in one process (asyncio protocol,
no task per connection): the HTTP upgrade, unmasked server frames, masked client frames,
pongs to pings. Enough for benchmarks; not a general client (no fragmentation on send, no
extensions)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Callable

__all__ = ["WSConn", "connect"]

_KEY = base64.b64encode(os.urandom(16)).decode()
_MASK = os.urandom(4)
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+
_MASK_INT = int.from_bytes(_MASK, "big")

OnMessage = Callable[["WSConn", bytes], None]


def _masked(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        repeated = (_MASK_INT.to_bytes(4, "big") * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
            n, "big"
        )
    return head + _MASK + payload


class WSConn(asyncio.Protocol):
    """One client connection. ``on_message(conn, payload)`` gets each text or binary message."""

    __slots__ = (
        "_buf", "_opened", "_request", "close_code", "closed", "on_message", "state", "transport",
    )  # fmt: skip

    def __init__(self, request: bytes, on_message: OnMessage) -> None:
        self._request = request
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = b""
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_code: int | None = None
        self.state = 0  # free for the benchmark's own use (a protocol step, say)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if not self._opened.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if b" 101 " not in status:
                self._opened.set_exception(ConnectionError(f"handshake refused: {status!r}"))
                if self.transport is not None:
                    self.transport.close()
                return
            self._opened.set_result(None)
            buf = buf[end + 4 :]
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + n:
                break
            payload = buf[pos + head : pos + head + n]
            pos += head + n
            opcode = b0 & 0x0F
            if opcode in (1, 2, 0):
                self.on_message(self, payload)
            elif opcode == 9:
                self._write(10, payload)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if n >= 2 else 1005
                self.abort()
                return
        self._buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._opened.done():
            self._opened.set_exception(exc or ConnectionError("closed before the handshake"))

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_masked(opcode, payload))

    def send_text(self, text: str) -> None:
        self._write(1, text.encode())

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True


async def connect(
    host: str,
    port: int,
    path: str,
    on_message: OnMessage,
    local_host: str | None = None,
    timeout: float = 30.0,
) -> WSConn:
    """Open one connection (from ``local_host`` when given) and finish its handshake."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if local_host:
            # Choose the port at connect() from the whole 4-tuple, not at bind(): a bind to
            # port 0 searches for a port free on that address, slower with every socket open.
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((local_host, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        _, conn = await loop.create_connection(lambda: WSConn(request, on_message), sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await asyncio.wait_for(asyncio.shield(conn._opened), timeout)
    except BaseException:
        conn.abort()
        raise
    return conn
