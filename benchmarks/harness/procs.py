"""Server subprocesses for benchmarks: started pinned to a core, found by PID, stopped by PID."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "Server",
    "free_port",
    "granian_command",
    "proc_status",
    "start_time",
    "uvicorn_command",
]

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def uvicorn_command(target: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """uvicorn as the benchmarks run it: uvloop, httptools, websockets-sansio, one process."""
    return [
        sys.executable, "-m", "uvicorn", target, "--app-dir", str(ROOT),
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
        "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "5",
        *(["--factory"] if target.rsplit(":", 1)[1].startswith("make_") else []), *extra,
    ]  # fmt: skip


def granian_command(
    target: str, port: int, connections: int, extra: Sequence[str] = ()
) -> list[str]:
    """Granian RSGI, one worker, default runtime; ``--backpressure`` admits ``connections``."""
    return [
        sys.executable, "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--loop", "uvloop",
        "--backpressure", str(max(1024, connections + 256)), "--log-level", "warning",
        "--no-access-log", "--workers-kill-timeout", "5",
        *(["--factory"] if target.rsplit(":", 1)[1].startswith("make_") else []), *extra, target,
    ]  # fmt: skip


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot): with the PID, it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of each child of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(entry), int(fields[19])))
    return found


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, RssAnon, ...), empty if it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                parts = value.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0])
    except OSError:
        pass
    return out


def _child_setup(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(Exception):  # die with the benchmark, even on SIGKILL (Linux)
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return setup


class Server:
    """A server subprocess on a loopback port; ``pid`` is the process serving connections
    (Granian's worker, a child of the process started). Use as a context manager."""

    def __init__(
        self,
        name: str,
        command: Callable[[int], list[str]],
        log_dir: Path,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        worker: bool = False,
        start_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.command = command(self.port)
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
                preexec_fn=_child_setup(cpu),  # the benchmark runs no threads of its own
            )  # fmt: skip
        self.workers: list[tuple[int, int]] = []
        try:
            self._wait_listening(start_timeout)
            if worker:
                self.workers = self._wait_workers(10.0)
        except BaseException:
            self.stop()
            raise
        self.pid = self.workers[0][0] if self.workers else self.proc.pid

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_listening(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not listen on port {self.port} within {seconds} s")

    def _wait_workers(self, seconds: float) -> list[tuple[int, int]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = children(self.proc.pid)
            if found:
                return found
            time.sleep(0.05)
        raise RuntimeError(f"no worker process under PID {self.proc.pid} ({self.name})")

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time of the serving process (all its threads) so far."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port, "pid": self.pid, "command": self.command}

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; then any worker left behind, by PID."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid, started in self.workers:
            if start_time(pid) == started:  # still the worker we saw, not a reused PID
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
