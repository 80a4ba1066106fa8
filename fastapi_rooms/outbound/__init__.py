"""Ordered, bounded delivery to one connection: one queue over an ASGI or an RSGI sink."""

from .asgi import ASGISink
from .queue import Outbound, Overflow, Sink
from .rsgi import RSGISink

__all__ = ["ASGISink", "Outbound", "Overflow", "RSGISink", "Sink"]
