"""Hosts on one machine for partition tests: network namespaces and veth links the test makes
(``ip netns``, iproute2; needs root), removed after it.

A link is a veth pair with a /30 on it. ``cut()`` makes it silent both ways without a reset:
it removes the far end's address, so packets to it are dropped there (the namespace does not
forward) and it has no route back; both ends have permanent neighbour entries, so nothing
fails fast on ARP either. Established TCP connections hear nothing; new ones time out.
``heal()`` puts the address back and TCP carries on.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Lab", "Link", "lab"]


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _in(ns: str | None) -> tuple[str, ...]:
    return ("-n", ns) if ns else ()


def _mac(ns: str | None, dev: str) -> str:
    out = _ip(*_in(ns), "link", "show", dev)
    return out.split("link/ether", 1)[1].split()[0]


@dataclass
class Link:
    """A veth pair between namespaces ``a`` and ``b`` (None: the test's own)."""

    a: str | None
    b: str | None
    a_dev: str
    b_dev: str
    a_ip: str
    b_ip: str

    def cut(self) -> None:
        """Silence, both ways: ``b``'s end loses its address."""
        _ip(*_in(self.b), "addr", "del", f"{self.b_ip}/30", "dev", self.b_dev)

    def heal(self) -> None:
        _ip(*_in(self.b), "addr", "add", f"{self.b_ip}/30", "dev", self.b_dev)


class Lab:
    """Namespaces named ``fr<pid>-<tag>-<host>``; addresses in 10.<n>.<link>.0/30."""

    def __init__(self) -> None:
        self.tag = f"fr{os.getpid() % 100000}{uuid.uuid4().hex[:3]}"
        self.octet = 100 + os.getpid() % 150
        self.hosts: list[str] = []
        self.links: list[Link] = []

    def host(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        _ip("netns", "add", ns)
        self.hosts.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def link(self, a: str | None, b: str | None) -> Link:
        k = len(self.links) + 1
        a_dev, b_dev = f"{self.tag[-7:]}{k}a", f"{self.tag[-7:]}{k}b"
        _ip("link", "add", a_dev, "type", "veth", "peer", "name", b_dev)
        for ns, dev in ((a, a_dev), (b, b_dev)):
            if ns:
                _ip("link", "set", dev, "netns", ns)
        link = Link(a, b, a_dev, b_dev, f"10.{self.octet}.{k}.1", f"10.{self.octet}.{k}.2")
        for ns, dev, ip in ((a, a_dev, link.a_ip), (b, b_dev, link.b_ip)):
            _ip(*_in(ns), "addr", "add", f"{ip}/30", "dev", dev)
            _ip(*_in(ns), "link", "set", dev, "up")
        for ns, dev, peer_ip, peer_ns, peer_dev in (
            (a, a_dev, link.b_ip, b, b_dev),
            (b, b_dev, link.a_ip, a, a_dev),
        ):  # no ARP: a cut link must not fail fast on neighbour resolution
            _ip(*_in(ns), "neigh", "replace", peer_ip, "lladdr", _mac(peer_ns, peer_dev),
                "dev", dev, "nud", "permanent")  # fmt: skip
        self.links.append(link)
        return link

    def close(self) -> None:
        for ns in self.hosts:  # a namespace's veth ends go with it, and so their peers
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        for link in self.links:
            if link.a is None:
                subprocess.run(["ip", "link", "del", link.a_dev], capture_output=True, timeout=10)


@contextmanager
def lab() -> Iterator[Lab]:
    made = Lab()
    try:
        yield made
    finally:
        made.close()
