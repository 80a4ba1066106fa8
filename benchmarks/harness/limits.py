"""Operating-system limits a benchmark with many connections needs: open files, source ports."""

from __future__ import annotations

import resource

__all__ = ["PORTS_PER_ADDRESS", "ephemeral_ports", "raise_open_files", "source_addresses"]


def raise_open_files(needed: int | None = None) -> int:
    """Raise this process's open-file limit to ``needed`` (None: to the hard limit); children
    inherit it. The new soft limit. Above the hard limit this needs root with
    CAP_SYS_RESOURCE; without it the limit stops at the hard limit and the caller sees the
    smaller number."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if needed is None:
        needed = hard
    if soft != resource.RLIM_INFINITY and soft >= needed:
        return soft
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = needed
    target = min(needed, ceiling)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def ephemeral_ports() -> int:
    """How many local ports one source address can use towards one server port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return high - low + 1
    except (OSError, ValueError):
        return 28232  # Linux's default range, 32768-60999


PORTS_PER_ADDRESS = 5_000  # a connect() searches for a free port: fast while most are free


def source_addresses(connections: int, per_address: int = PORTS_PER_ADDRESS) -> list[str]:
    """Loopback source addresses (127.0.1.1, 127.0.1.2, ...) enough for ``connections``: one
    address runs out of ephemeral ports near 28,000 connections to one server port, and each
    connect() searches longer for a free port as they fill (measured: the client's CPU per
    connection tripled from 10,000 to 18,900 on one address). Linux routes all of
    127.0.0.0/8 to the loopback interface, so no set-up is needed."""
    per = min(per_address, ephemeral_ports() - 1000)
    count = max(1, -(-connections // per))
    if count > 254:
        raise ValueError(f"{connections} connections need {count} source addresses; at most 254")
    return [f"127.0.1.{i}" for i in range(1, count + 1)]
