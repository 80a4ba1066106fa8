"""The JavaScript client (fastapi_rooms/static/rooms.js, clients/js) under Node's own test
runner, against real servers (uvicorn and granian-rsgi): clients/js/test/rooms.test.mjs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import httpx
import pytest

from .conftest import ROOT, Server, server_fixture
from .helpers import WAIT

server = server_fixture("namespace_app", "js-client")
drained = server_fixture("core_app", "js-drain")  # its own: the JS tests drain it
JS = ROOT / "clients" / "js"


def test_the_router_serves_the_client_as_an_es_module(server: Server) -> None:
    response = httpx.get(server.http + "/client.js", timeout=WAIT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.content == (JS / "rooms.js").read_bytes()
    assert "export class RoomsClient" in response.text


def test_the_client_under_nodes_test_runner(server: Server, drained: Server) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed for the JavaScript client's tests (apt-get install nodejs)")
    done = subprocess.run(
        [node, "--experimental-websocket", "--test", "--test-reporter=spec", "test/"],
        cwd=JS,
        env={**os.environ, "ROOMS_URL": server.ws + "/ws", "ROOMS_DRAIN_URL": drained.http},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    counts = dict(re.findall(r"^\S+ (pass|fail) (\d+)$", done.stdout, re.MULTILINE))
    assert counts.get("fail") == "0" and int(counts.get("pass", "0")) >= 5, done.stdout
