"""Room namespaces: kinds of rooms declared by name pattern, each with its own rules.

``manager.namespace("chat:{name}", message=ChatMessage, presence_events=True)`` declares one.
A room takes the first declared namespace its name matches; rooms matching none take the
manager's defaults (its ``authorize_join``, ``max_room_members``, ``presence_events``), or are
refused when namespaces are strict. Every per-room option lives here: the manager and the
ready endpoint ask the room's namespace, they keep no option of their own.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, TypeAdapter

from .errors import ConfigurationError, JoinRefused
from .protocol import MAX_ROOM_NAME

__all__ = [
    "JoinPolicy",
    "Namespace",
    "NamespaceOptions",
    "Namespaces",
    "PublishPolicy",
    "ecma_pattern",
]

#: ``authorize_join(user_id, room)``: True or None allows; False or a reason (str) refuses.
JoinPolicy = Callable[[str, str], "bool | str | None"]
#: Who may publish from a client: ``"members"`` of the room, ``"nobody"`` (server-only), or
#: ``policy(user_id, room)`` returning True/None to allow, False or a reason (str) to refuse.
PublishPolicy = Literal["members", "nobody"] | Callable[[str | None, str], "bool | str | None"]

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _parse(pattern: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The literal parts of ``pattern`` and, for each placeholder, its name and the characters
    it may not contain: ``:`` and the first character of the literal after it (so matching a
    room name never backtracks). ConfigurationError for a malformed pattern."""
    if not isinstance(pattern, str) or not pattern:
        raise ConfigurationError(f"a namespace pattern should be a non-empty str, got {pattern!r}")
    pieces = _PLACEHOLDER.split(pattern)
    literals, names = pieces[::2], pieces[1::2]
    if any("{" in p or "}" in p for p in literals):
        raise ConfigurationError(
            f"namespace pattern {pattern!r} has an unmatched brace; "
            "placeholders look like chat:{name}"
        )
    placeholders: list[tuple[str, str]] = []
    for i, name in enumerate(names):
        if not _IDENTIFIER.match(name) or name in names[:i]:
            what = "repeats" if name in names[:i] else "is not an identifier"
            raise ConfigurationError(
                f"namespace pattern {pattern!r}: placeholder {{{name}}} {what}; "
                "write placeholders as {name}, each name once"
            )
        after = literals[i + 1]
        if not after and i + 1 < len(names):
            raise ConfigurationError(
                f"namespace pattern {pattern!r}: placeholders {{{name}}} and "
                f"{{{names[i + 1]}}} need a literal between them"
            )
        placeholders.append((name, ":" if not after or after[0] == ":" else ":" + after[0]))
    return literals, placeholders


def _compile(pattern: str) -> re.Pattern[str]:
    """``chat:{name}`` -> a regex; ``{x}`` matches one or more characters other than ``:``
    (and the character that follows it in the pattern); ``*`` alone matches every room."""
    if pattern == "*":
        return re.compile(r".+\Z", re.DOTALL)
    literals, placeholders = _parse(pattern)
    parts = [re.escape(literals[0])]
    for (name, excluded), literal in zip(placeholders, literals[1:], strict=True):
        parts.append(f"(?P<{name}>[^{re.escape(excluded)}]+)")
        parts.append(re.escape(literal))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def ecma_pattern(pattern: str) -> str:
    """The same pattern as an ECMA-262 regex (JSON Schema's dialect), for documents."""
    if pattern == "*":
        return r"^[\s\S]+$"
    literals, placeholders = _parse(pattern)
    escape = functools.partial(re.sub, r"([.*+?^${}()|\[\]\\/])", r"\\\1")
    in_class = functools.partial(re.sub, r"([\]\\^-])", r"\\\1")
    parts = [escape(literals[0])]
    for (_, excluded), literal in zip(placeholders, literals[1:], strict=True):
        parts.append(f"[^{in_class(excluded)}]+")
        parts.append(escape(literal))
    return "^" + "".join(parts) + "$"


def _verdict(policy: Callable[..., Any], what: str, *args: Any) -> str | None:
    """Run a sync policy: None when allowed, else the refusal's reason ("" for plain False).

    An async policy or a wrong return type fails closed, loudly (TypeError)."""
    verdict = policy(*args)
    if verdict is True or verdict is None:
        return None
    if verdict is False:
        return ""
    if isinstance(verdict, str):
        return verdict
    close = getattr(verdict, "close", None)
    if callable(close):
        close()  # an un-awaited coroutine: silence its warning
    raise TypeError(
        f"{what} must return True, None, False or a reason (str), "
        f"got {type(verdict).__name__} (async policies are not supported)"
    )


@dataclass(frozen=True, eq=False)
class Namespace:
    """A kind of room: every room whose name matches ``pattern`` follows these options.

    ``message``: the type (a Pydantic model, or anything ``TypeAdapter`` takes) that published
    ``data`` must satisfy; what is delivered is the validated value. ``publish``: who may
    publish from a client. ``authorize_join``: who may join (anonymous connections are refused
    when set). ``max_members``: members per room. ``rate``/``burst``: client publishes a
    second per connection to rooms of this namespace. ``history_size``/``history_ttl``: how
    many published messages each room keeps, for how many seconds (None: the manager's
    default; size 0: no history). ``description`` shows in AsyncAPI.
    """

    pattern: str
    message: Any = None
    publish: PublishPolicy = "members"
    authorize_join: JoinPolicy | None = None
    presence_events: bool = False
    max_members: int | None = None
    rate: float | None = None
    burst: int = 20
    history_size: int | None = None
    history_ttl: float | None = None
    description: str | None = None
    regex: re.Pattern[str] = field(init=False, repr=False)
    adapter: TypeAdapter[Any] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "regex", _compile(self.pattern))
        set_(self, "adapter", None if self.message is None else TypeAdapter(self.message))
        if not (self.publish in ("members", "nobody") or callable(self.publish)):
            raise ConfigurationError(
                f"namespace {self.pattern!r}: publish should be 'members', 'nobody' or a "
                f"policy(user_id, room), got {self.publish!r}"
            )
        if self.max_members is not None and self.max_members < 1:
            raise ConfigurationError(
                f"namespace {self.pattern!r}: max_members should be at least 1 or None, "
                f"got {self.max_members!r}"
            )
        if self.rate is not None and self.rate <= 0:
            raise ConfigurationError(
                f"namespace {self.pattern!r}: rate should be a positive number of messages "
                f"a second or None, got {self.rate!r}"
            )
        if self.history_size is not None and self.history_size < 0:
            raise ConfigurationError(
                f"namespace {self.pattern!r}: history_size should be 0 (off) or more, "
                f"got {self.history_size!r}"
            )
        if self.history_ttl is not None and self.history_ttl <= 0:
            raise ConfigurationError(
                f"namespace {self.pattern!r}: history_ttl should be a positive number of "
                f"seconds or None, got {self.history_ttl!r}"
            )
        if self.burst < 1:
            raise ConfigurationError(
                f"namespace {self.pattern!r}: burst should be at least 1, got {self.burst!r}"
            )

    @property
    def params(self) -> list[str]:
        """The placeholders of ``pattern``, in order."""
        return list(self.regex.groupindex)

    def matches(self, room: str) -> bool:
        return self.regex.match(room) is not None

    def validate(self, data: Any) -> Any:
        """``data`` checked against ``message`` and returned as JSON-able Python
        (``ValidationError`` when it does not fit); unchanged when there is no model."""
        adapter = self.adapter
        if adapter is None:
            return data
        if isinstance(data, BaseModel):  # Pydantic does not revalidate instances by default
            data = data.model_dump()
        return adapter.dump_python(adapter.validate_python(data), mode="json")

    def check_join(self, user_id: str | None, room: str) -> None:
        """JoinRefused unless ``authorize_join`` (if any) lets ``user_id`` join ``room``."""
        policy = self.authorize_join
        if policy is None:
            return
        if user_id is None:
            raise JoinRefused(
                "forbidden", f"room {room!r} needs a signed-in user; this connection has none"
            )
        reason = _verdict(policy, "authorize_join", user_id, room)
        if reason is not None:
            raise JoinRefused("forbidden", reason or f"user {user_id!r} may not join room {room!r}")

    def publish_refusal(self, user_id: str | None, room: str) -> str | None:
        """None when a client of ``user_id`` may publish to ``room``, else why not."""
        policy = self.publish
        if policy == "members":
            return None
        if policy == "nobody":
            return f"room {room!r} takes messages from the server only"
        assert callable(policy)
        reason = _verdict(policy, "publish policy", user_id, room)
        if reason is None:
            return None
        who = "anonymous connections" if user_id is None else f"user {user_id!r}"
        return reason or f"{who} may not publish to room {room!r}"


class NamespaceOptions(TypedDict, total=False):
    """The keyword options of ``namespace()``: the fields of ``Namespace`` after ``pattern``."""

    message: Any
    publish: PublishPolicy
    authorize_join: JoinPolicy | None
    presence_events: bool
    max_members: int | None
    rate: float | None
    burst: int
    history_size: int | None
    history_ttl: float | None
    description: str | None


class Namespaces:
    """The declared namespaces, in order, and the ``default`` for rooms matching none
    (``None`` when ``strict``: such rooms are refused)."""

    def __init__(self, default: Namespace, *, strict: bool = False) -> None:
        self.default = default
        self.strict = strict
        self._declared: list[Namespace] = []

    def add(self, namespace: Namespace) -> Namespace:
        """Declare ``namespace`` after the others; ConfigurationError if it could never match."""
        pattern = namespace.pattern
        shortest = len(_PLACEHOLDER.sub("x", pattern)) if pattern != "*" else 1
        if shortest > MAX_ROOM_NAME:
            raise ConfigurationError(
                f"namespace {pattern[:60]!r}... could never match: its rooms would be at least "
                f"{shortest} characters long, and room names have at most {MAX_ROOM_NAME}"
            )
        shape = _PLACEHOLDER.sub("{}", pattern)
        literal = _PLACEHOLDER.search(pattern) is None and pattern != "*"
        for other in self._declared:
            if other.pattern == "*":
                why = "'*' before it takes every room"
            elif _PLACEHOLDER.sub("{}", other.pattern) == shape:
                why = f"it is declared twice (as {other.pattern!r})"
            elif literal and other.regex.match(pattern) is not None:
                why = f"the room {pattern!r} already matches {other.pattern!r}, declared before"
            else:
                continue
            raise ConfigurationError(
                f"namespace {pattern!r} could never match: {why}; a room takes the first "
                "namespace it matches, so declare the narrower pattern first"
            )
        self._declared.append(namespace)
        return namespace

    def history(self, namespace: Namespace) -> tuple[int, float | None]:
        """A namespace's history size and TTL, the default's where it sets none."""
        default = self.default
        size = namespace.history_size
        ttl = namespace.history_ttl
        return (
            default.history_size or 0 if size is None else size,
            default.history_ttl if ttl is None else ttl,
        )

    def room_history(self, room: str) -> tuple[int, float | None]:
        """The history size and TTL of ``room`` (the default's for a room matching none)."""
        return self.history(self.resolve(room) or self.default)

    def resolve(self, room: str) -> Namespace | None:
        """The first declared namespace ``room`` matches, else the default (None if strict)."""
        for namespace in self._declared:
            if namespace.regex.match(room) is not None:
                return namespace
        return None if self.strict else self.default

    def require(self, room: str) -> Namespace:
        """``resolve``, or JoinRefused("unknown_namespace") naming the declared patterns."""
        namespace = self.resolve(room)
        if namespace is None:
            patterns = ", ".join(repr(n.pattern) for n in self._declared) or "none declared"
            raise JoinRefused(
                "unknown_namespace",
                f"room {room!r} matches no namespace ({patterns}); namespaces are strict",
            )
        return namespace

    def __iter__(self) -> Iterator[Namespace]:
        return iter(tuple(self._declared))

    def __len__(self) -> int:
        return len(self._declared)


OPTION_NAMES = tuple(f.name for f in fields(Namespace) if f.init and f.name != "pattern")
