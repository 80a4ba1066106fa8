"""Every Python sample in docs/*.md and README.md compiles; every full app imports and starts.

A block preceded by ``<!-- fragment -->`` is not runnable alone: it is only compiled. Every other
```python block must be a whole app (it defines ``app``): it is imported as a module from a
temporary file and started under TestClient. The quickstart's app is also exercised end to end.
Samples whose REST endpoints are protected are called with their credential, and without it
(403: the REST endpoints refuse anonymous calls by default).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

import fastapi_rooms

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FRAGMENT = "<!-- fragment -->"
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
DEFINES_APP = re.compile(r"^app\s*(?::[^=\n]+)?=", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str
    fragment: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def defines_app(self) -> bool:
        return DEFINES_APP.search(self.code) is not None


def sources() -> list[Path]:
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


def blocks_in(path: Path) -> Iterator[Block]:
    text = path.read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        yield Block(
            path=path,
            line=text.count("\n", 0, match.start()) + 1,
            code=textwrap.dedent(match["body"]),
            fragment=before.endswith(FRAGMENT),
        )


BLOCKS = [block for path in sources() for block in blocks_in(path)]
APPS = [block for block in BLOCKS if not block.fragment]


def load(block: Block, tmp_path: Path, name: str | None = None) -> ModuleType:
    """Import the block as a module from a file, so tracebacks and annotations resolve."""
    name = name or "docs_sample_" + re.sub(r"\W", "_", block.id)
    file = tmp_path / f"{name}.py"
    file.write_text(block.code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture
def loaded() -> Iterator[list[str]]:
    """Names of the modules a test imported; removed from sys.modules afterwards."""
    before = set(sys.modules)
    names: list[str] = []
    yield names
    for name in set(sys.modules) - before:
        if name.startswith("docs_sample_") or name in names:
            del sys.modules[name]


def only_app(filename: str) -> Block:
    apps = [block for block in APPS if block.path.name == filename]
    assert len(apps) == 1, f"{filename} should have exactly one full app, found {len(apps)}"
    return apps[0]


def quickstart_app() -> Block:
    return only_app("quickstart.md")


def test_samples_are_found() -> None:
    assert {block.path.name for block in BLOCKS} >= {
        "README.md",
        "index.md",
        "quickstart.md",
        "gobstopper.md",
        "reference.md",
    }
    assert any(block.path.name == "README.md" for block in APPS)
    assert "Depends(get_manager)" in quickstart_app().code


def test_every_fence_is_closed() -> None:
    for path in sources():
        fences = re.findall(r"^[ \t]*```", path.read_text(encoding="utf-8"), re.MULTILINE)
        assert len(fences) % 2 == 0, f"{path.name}: unbalanced ``` fences"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.id)
def test_sample_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec")


@pytest.mark.parametrize("block", APPS, ids=lambda block: block.id)
def test_app_sample_imports_and_starts(block: Block, tmp_path: Path, loaded: list[str]) -> None:
    assert block.defines_app, (
        f"{block.id}: a ```python block must define `app` (a full app) "
        f"or be marked {FRAGMENT!r} on the line before it"
    )
    module = load(block, tmp_path)
    app = module.app
    assert isinstance(app, FastAPI), f"{block.id}: app is {type(app).__name__}, expected FastAPI"
    with TestClient(app) as client:  # runs the lifespan: the rooms manager starts and stops
        assert client.get("/openapi.json").status_code == 200


ADMIN = {"X-Admin-Token": "change-me"}  # the credential the quickstart and README samples use


def test_quickstart_app_round_trip(tmp_path: Path, loaded: list[str]) -> None:
    app = load(quickstart_app(), tmp_path).app
    with TestClient(app) as client:
        with client.websocket_connect("/chat/lobby") as alice:
            alice_id = alice.receive_json()["id"]
            with client.websocket_connect("/chat/lobby") as bob:
                bob_joined = bob.receive_json()
                assert bob_joined["event"] == "joined"
                assert alice.receive_json() == bob_joined
                bob_id = bob_joined["id"]

                alice.send_text("hello")
                expected = {"event": "message", "id": alice_id, "text": "hello"}
                assert alice.receive_json() == expected
                assert bob.receive_json() == expected

                # The app's REST endpoint with Depends(get_manager) reaches the room, for admins.
                notice = {"text": "maintenance at noon"}
                assert client.post("/notify/lobby", json=notice).status_code == 403
                response = client.post("/notify/lobby", json=notice, headers=ADMIN)
                assert response.status_code == 200
                assert response.json() == {"delivered": 2}
                for ws in (alice, bob):
                    assert ws.receive_json() == {"event": "notice", "text": "maintenance at noon"}

                # The router's own REST endpoints refuse anonymous calls (rest_dependencies)...
                body = {"message": "plain text"}
                assert client.get("/rooms/lobby").status_code == 403
                assert client.post("/rooms/lobby/broadcast", json=body).status_code == 403
                # ... and with the credential see the room and broadcast into it.
                room = client.get("/rooms/lobby", headers=ADMIN).json()
                assert sorted(room["connection_ids"]) == sorted([alice_id, bob_id])
                response = client.post("/rooms/lobby/broadcast", json=body, headers=ADMIN)
                assert response.json() == {"status": "sent", "room_connections": 2}
                assert alice.receive_text() == "plain text"
                assert bob.receive_text() == "plain text"
            # manager.connect() removed bob when his block ended; the handler said so.
            assert alice.receive_json() == {"event": "left", "id": bob_id}

        # The ready endpoint, as the quickstart describes it (rest_dependencies leave it open).
        with client.websocket_connect("/ws") as ws:
            welcome = ws.receive_json()
            assert welcome["type"] == "welcome"
            ws.send_json({"type": "join", "room": "lobby"})
            assert ws.receive_json() == {"type": "joined", "room": "lobby"}
            ws.send_json({"type": "publish", "room": "lobby", "data": {"text": "hi"}})
            assert ws.receive_json() == {
                "type": "message",
                "room": "lobby",
                "from": welcome["connection_id"],
                "data": {"text": "hi"},
            }
            ws.send_json({"type": "ping"})
            assert ws.receive_json() == {"type": "pong"}
        assert client.get("/rooms", headers=ADMIN).json() == {"rooms": []}
        assert client.get("/stats").status_code == 403


def test_quickstart_insecure_rest_fragment_opens_rest() -> None:
    """The development opt-out the quickstart shows: the REST endpoints answer anyone."""
    fragments = [
        block
        for block in BLOCKS
        if block.path.name == "quickstart.md" and "insecure_rest=True" in block.code
    ]
    assert len(fragments) == 1
    namespace: dict[str, object] = {"create_rooms_router": fastapi_rooms.create_rooms_router}
    exec(compile(fragments[0].code, fragments[0].id, "exec"), namespace)
    app = FastAPI()
    app.include_router(namespace["rooms"])  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.get("/rooms").json() == {"rooms": []}


def test_quickstart_testing_sample_passes(tmp_path: Path, loaded: list[str]) -> None:
    """The 'Testing it' fragment imports the quickstart app as ``main``; run it against it."""
    load(quickstart_app(), tmp_path, name="main")
    loaded.append("main")
    fragments = [
        block
        for block in BLOCKS
        if block.path.name == "quickstart.md" and "from main import app" in block.code
    ]
    assert len(fragments) == 1
    module = load(fragments[0], tmp_path, name="docs_sample_quickstart_test")
    tests = [value for name, value in vars(module).items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()


def test_readme_app_round_trip(tmp_path: Path, loaded: list[str]) -> None:
    app = load(only_app("README.md"), tmp_path).app
    with TestClient(app) as client, client.websocket_connect("/chat/lobby") as ws:
        ws.send_text("hi")
        message = ws.receive_json()
        assert message["text"] == "hi"
        text = {"text": "hello all"}
        assert client.post("/announce", params=text).status_code == 403
        response = client.post("/announce", params=text, headers=ADMIN)
        assert response.json() == {"delivered": 1}
        assert ws.receive_json() == {"announcement": "hello all"}
        # The router's REST endpoints: refused without the token, served with it.
        assert client.get("/rooms").status_code == 403
        assert client.get("/rooms", headers=ADMIN).json() == {
            "rooms": [{"room": "lobby", "connections": 1}]
        }


def test_index_app_protects_rest(tmp_path: Path, loaded: list[str]) -> None:
    app = load(only_app("index.md"), tmp_path).app
    with TestClient(app) as client:
        assert client.get("/rooms").status_code == 403
        assert client.get("/rooms", headers=ADMIN).json() == {"rooms": []}
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "welcome"


def test_gobstopper_app_round_trip(tmp_path: Path, loaded: list[str]) -> None:
    module = load(only_app("gobstopper.md"), tmp_path)
    app, manager = module.app, module.websocket_manager
    with TestClient(app) as client:
        with (
            client.websocket_connect("/ws/rooms/42") as a,
            client.websocket_connect("/ws/rooms/42") as b,
            client.websocket_connect("/ws/rooms/7") as other,
        ):
            a.send_text('{"message": "hello"}')
            assert json.loads(a.receive_text()) == {"type": "message", "message": "hello"}
            assert json.loads(b.receive_text()) == {"type": "message", "message": "hello"}
            other.send_text('{"message": "elsewhere"}')
            assert json.loads(other.receive_text())["message"] == "elsewhere"
        assert len(manager.connections) == 0  # every connection left the manager
        # The sample leaves the REST endpoints unprotected: they refuse (the page says so).
        assert client.get("/stats").status_code == 403


def test_security_rest_sample_refuses_anonymous_calls(tmp_path: Path, loaded: list[str]) -> None:
    """The Security page's protected REST endpoints, and its note on include_router."""
    apps = [b for b in APPS if b.path.name == "security.md" and "rest_dependencies" in b.code]
    assert len(apps) == 1
    module = load(apps[0], tmp_path)
    operator = {"Authorization": "Bearer change-me"}
    with TestClient(module.app) as client:
        assert client.get("/rooms").status_code == 403
        assert client.get("/rooms", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert client.get("/rooms", headers=operator).json() == {"rooms": []}
        response = client.post("/broadcast", json={"message": "hi"}, headers=operator)
        assert response.json() == {"status": "broadcasted", "connections": 0}
        # rest_dependencies leave the ready endpoint open.
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "welcome"

    # Dependencies given to include_router are not seen by the check: still 403.
    app = FastAPI()
    app.include_router(
        fastapi_rooms.create_rooms_router(), dependencies=[Depends(module.require_operator)]
    )
    with TestClient(app) as client:
        assert client.get("/rooms", headers=operator).status_code == 403


def test_reference_names_every_public_name() -> None:
    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    names = [*fastapi_rooms.__all__, "RSGIApp"]  # RSGIApp lives in fastapi_rooms.rsgi
    missing = [name for name in names if f"`{name}" not in reference]
    assert not missing, f"docs/reference.md does not mention {missing}"


def test_reference_documents_close_codes_and_router_keywords() -> None:
    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    expected = [f"`{code.name}` | {code.value}" for code in fastapi_rooms.CloseCode]
    expected += [
        f"{keyword}:"
        for keyword in ("rest_dependencies", "insecure_rest", "close_unmatched", "startup_timeout")
    ]
    expected += ["manager.connect(", "`RateLimiter(rate, burst=20)`", "## Layout"]
    missing = [text for text in expected if text not in reference]
    assert not missing, f"docs/reference.md does not document {missing}"


def test_mkdocs_nav_lists_every_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert f" {page.name}" in config, f"mkdocs.yml nav does not list {page.name}"


def test_namespaces_sample_validates_refuses_and_publishes(
    tmp_path: Path, loaded: list[str]
) -> None:
    """The Namespaces page's app: a typed chat room, a server-only ticker, a protected POST."""
    app = load(only_app("namespaces.md"), tmp_path).app
    with TestClient(app) as client, client.websocket_connect("/ws?user=carol") as ws:
        assert ws.receive_json()["type"] == "welcome"
        ws.send_json({"type": "join", "room": "chat:lobby"})
        assert ws.receive_json() == {"type": "joined", "room": "chat:lobby"}
        ws.send_json({"type": "publish", "room": "chat:lobby", "data": {"reply_to": 1}})
        error = ws.receive_json()
        assert error["code"] == "invalid_message"
        assert error["errors"][0]["loc"] == ["data", "text"]
        ws.send_json({"type": "publish", "room": "chat:lobby", "data": {"text": "hi"}})
        message = ws.receive_json()
        assert message["data"] == {"text": "hi", "reply_to": None}
        ws.send_json({"type": "join", "room": "ticker:AAPL"})
        assert ws.receive_json()["type"] == "joined"
        ws.send_json({"type": "publish", "room": "ticker:AAPL", "data": {"price": 1}})
        assert ws.receive_json()["code"] == "publish_forbidden"
        assert client.post("/prices/AAPL", json={"price": 2}).status_code == 422  # no token
        response = client.post("/prices/AAPL", json={"price": 2}, headers=ADMIN)
        assert response.json() == {"delivered": 1}
        assert ws.receive_json()["data"] == {"price": 2.0, "volume": 0}
        ws.send_json({"type": "join", "room": "news:launch"})
        assert ws.receive_json()["type"] == "joined"
        ws.send_json({"type": "publish", "room": "news:launch", "data": "hello"})
        assert ws.receive_json() == {
            "type": "error",
            "code": "publish_forbidden",
            "message": "only staff announce",
        }


def test_the_quickstart_names_every_event_and_error_code_of_the_protocol() -> None:
    """The docs' protocol table follows the models: every event type and error code is in it."""
    from typing import get_args

    from fastapi_rooms import protocol

    quickstart = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    section = quickstart[quickstart.index("## The ready endpoint") :]
    models = [*get_args(get_args(protocol.ClientEvent)[0]),
              *get_args(get_args(protocol.ServerEvent)[0])]
    types = [get_args(model.model_fields["type"].annotation)[0] for model in models]
    missing = [t for t in types if f'"type": "{t}"' not in section]
    missing += [c for c in get_args(protocol.ErrorCode) if f"`{c}`" not in section]
    assert not missing, f"quickstart.md's ready endpoint section does not name {missing}"
    namespaces = (DOCS / "namespaces.md").read_text(encoding="utf-8")
    section = namespaces[namespaces.index("## The protocol as types") :]
    missing = [m.__name__ for m in models if f"`{m.__name__}`" not in section]
    missing += [c for c in get_args(protocol.ErrorCode) if f"`{c}`" not in section]
    assert not missing, f"namespaces.md's protocol section does not name {missing}"
