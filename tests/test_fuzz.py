"""Random and hostile frames against the ready endpoint on real servers (hypothesis).

Every frame that is not a valid request gets an ``invalid_message`` error event, an oversized
one a policy close (1009); the server stays up and a bystander keeps receiving only what is
meant for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from fastapi_rooms.protocol import client_event

from .conftest import Server, sent_code, server_fixture

LIMIT = 4096  # MAX_WS_MESSAGE_BYTES of the fuzzed server
WAIT = 10.0
EVENTS = {"welcome", "joined", "left", "message", "pong", "error"}
ERRORS = {"invalid_message", "not_in_room", "too_many_rooms", "room_full", "message_too_big"}


FUZZ_ENV = {"AUTH": "0", "PRESENCE_EVENTS": "0", "MAX_WS_MESSAGE_BYTES": str(LIMIT),
            "REDIS_URL": "", "MAX_ROOM_MEMBERS": "1000"}  # fmt: skip

fuzzed = server_fixture("secure_app", "fuzz", FUZZ_ENV)


@pytest.fixture(scope="module")
def bystander(fuzzed: Server) -> Iterator[ClientConnection]:
    """A client in room "watch" (which the fuzzer never names) for the whole module."""
    with connect(f"{fuzzed.ws}/ws", open_timeout=WAIT) as ws:
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "welcome"
        ws.send(json.dumps({"type": "join", "room": "watch"}))
        assert json.loads(ws.recv(timeout=WAIT)) == {"type": "joined", "room": "watch"}
        yield ws


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
rooms = (st.text(max_size=30) | st.text(min_size=195, max_size=210)).filter(lambda r: r != "watch")
requests = st.fixed_dictionaries(
    {"type": st.sampled_from(["join", "leave", "publish", "ping", "bogus"]) | json_values},
    optional={
        "room": rooms | json_values,
        "data": json_values,
        "meta": json_values,
        "exclude_self": json_values,
        "extra": json_values,
    },
)
frames = st.one_of(
    requests.map(json.dumps),
    requests.map(json.dumps),  # twice as likely: most interesting frames look almost right
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
    st.sampled_from(["{", '{"type": "join"', "null", "[]", '{"type":"join","room":"a"}' * 3]),
    st.binary(min_size=LIMIT + 1, max_size=LIMIT + 100),
    st.text(min_size=LIMIT + 1, max_size=LIMIT + 50),
)


def _classify(frame: str | bytes) -> tuple[bool, bool, bool]:
    """(too big, invalid, a valid ping)."""
    size = len(frame.encode()) if isinstance(frame, str) else len(frame)
    if size > LIMIT:
        return True, False, False
    if isinstance(frame, bytes):
        return False, True, False
    try:
        request: Any = client_event.validate_json(frame)
    except ValidationError:
        return False, True, False
    return False, False, request.type == "ping"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(frames, min_size=1, max_size=6))
def test_random_frames_get_an_error_event_or_a_policy_close(
    fuzzed: Server, server_kind: str, bystander: ClientConnection, batch: list[str | bytes]
) -> None:
    with connect(f"{fuzzed.ws}/ws", open_timeout=WAIT, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "welcome"
        invalid = pings = 0
        too_big = False
        for frame in batch:
            big, bad, ping = _classify(frame)
            ws.send(frame)
            if big:
                too_big = True
                break
            invalid += bad
            pings += ping
        if not too_big:
            ws.send('{"type":"ping"}')
            pings += 1
        seen_invalid = seen_pongs = 0
        closed: ConnectionClosed | None = None
        while too_big or seen_pongs < pings:
            try:
                event = json.loads(ws.recv(timeout=WAIT))
            except ConnectionClosed as exc:
                closed = exc
                break
            assert event["type"] in EVENTS, event
            if event["type"] == "error":
                assert event["code"] in ERRORS and event["message"], event
                seen_invalid += event["code"] == "invalid_message"
            seen_pongs += event["type"] == "pong"
        assert seen_invalid == invalid
        if too_big:
            assert closed is not None and closed.rcvd is not None
            assert closed.rcvd.code == sent_code(server_kind, 1009)
        else:
            assert closed is None, f"closed without cause: {closed!r}"


def test_the_bystander_got_nothing_and_the_server_still_serves(
    fuzzed: Server, bystander: ClientConnection
) -> None:
    with connect(f"{fuzzed.ws}/ws", open_timeout=WAIT) as ws:
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "welcome"
        ws.send(json.dumps({"type": "join", "room": "watch"}))
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "joined"
        ws.send(json.dumps({"type": "publish", "room": "watch", "data": "after the storm"}))
    # The first thing the bystander ever received after joining is this message.
    event = json.loads(bystander.recv(timeout=WAIT))
    assert (event["type"], event["data"]) == ("message", "after the storm")
    assert fuzzed.proc.poll() is None
