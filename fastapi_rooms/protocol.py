"""The ready endpoint's JSON protocol as Pydantic models: the one definition of every event.

Client to server: ``join``, ``leave``, ``publish``, ``ping``. Server to client: ``welcome``,
``joined``, ``left``, ``message``, ``presence``, ``pong``, ``error``. Each is a model with a
``type`` literal, and ``ClientEvent`` / ``ServerEvent`` are unions discriminated on it. The
validation, the AsyncAPI document and the docs' protocol table all follow from these models.
The two events sent per broadcast (``message``, ``presence``) are encoded from plain dicts of
exactly these fields: building a model per broadcast would cost more than the fan-out.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from .encoding import json_dumps

__all__ = [
    "MAX_ROOM_NAME",
    "ClientEvent",
    "ErrorCode",
    "ErrorDetail",
    "ErrorEvent",
    "Join",
    "Joined",
    "Leave",
    "Left",
    "MessageEvent",
    "Ping",
    "Pong",
    "PresenceEvent",
    "Publish",
    "ServerEvent",
    "Shutdown",
    "Since",
    "Welcome",
    "client_event",
    "describe",
    "error_details",
    "error_json",
    "event_json",
]

MAX_ROOM_NAME = 200
RoomName = Annotated[
    str, Field(min_length=1, max_length=MAX_ROOM_NAME, description="The room's name.")
]

#: Every ``code`` an ``error`` event may carry.
ErrorCode = Literal[
    "invalid_message",  # not JSON, not a known event, or data failing its namespace's model
    "rate_limited",  # over the router's or the namespace's message rate: dropped
    "not_in_room",  # publish to a room the connection has not joined
    "message_too_big",  # the resulting message would exceed the size limit
    "forbidden",  # join refused by authorize_join (or no signed-in user)
    "publish_forbidden",  # the namespace does not let this client publish
    "too_many_rooms",  # max_rooms_per_connection reached
    "room_full",  # the room's member limit reached
    "unknown_namespace",  # strict namespaces: the room matches none
    "unavailable",  # a room with history whose backend is unreachable: not sent, try again
]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Client to server ------------------------------------------------------------------------------


class Since(_Event):
    """Where a client left a room with history: the last offset it saw, of which epoch."""

    offset: StrictInt = Field(ge=0)
    epoch: StrictStr = Field(min_length=1, max_length=64)


class Join(_Event):
    """Join a room; answered by ``joined`` or an ``error``. With ``since``, in a room with
    history, the messages missed since then follow the ``joined``."""

    type: Literal["join"]
    room: RoomName
    meta: JsonValue = Field(None, description="Shown to others in the room's presence.")
    since: Since | None = Field(None, description="Recover from this position (rejoin).")


class Leave(_Event):
    """Leave a room; answered by ``left``."""

    type: Literal["leave"]
    room: RoomName


class Publish(_Event):
    """Send ``data`` to every member of a room this connection has joined."""

    type: Literal["publish"]
    room: RoomName
    data: JsonValue = Field(description="Checked against the room's namespace model, if any.")
    exclude_self: bool = Field(False, description="Do not echo the message to the sender.")


class Ping(_Event):
    """Answered by ``pong``."""

    type: Literal["ping"]


ClientEvent = Annotated[Join | Leave | Publish | Ping, Field(discriminator="type")]
client_event: TypeAdapter[Join | Leave | Publish | Ping] = TypeAdapter(ClientEvent)


# Server to client ------------------------------------------------------------------------------


class Welcome(_Event):
    """First event on every connection."""

    type: Literal["welcome"]
    connection_id: str
    node: str = Field(description="The server process (node) holding the connection.")
    user_id: str | None = Field(None, description="Present when the connection is signed in.")


class Joined(_Event):
    """The join succeeded: messages published on any node now reach this connection.

    In a room with history: the room's latest ``offset`` and ``epoch`` (live messages follow
    from ``offset + 1``); after a ``since``, ``recovered`` says whether the missed messages
    follow (True) or could not be (False: reload the room's state from the app)."""

    type: Literal["joined"]
    room: str
    offset: int | None = None
    epoch: str | None = None
    recovered: bool | None = None


class Left(_Event):
    type: Literal["left"]
    room: str


class MessageEvent(_Event):
    """A message published to a room, by a client (``from`` its id) or the server (null)."""

    type: Literal["message"]
    room: str
    from_: str | None = Field(alias="from", description="The publishing connection's id.")
    data: JsonValue
    offset: int | None = Field(None, description="Its place in the room's history (1, 2, ...).")


class PresenceEvent(_Event):
    """Someone joined or left a room whose namespace has ``presence_events``."""

    type: Literal["presence"]
    event: Literal["join", "leave"]
    room: str
    connection_id: str
    user_id: str | None
    meta: JsonValue


class Pong(_Event):
    type: Literal["pong"]


class Shutdown(_Event):
    """The server is draining: reconnect after ``reconnect_after_ms`` (to another node); the
    connection is closed with ``code`` and ``reason`` if it is still open when the grace ends
    (said here too: Granian's RSGI cannot send a close code)."""

    type: Literal["shutdown"]
    reconnect_after_ms: int = Field(ge=0, description="A random delay: reconnects spread out.")
    code: int = Field(description="The close code that ends the connection.")
    reason: str


class ErrorDetail(BaseModel):
    """One validation error, as Pydantic reports it (without the input)."""

    loc: list[str | int] = Field(description="Where in the event: ['data', 'text'].")
    msg: str
    type: str


class ErrorEvent(_Event):
    """A request was refused or invalid; the connection stays open."""

    type: Literal["error"]
    code: ErrorCode
    message: str
    errors: list[ErrorDetail] | None = Field(
        None, description="For invalid_message: Pydantic's errors (at most 20)."
    )


ServerEvent = Annotated[
    Welcome | Joined | Left | MessageEvent | PresenceEvent | Pong | Shutdown | ErrorEvent,
    Field(discriminator="type"),
]

_MAX_ERRORS = 20
_MAX_LOC_PART = 64
_LOC_HEAD, _LOC_TAIL = 8, 4  # a deeper location keeps its first 8 and last 4 parts


def error_details(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[ErrorDetail]:
    """Pydantic's errors without the offending input: at most 20, each location at most 13
    parts of at most 64 characters, so a hostile message cannot make its answer large."""
    details = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False)[
        :_MAX_ERRORS
    ]:
        loc: list[str | int] = [
            part if isinstance(part, int) else _cut(str(part)) for part in (*prefix, *error["loc"])
        ]
        if len(loc) > _LOC_HEAD + _LOC_TAIL:
            loc = [*loc[:_LOC_HEAD], "…", *loc[-_LOC_TAIL:]]
        details.append(ErrorDetail(loc=loc, msg=_cut(error["msg"], 200), type=error["type"]))
    return details


def _cut(text: str, limit: int = _MAX_LOC_PART) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_json(event: BaseModel) -> str:
    """One server event as wire JSON (``from`` by its alias, ``None`` fields left out)."""
    return json_dumps(event.model_dump(mode="json", by_alias=True, exclude_none=True))


def error_json(code: ErrorCode, message: str, errors: list[ErrorDetail] | None = None) -> str:
    return event_json(ErrorEvent(type="error", code=code, message=message, errors=errors))


def describe(errors: list[ErrorDetail]) -> str:
    """The first error in one line: ``data.text: Field required``."""
    first = errors[0]
    where = ".".join(str(part) for part in first.loc) or "message"
    return f"{where}: {first.msg}"
