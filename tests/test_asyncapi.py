"""The AsyncAPI 3.0 document and its page, served by real servers (uvicorn and granian-rsgi).

The document is validated by the reference parser (``@asyncapi/parser``, pinned in
tests/js/package.json, run by Node), not only by our own expectations; the page is rendered
by the AsyncAPI React component in headless Chromium.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from fastapi import FastAPI
from fastapi.security import APIKeyQuery
from fastapi.testclient import TestClient
from pydantic import BaseModel

from fastapi_rooms import create_rooms_router
from fastapi_rooms.fastapi.asyncapi import get_asyncapi_html
from fastapi_rooms.protocol import ClientEvent, ServerEvent

from .conftest import Server, running, server_fixture
from .helpers import WAIT

server = server_fixture("namespace_app", "asyncapi")


def events(union: Any) -> list[type[BaseModel]]:
    """The models of a discriminated union such as ``ServerEvent``."""
    return list(get_args(get_args(union)[0]))


def validate(tools: Path, document: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The parser's verdict: ``{"valid", "errors", "warnings"}``."""
    path = tmp_path / "asyncapi.json"
    path.write_text(json.dumps(document))
    done = subprocess.run(
        ["node", str(tools / "validate_asyncapi.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    verdict: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (0 if verdict["valid"] else 1), done.stderr
    return verdict


def fetch(server: Server, path: str = "/asyncapi.json") -> dict[str, Any]:
    response = httpx.get(server.http + path, timeout=WAIT)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_the_document_validates_with_the_reference_parser(
    server: Server, node_tools: Path, tmp_path: Path
) -> None:
    document = fetch(server)
    verdict = validate(node_tools, document, tmp_path)
    assert verdict["valid"] and verdict["errors"] == [], verdict
    assert document["asyncapi"] == "3.0.0"
    assert document["info"] == {"title": "Namespace test app (WebSockets)", "version": "1.2.3"}
    assert document["servers"]["default"]["host"] == f"127.0.0.1:{server.port}"
    assert document["servers"]["default"]["protocol"] == "ws"


def test_the_document_describes_the_protocol_namespaces_and_handlers(server: Server) -> None:
    document = fetch(server)
    channels, operations = document["channels"], document["operations"]
    messages, schemas = document["components"]["messages"], document["components"]["schemas"]
    rooms = channels["rooms"]
    assert rooms["address"] == "/ws"
    # every event of the protocol's unions, so a new event cannot be left out of the document
    client = {model.model_fields["type"].annotation.__args__[0] for model in events(ClientEvent)}
    server_events = {
        model.model_fields["type"].annotation.__args__[0] for model in events(ServerEvent)
    }
    assert {"join", "publish", "shutdown", "error"} <= client | server_events
    assert client | server_events <= set(rooms["messages"])
    sent = {m["$ref"].rsplit("/", 1)[1] for op in operations.values() if op["action"] == "send"
            for m in op["messages"]}  # fmt: skip
    assert server_events <= sent
    # each namespace: a publish message with its model, unless it is server-only
    assert "publish.chat" in messages and "publish.ticker" not in messages
    assert "publish.vip" in messages and "message.ticker" in messages
    chat = schemas[messages["publish.chat"]["payload"]["$ref"].rsplit("/", 1)[1]]
    assert chat["properties"]["data"] == {"$ref": "#/components/schemas/ChatMessage"}
    assert chat["properties"]["room"]["pattern"] == "^chat:[^:]+$"
    tick = schemas[messages["message.ticker"]["payload"]["$ref"].rsplit("/", 1)[1]]
    assert tick["properties"]["data"] == {"$ref": "#/components/schemas/Tick"}
    assert tick["properties"]["room"]["description"] == "Live prices."
    assert set(schemas["ChatMessage"]["required"]) == {"text"}
    assert schemas["ErrorEvent"]["properties"]["code"]["enum"][0] == "invalid_message"
    publish_refs = {m["$ref"].rsplit("/", 1)[1] for m in operations["receivePublish"]["messages"]}
    assert publish_refs == {
        "publish",
        "publish.chat",
        "publish.vip",
        "publish.slow",
        "publish.duo",
        "publish.nums",
        "publish.tree",
        "publish.history",
        "publish.race",
    }
    assert operations["receiveJoin"]["action"] == "receive"
    assert {m["$ref"] for m in operations["receiveJoin"]["reply"]["messages"]} == {
        "#/channels/rooms/messages/joined",
        "#/channels/rooms/messages/error",
    }
    assert operations["sendMessage"]["action"] == "send"
    # the ready endpoint authenticates: its client operations carry the declared scheme
    assert document["components"]["securitySchemes"]["APIKeyQuery"] == {
        "type": "httpApiKey",
        "in": "query",
        "name": "user",
        "description": "Any name: the test's user.",
    }
    assert operations["receiveJoin"]["security"] == [
        {"$ref": "#/components/securitySchemes/APIKeyQuery"}
    ]
    # the Gobstopper-style handler: its path parameter and its declared payloads
    echo = channels["echo"]
    assert echo["address"] == "/ws/echo/{n}"
    assert echo["parameters"] == {"n": {"description": "Path parameter (int)."}}
    assert echo["description"] == "Echoes chat messages ``n`` times."
    assert messages["echo.receive"]["payload"] == {"$ref": "#/components/schemas/ChatMessage"}
    assert operations["receiveEcho"]["action"] == "receive"
    assert operations["sendEcho"]["messages"] == [{"$ref": "#/channels/echo/messages/echo.send"}]
    assert "security" not in operations["receiveEcho"]  # the handler does not authenticate


def test_the_document_stays_out_of_openapi(server: Server) -> None:
    paths = fetch(server, "/openapi.json")["paths"]
    assert "/asyncapi.json" not in paths and "/asyncapi" not in paths
    assert "/tick/{symbol}" in paths


def test_strict_namespaces_leave_out_the_untyped_events(
    server_kind: str, node_tools: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = "strict_rsgi_app" if server_kind == "granian-rsgi" else "strict_app"
    tmp = tmp_path_factory.mktemp("strict-doc")
    with running(server_kind, f"namespace_app:{name}", tmp) as strict:
        document = fetch(strict)
    verdict = validate(node_tools, document, tmp)
    assert verdict["valid"], verdict
    messages = document["components"]["messages"]
    assert "publish" not in messages and "message" not in messages
    assert {m["$ref"] for m in document["operations"]["receivePublish"]["messages"]} == {
        "#/channels/rooms/messages/publish.chat"
    }


def test_the_parser_rejects_what_the_specification_does_not_allow(
    node_tools: Path, tmp_path: Path, server: Server
) -> None:
    """The validator is not a rubber stamp: broken variants of our own document fail."""
    document = fetch(server)
    wrong_action = copy.deepcopy(document)
    wrong_action["operations"]["receiveJoin"]["action"] = "publish"  # AsyncAPI 2 wording
    dangling = copy.deepcopy(document)
    dangling["operations"]["sendMessage"]["messages"] = [
        {"$ref": "#/channels/rooms/messages/nothing"}
    ]
    for broken in (wrong_action, dangling):
        verdict = validate(node_tools, broken, tmp_path)
        assert not verdict["valid"] and verdict["errors"], verdict


def test_the_page_points_at_the_document_and_the_component(server: Server) -> None:
    page = httpx.get(server.http + "/asyncapi", timeout=WAIT)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '"url": "/asyncapi.json"' in page.text
    assert "@asyncapi/react-component" in page.text and "AsyncApiStandalone.render" in page.text


@pytest.fixture(scope="module")
def page_server(
    server_kind: str, node_tools: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The app with the AsyncAPI React component served from tests/js (no CDN needed)."""
    assets = node_tools / "node_modules" / "@asyncapi" / "react-component"
    name = "rsgi_app" if server_kind == "granian-rsgi" else "app"
    env = {"ASYNCAPI_ASSETS": str(assets)}
    with running(
        server_kind, f"namespace_app:{name}", tmp_path_factory.mktemp("page"), env
    ) as started:
        yield started


def test_the_page_renders_channels_and_messages_in_chromium(
    page_server: Server, chromium: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_server.http + "/self-hosted", timeout=WAIT * 3000)
            page.wait_for_selector(
                '#asyncapi #operations, #asyncapi h2:has-text("Error")', timeout=WAIT * 3000
            )
            # the component's error panel lists the parser's complaints, if any
            assert page.locator("#asyncapi section.border-red-500").count() == 0, page.content()
            for selector in (
                '[id$="-receivePublish"]',  # with a reply, the component says "reply"
                "#operation-send-sendMessage",
                "#operation-receive-receiveEcho",
                "#operation-send-sendEcho",
                '[id="message-publish.chat"]',
                '[id="message-message.ticker"]',
                "#server-default",
            ):
                page.wait_for_selector(selector, state="attached", timeout=WAIT * 1000)
            assert "/ws/echo/{n}" in page.inner_text("#operations")
            page.wait_for_selector(".sidebar", timeout=WAIT * 1000)  # the wide layout
            shot = Path(os.environ.get("ASYNCAPI_SCREENSHOT") or tmp_path / "asyncapi.png")
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert errors == []


class Publish(BaseModel):
    """A user model named like a protocol model: Pydantic renames both in the document."""

    body: str


def test_prefixes_name_clashes_and_hostile_urls(node_tools: Path, tmp_path: Path) -> None:
    """In-process (TestClient): an include_router prefix, a user model called ``Publish``,
    two security schemes of one class, and an AsyncAPI URL that tries to end the script."""
    rooms = create_rooms_router(
        authenticate=lambda ws: "u",
        security=[APIKeyQuery(name="token"), APIKeyQuery(name="key")],
    )
    rooms.namespace("posts:{id}", message=Publish)

    @rooms.websocket("/feed/{topic}", sends=Publish)
    async def feed(websocket: Any, topic: str) -> None:
        await websocket.accept()

    tenant = create_rooms_router(prefix="/t/{tenant}", ready_endpoint=None)

    @tenant.websocket("/live/<int:n>")
    async def live(websocket: Any, tenant: str, n: int) -> None:
        await websocket.accept()

    app = FastAPI()
    app.include_router(rooms, prefix="/rt")
    with TestClient(app) as client:
        document = client.get("/rt/asyncapi.json").json()
        page = client.get("/rt/asyncapi").text
    tenant_app = FastAPI()
    tenant_app.include_router(tenant)
    with TestClient(tenant_app) as client:
        tenant_document = client.get("/t/acme/asyncapi.json").json()
    assert tenant_document["channels"]["live"]["address"] == "/t/{tenant}/live/{n}"
    assert tenant_document["channels"]["live"]["parameters"] == {
        "tenant": {"description": "Path parameter (str)."},
        "n": {"description": "Path parameter (int)."},
    }
    assert validate(node_tools, tenant_document, tmp_path)["valid"]
    assert '"url": "/rt/asyncapi.json"' in page
    assert document["channels"]["rooms"]["address"] == "/rt/ws"
    assert document["channels"]["feed"]["address"] == "/rt/feed/{topic}"
    assert set(document["components"]["securitySchemes"]) == {"APIKeyQuery", "APIKeyQuery_2"}
    assert validate(node_tools, document, tmp_path)["valid"]
    html = get_asyncapi_html(asyncapi_url="/x</script><script>alert(1)//", title="<t>").body
    assert b"</script><script>alert" not in html and b"<title>&lt;t&gt;</title>" in html
    off = FastAPI()
    off.include_router(create_rooms_router(asyncapi_url=None))  # no document: no page either
    with TestClient(off) as client:
        assert client.get("/asyncapi.json").status_code == 404
        assert client.get("/asyncapi").status_code == 404
