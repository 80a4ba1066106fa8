"""The AsyncAPI 3.0 document of a rooms router, and the page that renders it.

``get_asyncapi`` is to WebSockets what FastAPI's ``get_openapi`` is to HTTP: the ready
endpoint's channel with every event of ``fastapi_rooms.protocol``, each namespace's payloads,
the router's own handlers with their path parameters and declared payloads, and security
schemes. ``get_asyncapi_html`` is the ``get_swagger_ui_html`` of the AsyncAPI React component.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi.security.base import SecurityBase
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema
from starlette.responses import HTMLResponse

from ..namespaces import Namespace, ecma_pattern
from ..protocol import (
    MAX_ROOM_NAME,
    ErrorEvent,
    Join,
    Joined,
    Leave,
    Left,
    MessageEvent,
    Ping,
    Pong,
    PresenceEvent,
    Publish,
    Shutdown,
    Welcome,
)

if TYPE_CHECKING:
    from .router import RoomsRouter

__all__ = ["ASYNCAPI_CSS_URL", "ASYNCAPI_JS_URL", "HandlerDoc", "get_asyncapi", "get_asyncapi_html"]

_COMPONENT = "https://unpkg.com/@asyncapi/react-component@3.2.1"
ASYNCAPI_JS_URL = f"{_COMPONENT}/browser/standalone/index.js"
ASYNCAPI_CSS_URL = f"{_COMPONENT}/styles/default.min.css"

_SCHEMAS = "#/components/schemas/{model}"
_READY = "rooms"  # the ready endpoint's channel id
_CLIENT_EVENTS: tuple[type[BaseModel], ...] = (Join, Leave, Publish, Ping)
_SERVER_EVENTS: tuple[type[BaseModel], ...] = (
    Welcome,
    Joined,
    Left,
    MessageEvent,
    PresenceEvent,
    Pong,
    Shutdown,
    ErrorEvent,
)
#: Client events and what may answer them (a publish is answered only when it is refused).
_REPLIES = {
    "join": ("joined", "error"),
    "leave": ("left",),
    "ping": ("pong",),
    "publish": ("error",),
}


@dataclass(frozen=True)
class HandlerDoc:
    """What the document says about one ``@router.websocket`` handler."""

    path: str  # Starlette syntax, with the router's prefix
    name: str
    description: str | None
    params: dict[str, type[Any]]
    receives: TypeAdapter[Any] | None  # what the handler receives from a client
    sends: TypeAdapter[Any] | None  # what it sends
    authenticate: bool


def get_asyncapi(
    router: RoomsRouter,
    *,
    title: str,
    version: str,
    description: str | None = None,
    host: str = "localhost:8000",
    protocol: str = "ws",
    root_path: str = "",
    security: Sequence[SecurityBase] = (),
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a dict) of ``router``, its manager's namespaces and handlers.

    ``host`` and ``protocol`` (``ws`` or ``wss``) name the server; ``root_path`` is what comes
    before the router's own paths (the app's root path, an ``include_router`` prefix);
    ``security`` lists the FastAPI security schemes (``HTTPBearer()``,
    ``APIKeyQuery(name="token")``, ...) that describe what ``authenticate`` reads: they are
    documented here, not enforced.
    """
    namespaces = list(router.manager.namespaces)
    strict = router.manager.namespaces.strict
    keys = _keys(ns.pattern for ns in namespaces)
    inputs: list[tuple[str, Any, Any]] = [
        *((m.__name__, "validation", m.__pydantic_core_schema__) for m in _CLIENT_EVENTS),
        *((m.__name__, "serialization", m.__pydantic_core_schema__) for m in _SERVER_EVENTS),
    ]
    for key, ns in zip(keys, namespaces, strict=True):
        if ns.adapter is not None:
            inputs.append((f"in:{key}", "validation", ns.adapter.core_schema))
            inputs.append((f"out:{key}", "serialization", ns.adapter.core_schema))
    handlers = list(router.rooms_handler_docs)
    for i, doc in enumerate(handlers):
        for direction, kind, mode in (
            ("in", doc.receives, "validation"),
            ("out", doc.sends, "serialization"),
        ):
            if kind is not None:
                inputs.append((f"h{direction}:{i}", mode, kind.core_schema))
    generator = GenerateJsonSchema(ref_template=_SCHEMAS)
    mapping, defs = generator.generate_definitions(
        [(key, mode, core) for key, mode, core in inputs]
    )
    schema_of = {key: _asyncapi_schema(value) for (key, _mode), value in mapping.items()}
    schemas: dict[str, Any] = {name: _asyncapi_schema(value) for name, value in defs.items()}
    # Pydantic renames a model whose name is taken twice: look the protocol's up by reference.
    name_of = {
        key: value["$ref"].rsplit("/", 1)[1]
        for (key, _mode), value in mapping.items()
        if isinstance(value, dict) and "$ref" in value
    }

    messages: dict[str, Any] = {}
    for model in (*_CLIENT_EVENTS, *_SERVER_EVENTS):
        event = _event_type(model)
        messages[event] = _message(event, model.__doc__, schema_of[model.__name__])
    publish_keys = ["publish"] if not strict else []
    message_keys = ["message"] if not strict else []
    for key, ns in zip(keys, namespaces, strict=True):
        about = ns.description or f"Rooms named {ns.pattern!r}."
        room = {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ROOM_NAME,
            "pattern": ecma_pattern(ns.pattern),
            "description": about,
        }
        data_in = schema_of.get(f"in:{key}", {})
        data_out = schema_of.get(f"out:{key}", {})
        where = f"a room of namespace {ns.pattern!r}"
        components = (schemas, messages, key, room)
        if ns.publish != "nobody":
            summary = f"Publish to {where}. {_publish_rule(ns)}"
            base = schemas[name_of["Publish"]]
            publish_keys.append(_typed(components, "publish", "Publish", base, data_in, summary))
        base = schemas[name_of["MessageEvent"]]
        summary = f"A message in {where}."
        message_keys.append(_typed(components, "message", "MessageEvent", base, data_out, summary))
    if strict:  # no generic publish or message: every room belongs to a namespace
        messages.pop("publish")
        messages.pop("message")
        schemas.pop(name_of["Publish"], None)

    taken: dict[str, Any] = {}
    scheme_names = [_unique(_scheme_name(s), taken, mark=True) for s in security]
    ready_security = scheme_names if router.authenticate is not None else []
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    if router.ready_path is not None:
        channels[_READY] = {
            **_channel(root_path + router.ready_path, {}),
            "title": "Rooms",
            "description": (
                "The ready-made endpoint: join rooms, publish to them, receive their messages "
                "and presence. Every event is a JSON text frame with a `type`."
            ),
            "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
        }
        for key in ("join", "leave", "ping"):
            operations[_operation_id(key, True)] = _operation(True, _READY, [key], ready_security)
        if publish_keys:
            operations["receivePublish"] = _operation(True, _READY, publish_keys, ready_security)
        for key, replies in _REPLIES.items():
            if _operation_id(key, True) not in operations:
                continue
            operations[_operation_id(key, True)]["reply"] = {
                "channel": {"$ref": f"#/channels/{_READY}"},
                "messages": [{"$ref": f"#/channels/{_READY}/messages/{r}"} for r in replies],
            }
        for key in ("welcome", "joined", "left", "presence", "pong", "shutdown", "error"):
            operations[_operation_id(key, False)] = _operation(False, _READY, [key], [])
        if message_keys:
            operations["sendMessage"] = _operation(False, _READY, message_keys, [])
    for i, doc in enumerate(handlers):
        _add_handler(i, doc, schema_of, root_path, scheme_names, channels, operations, messages)

    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {"title": title, "version": version},
        "defaultContentType": "application/json",
        "servers": {
            "default": {
                "host": host,
                "protocol": protocol,
                "description": "This server, as the document was requested from it.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
    if description:
        document["info"]["description"] = description
    if security:
        document["components"]["securitySchemes"] = {
            name: _security_scheme(s) for name, s in zip(scheme_names, security, strict=True)
        }
    return document


def _typed(
    components: tuple[dict[str, Any], dict[str, Any], str, dict[str, Any]],
    event: str,
    model: str,
    base: dict[str, Any],
    data: Any,
    summary: str,
) -> str:
    """A namespace's variant of a protocol event (its room pattern, its data type) added to
    the components as ``<event>.<namespace key>``; returns that message's key."""
    schemas, messages, key, room = components
    name, schema = f"{event}.{key}", f"{model}_{key}"
    schemas[schema] = _narrowed(base, room, data)
    messages[name] = _message(name, summary, {"$ref": _SCHEMAS.format(model=schema)})
    return name


def _add_handler(
    i: int,
    doc: HandlerDoc,
    schema_of: dict[str, Any],
    root_path: str,
    scheme_names: list[str],
    channels: dict[str, Any],
    operations: dict[str, Any],
    messages: dict[str, Any],
) -> None:
    channel_id = _unique(_key(doc.name), channels)
    channel: dict[str, Any] = _channel(root_path + doc.path, doc.params)
    channel["messages"] = {}
    address = channel["address"]
    if doc.description:
        channel["description"] = doc.description
    channels[channel_id] = channel
    security = scheme_names if doc.authenticate else []
    for direction, client in (("in", True), ("out", False)):
        payload = schema_of.get(f"h{direction}:{i}")
        if payload is None:
            continue
        key = _unique(f"{channel_id}.{'receive' if client else 'send'}", messages)
        what = "a client sends" if client else "the handler sends"
        messages[key] = _message(key, f"What {what} on {address}.", payload)
        channel["messages"][key] = {"$ref": f"#/components/messages/{key}"}
        op = _unique(_operation_id(channel_id, client), operations)
        operations[op] = _operation(client, channel_id, [key], security)


def _channel(path: str, params: dict[str, Any]) -> dict[str, Any]:
    """A channel's address (Starlette convertors dropped) and a parameter for every
    placeholder in it, those of a router prefix (``/t/{tenant}``) included."""
    address = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)
    channel: dict[str, Any] = {"address": address}
    names = re.findall(r"\{(\w+)\}", address)
    if names:
        kinds = {name: getattr(kind, "__name__", kind) for name, kind in params.items()}
        channel["parameters"] = {
            name: {"description": f"Path parameter ({kinds.get(name, 'str')})."}
            for name in names
        }
    return channel


def _message(name: str, doc: str | None, payload: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"name": name, "title": name, "payload": payload}
    if doc:
        summary = " ".join(doc.split())
        message["summary"] = summary.replace("``", "`")
    return message


def _operation(
    receive: bool, channel: str, keys: Iterable[str], security: Sequence[str]
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": "receive" if receive else "send",
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{k}"} for k in keys],
    }
    if security:
        operation["security"] = [{"$ref": f"#/components/securitySchemes/{s}"} for s in security]
    return operation


def _operation_id(key: str, receive: bool) -> str:
    words = re.split(r"[^A-Za-z0-9]+", key)
    return ("receive" if receive else "send") + "".join(w[:1].upper() + w[1:] for w in words)


def _event_type(model: type[BaseModel]) -> str:
    annotation = model.model_fields["type"].annotation
    return str(annotation.__args__[0])  # type: ignore[union-attr]


def _narrowed(base: dict[str, Any], room: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """An event schema with its ``room`` and ``data`` narrowed to one namespace."""
    schema: dict[str, Any] = json.loads(json.dumps(base))
    schema["properties"]["room"] = room
    schema["properties"]["data"] = data
    schema.pop("title", None)
    return schema


def _publish_rule(ns: Namespace) -> str:
    if ns.publish == "members":
        return "Members of the room may publish."
    return "A server policy decides who may publish."


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "x"


def _keys(patterns: Iterable[str]) -> list[str]:
    """Component keys for namespaces: ``chat:{name}`` -> ``chat``, unique."""
    seen: dict[str, Any] = {}
    return [
        _unique(_key(re.sub(r"\{\w+\}", "", p) or p), seen, mark=True) for p in patterns
    ]


def _unique(key: str, taken: dict[str, Any], *, mark: bool = False) -> str:
    candidate, n = key, 2
    while candidate in taken:
        candidate, n = f"{key}_{n}", n + 1
    if mark:
        taken[candidate] = True
    return candidate


def _asyncapi_schema(value: Any) -> Any:
    """Pydantic's JSON Schema as an AsyncAPI Schema Object: ``discriminator`` is a property
    name there, not OpenAPI's object."""
    if isinstance(value, dict):
        out = {k: _asyncapi_schema(v) for k, v in value.items()}
        discriminator = out.get("discriminator")
        if isinstance(discriminator, dict):
            out["discriminator"] = discriminator["propertyName"]
        return out
    if isinstance(value, list):
        return [_asyncapi_schema(v) for v in value]
    return value


def _scheme_name(scheme: SecurityBase) -> str:
    return _key(getattr(scheme, "scheme_name", None) or type(scheme).__name__)


def _security_scheme(scheme: SecurityBase) -> dict[str, Any]:
    """A FastAPI (OpenAPI) security scheme as AsyncAPI 3.0 writes it."""
    model = scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
    kind = model.get("type")
    if kind == "apiKey":
        model["type"] = "httpApiKey"
    elif kind == "oauth2":
        for flow in model.get("flows", {}).values():
            flow["availableScopes"] = flow.pop("scopes", {})
    return model


def get_asyncapi_html(
    *,
    asyncapi_url: str,
    title: str,
    js_url: str = ASYNCAPI_JS_URL,
    css_url: str = ASYNCAPI_CSS_URL,
) -> HTMLResponse:
    """A page rendering the document at ``asyncapi_url`` with the AsyncAPI React component;
    ``js_url`` and ``css_url`` point at a self-hosted copy when the CDN is not wanted."""
    config = {
        "schema": {"url": asyncapi_url, "options": {"method": "GET"}},
        "config": {"show": {"sidebar": True}},
    }
    script = (
        json.dumps(config)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{html.escape(css_url)}">
</head>
<body>
<div id="asyncapi"></div>
<script src="{html.escape(js_url)}"></script>
<script>AsyncApiStandalone.render({script}, document.getElementById("asyncapi"));</script>
</body>
</html>
"""
    return HTMLResponse(page)
