"""The benchmarks' shared harness: server processes, limits, a lean client, records."""

from .limits import raise_open_files, source_addresses
from .procs import ROOT, Server, free_port, granian_command, proc_status, uvicorn_command
from .record import RESULTS, environment, loadavg, spread, stamp, write
from .wsclient import WSConn, connect

__all__ = [
    "RESULTS",
    "ROOT",
    "Server",
    "WSConn",
    "connect",
    "environment",
    "free_port",
    "granian_command",
    "loadavg",
    "proc_status",
    "raise_open_files",
    "source_addresses",
    "spread",
    "stamp",
    "uvicorn_command",
    "write",
]
