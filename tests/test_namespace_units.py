"""Namespaces in-process: patterns, matching, options, policies, server-side validation.

The same behaviour over real servers is in tests/test_namespaces.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

import pytest
from pydantic import BaseModel, ValidationError

from fastapi_rooms import ConfigurationError, JoinRefused, Namespace, RoomManager
from fastapi_rooms.namespaces import NamespaceOptions
from fastapi_rooms.websocket import WebSocket

from .test_manager import FakePeer, connect, next_pass

pytestmark = pytest.mark.anyio


class Chat(BaseModel):
    text: str


class Other(BaseModel):
    value: int


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("chat:{name}", ["chat:lobby", "chat:a b", "chat:ünï"], ["chat:", "chat:a:b", "xchat:a"]),
        ("game:{id}:team:{team}", ["game:1:team:red"], ["game:1:team:", "game:1"]),
        ("lobby", ["lobby"], ["lobby2", "lobb", ""]),
        ("a.b*c(d)", ["a.b*c(d)"], ["aXb*c(d)", "a.bbc(d)"]),  # literal characters, not regex
        ("*", ["anything", "x:y:z"], [""]),
        ("{any}", ["one"], ["a:b"]),
    ],
)
def test_patterns_match_what_they_say(
    pattern: str, matching: list[str], not_matching: list[str]
) -> None:
    namespace = Namespace(pattern)
    assert [room for room in matching if not namespace.matches(room)] == []
    assert [room for room in not_matching if namespace.matches(room)] == []


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("chat:{", "unmatched brace"),
        ("chat:}", "unmatched brace"),
        ("chat:{}", "not an identifier"),
        ("chat:{a b}", "not an identifier"),
        ("{a}:{a}", "repeats"),
        ("", "non-empty"),
        ("{a}{b}", "need a literal between them"),
    ],
)
def test_a_bad_pattern_is_refused_when_declared(pattern: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        Namespace(pattern)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"publish": "everyone"}, "publish should be"),
        ({"max_members": 0}, "max_members"),
        ({"rate": 0}, "rate should be"),
        ({"burst": 0}, "burst should be"),
    ],
)
def test_bad_options_are_refused_when_declared(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        Namespace("x:{y}", **options)


def test_the_options_typed_dict_lists_every_namespace_field() -> None:
    fields = {f.name for f in dataclasses.fields(Namespace) if f.init} - {"pattern"}
    assert set(get_type_hints(NamespaceOptions)) == fields


def test_the_first_declared_match_wins_and_unmatched_rooms_take_the_defaults() -> None:
    manager = RoomManager(presence_events=True, max_room_members=3)
    specific = manager.namespace("chat:vip", publish="nobody")
    general = manager.namespace("chat:{name}")
    assert manager.namespaces.resolve("chat:vip") is specific
    assert manager.namespaces.resolve("chat:x") is general
    default = manager.namespaces.resolve("lobby")
    assert default is manager.namespaces.default
    assert default is not None and default.presence_events and default.max_members == 3
    with pytest.raises(ConfigurationError, match="declared twice"):
        manager.namespace("chat:{name}")
    with pytest.raises(ConfigurationError, match=r"declared twice \(as 'chat:\{name\}'\)"):
        manager.namespace("chat:{other}")  # the same rooms under another placeholder name


@pytest.mark.parametrize(
    ("first", "second", "why"),
    [
        ("*", "chat:{name}", "'\\*' before it takes every room"),
        ("{any}", "lobby", "the room 'lobby' already matches '{any}'"),
        ("chat:{name}", "chat:lobby", "the room 'chat:lobby' already matches"),
        ("lobby", "x" * 201, "at least 201 characters long"),
        ("lobby", "a{b}" + "c" * 199, "at least 201 characters long"),
    ],
)
def test_a_pattern_that_could_never_match_is_refused(first: str, second: str, why: str) -> None:
    manager = RoomManager()
    manager.namespace(first)
    with pytest.raises(ConfigurationError, match=f"could never match: .*{why}"):
        manager.namespace(second)
    assert [n.pattern for n in manager.namespaces] == [first]  # nothing half-declared


def test_narrower_patterns_first_are_accepted() -> None:
    manager = RoomManager()
    for pattern in ("chat:lobby", "lobby", "x" * 200, "chat:{name}", "{any}", "*"):
        manager.namespace(pattern)
    assert manager.namespaces.resolve("chat:lobby").pattern == "chat:lobby"  # type: ignore[union-attr]
    assert manager.namespaces.resolve("chat:a").pattern == "chat:{name}"  # type: ignore[union-attr]
    assert manager.namespaces.resolve("a:b:c").pattern == "*"  # type: ignore[union-attr]


def test_the_managers_default_options_are_the_default_namespace() -> None:
    manager = RoomManager()
    manager.presence_events = True
    manager.max_room_members = 1
    manager.authorize_join = lambda user, room: room != "secret"
    default = manager.namespaces.default
    assert default.presence_events and default.max_members == 1
    assert default.authorize_join is manager.authorize_join


async def test_strict_namespaces_refuse_unmatched_joins_naming_the_patterns() -> None:
    manager = RoomManager(strict_namespaces=True)
    manager.namespace("chat:{name}")
    connect(manager, "c1")
    with pytest.raises(JoinRefused) as refused:
        manager.join_room("c1", "lobby")
    assert refused.value.code == "unknown_namespace"
    assert "'chat:{name}'" in refused.value.reason
    manager.join_room("c1", "chat:lobby")
    assert manager.get_connection_rooms("c1") == {"chat:lobby"}
    with pytest.raises(ValueError, match="matches no namespace"):
        await manager.publish("lobby", {"text": "nobody could be there"})


def test_policies_allow_refuse_and_fail_closed() -> None:
    namespace = Namespace("vip:{x}", publish=lambda user, room: user == "alice" or None)
    assert namespace.publish_refusal("alice", "vip:1") is None
    assert namespace.publish_refusal("bob", "vip:1") is None  # None allows, as documented
    refusing = Namespace("vip:{x}", publish=lambda user, room: False)
    assert refusing.publish_refusal("bob", "vip:1") == "user 'bob' may not publish to room 'vip:1'"
    assert refusing.publish_refusal(None, "vip:1") == (
        "anonymous connections may not publish to room 'vip:1'"
    )
    assert Namespace("t:{x}", publish="nobody").publish_refusal("bob", "t:1") == (
        "room 't:1' takes messages from the server only"
    )

    async def async_policy(user: str | None, room: str) -> bool:
        return True

    broken = Namespace("a:{x}", publish=async_policy)
    with pytest.raises(TypeError, match="async policies are not supported"):
        broken.publish_refusal("bob", "a:1")
    joining = Namespace("a:{x}", authorize_join=lambda user, room: "members only")
    with pytest.raises(JoinRefused, match="members only"):
        joining.check_join("bob", "a:1")
    with pytest.raises(JoinRefused, match="needs a signed-in user"):
        joining.check_join(None, "a:1")


async def test_server_side_publish_and_broadcast_are_checked_against_the_namespace() -> None:
    manager = RoomManager()
    manager.namespace("chat:{name}", message=Chat)
    _, peer = connect(manager, "c1")
    manager.join_room("c1", "chat:a")
    assert await manager.publish("chat:a", Chat(text="hi")) == 1
    assert await manager.publish("chat:a", {"text": "dict is validated too"}) == 1
    with pytest.raises(ValidationError):
        await manager.publish("chat:a", {"txt": "typo"})
    with pytest.raises(ValueError, match="takes Chat, got Other"):
        await manager.broadcast_to_room("chat:a", Other(value=1))
    assert await manager.broadcast_to_room("chat:a", Chat(text="raw")) == 1
    ws = WebSocket(
        {"type": "websocket", "path": "/t"}, FakePeer().receive, FakePeer().send, accepted=True
    )
    async with manager.connect(ws) as conn:
        manager.join_room(conn.id, "chat:a")
        assert await conn.publish("chat:a", {"text": "from a connection"}, exclude_self=True) == 1
        with pytest.raises(ValidationError):
            await conn.publish("chat:a", 42)
    assert await manager.broadcast_to_room("lobby", Other(value=1)) == 0  # no namespace: as is
    await next_pass()  # corked frames go out at the end of the loop's pass
    assert peer.texts()[3:] == [
        f'{{"type":"message","room":"chat:a","from":"{conn.id}","data":{{"text":"from a connection"}}}}'
    ]
    assert peer.texts()[:3] == [
        '{"type":"message","room":"chat:a","from":null,"data":{"text":"hi"}}',
        '{"type":"message","room":"chat:a","from":null,"data":{"text":"dict is validated too"}}',
        '{"text":"raw"}',
    ]


def test_a_placeholder_stops_at_the_literal_after_it_so_matching_never_backtracks() -> None:
    namespace = Namespace("g:{a}.{b}.{c}")
    assert namespace.regex.match("g:1.2.3") is not None
    assert namespace.regex.match("g:1.2.3")["c"] == "3"  # type: ignore[index]
    assert not namespace.matches("g:" + "a." * 100 + ":")  # linear: no catastrophic backtrack


async def test_a_constructed_instance_is_validated_by_its_fields() -> None:
    manager = RoomManager()
    manager.namespace("chat:{name}", message=Chat)
    unchecked = Chat.model_construct(text=12345)  # skips validation: a wrong type inside
    with pytest.raises(ValidationError):
        await manager.publish("chat:a", unchecked)
    with pytest.raises(ValueError, match="does not fit"):
        await manager.broadcast_to_room("chat:a", unchecked)
