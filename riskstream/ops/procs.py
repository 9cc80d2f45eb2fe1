"""Processes and ports on this machine: liveness (zombies count as dead), process groups, free ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (``/proc/<pid>/stat`` state Z)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # the state follows the command name in parentheses, which may itself hold spaces or ')'
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process in process group ``pgid`` (Linux /proc; else the leader only)."""
    return pid_alive(pgid) or bool(group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of process group ``pgid`` (Linux /proc), leader included."""
    out = []
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp, ...
            out.append(int(d.name))
    return sorted(out)


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing is bound to right now, below the OS's ephemeral range.

    Pitfall: a port the OS picks (bind to 0) is an *ephemeral* one, which the kernel may hand to any other
    socket (a Flink blob server, a client connection) before our server binds it; a REST poll then talks
    to that server instead (seen: an HTTP client reading Flink's blob protocol). Ports below the ephemeral
    range are only taken by explicit binds."""
    import random

    hi = max(_ephemeral_start(), 20_001)
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20_000, hi)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded machine: fall back to the OS's pick
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
