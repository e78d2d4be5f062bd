"""Address plan of a testbed: one 127.<slot>.0.0/16 slice of the loopback network each.

Linux routes all of 127.0.0.0/8 to ``lo``, so every testbed gets its own addresses and can use
the real ports 80/443/53 without clashing with another testbed or with 127.0.0.1 services.

Layout of slot ``s`` (1..254, never 0 so 127.0.0.1 is never used)::

    127.s.0.1            origin (aiohttp), free port
    127.s.0.2            dnsmasq, port 53 when free, else a free port
    127.s.0.3            a stand-alone Origin Shield (tiers="shield"), port 80
    127.s.0.(16+j)       regional edge cache (REC) number j, port 80 (j < 224)
    127.s.(1+i//127).x   POP number i: x = 1+2*(i%127), and x+1 for a two-address POP
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from prewarm.testbed.proc import TestbedError

LOCK_DIR = Path(tempfile.gettempdir()) / "prewarm-testbed-slots"
POPS_PER_OCTET = 127


def origin_address(slot: int) -> str:
    """Address of the origin in this slot."""
    return f"127.{slot}.0.1"


def dns_address(slot: int) -> str:
    """Address of dnsmasq in this slot."""
    return f"127.{slot}.0.2"


def shield_address(slot: int) -> str:
    """Address of a stand-alone Origin Shield in this slot (plain HTTP, port 80)."""
    return f"127.{slot}.0.3"


MAX_RECS = 224


def rec_address(slot: int, index: int) -> str:
    """Address of regional edge cache number ``index`` in this slot (plain HTTP, port 80)."""
    if not 0 <= index < MAX_RECS:
        raise TestbedError(f"too many regional edge caches for one testbed (max {MAX_RECS})")
    return f"127.{slot}.0.{16 + index}"


def pop_addresses(slot: int, index: int, count: int) -> list[str]:
    """The ``count`` (1 or 2) addresses of the POP with this index."""
    third, pos = 1 + index // POPS_PER_OCTET, 1 + 2 * (index % POPS_PER_OCTET)
    if third > 255:
        raise TestbedError("too many POPs for one testbed (max 32,385)")
    return [f"127.{slot}.{third}.{pos + k}" for k in range(count)]


def can_bind(host: str, port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """True if nothing listens on host:port (SO_REUSEADDR so TIME_WAIT leftovers don't count)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


LOWEST_PORT = 20_000
"""Above Ray's default worker port range (10002-19999): ``ray start`` refuses a component port inside it."""


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (and of ``bind(port 0)``)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    return 32768, 60999


def free_port(host: str = "127.0.0.1", udp_too: bool = False, prefer: int | None = None) -> int:
    """A port free on ``host`` (TCP, and UDP when asked), trying ``prefer`` first, for a listener that another
    process binds a moment later.

    Chosen below the kernel's ephemeral range: a port from ``bind(port 0)`` is free only until the kernel
    gives it to some outgoing connection, and Ray's start-up opens many (a Ray agent once failed to bind its
    metrics port this way, and the node never started)."""
    def usable(port: int) -> bool:
        return can_bind(host, port) and (not udp_too or can_bind(host, port, socket.SOCK_DGRAM))

    if prefer is not None and usable(prefer):
        return prefer
    low, high = ephemeral_ports()
    below = range(LOWEST_PORT, low) if low > LOWEST_PORT + 1000 else range(max(high + 1, LOWEST_PORT), 65536)
    for port in random.sample(below, min(200, len(below))):
        if usable(port):
            return port
    raise TestbedError(f"no free port on {host}")


class SlotLease:
    """An exclusive flock on the slot's lock file, held while this process runs the testbed.

    The lock closes the race between two testbeds picking the same slot at the same moment;
    once nginx listens, the bind probe in ``lease_slot`` protects the slot even after the lock
    is gone (e.g. after ``prewarm testbed up`` has exited).
    """

    def __init__(self, slot: int, handle: IO[str]) -> None:
        self.slot = slot
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _try_lock(slot: int) -> SlotLease | None:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(LOCK_DIR, 0o1777)
    handle = (LOCK_DIR / f"slot-{slot}.lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return SlotLease(slot, handle)


def slot_looks_free(slot: int) -> bool:
    """Nothing listens on the slot's first POP address, where every testbed has an edge."""
    first = pop_addresses(slot, 0, 1)[0]
    return can_bind(first, 80) and can_bind(first, 443)


def lease_slot(extra_check: Callable[[int], bool] | None = None,
               rng: random.Random | None = None) -> SlotLease:
    """Pick a random free slot and lock it; random order keeps parallel testbeds apart."""
    slots = list(range(1, 255))
    (rng or random.SystemRandom()).shuffle(slots)
    for slot in slots:
        lease = _try_lock(slot)
        if lease is None:
            continue
        if slot_looks_free(slot) and (extra_check is None or extra_check(slot)):
            return lease
        lease.release()
    raise TestbedError("no free 127.<slot>.0.0/16 slice of the loopback network for a testbed")
