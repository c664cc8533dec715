"""Which process made something, and whether that process is provably gone.

A command killed outright (``kill -9``, the OOM killer, a machine lost) runs no clean-up: its
temporary output file stays (`features.storage`) and a ``lifecast train`` leaves its MLflow
run RUNNING (`training.tracking.end_dead_runs`). What such a process leaves is marked with
its `ProcessId` so that a later run can tell a leftover from the work of a process still
running, and clean up only the first.

A pid alone does not tell: the operating system reuses pids, and a pid means nothing on
another machine, in another container (pid namespace) or after a reboot. So a process is
named by where its pid means something (`ProcessId.machine`: the host name and the pid
namespace) and by when it started (`ProcessId.start`: a digest of the boot id and the start
time from ``/proc/<pid>/stat``, exact where the wall clock is not). Where ``/proc`` cannot be
read (macOS) the start is empty, and a process whose pid is alive counts as alive.
`gone_reason` answers only what it can prove; anything else counts as alive.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessId:
    """A process as another process can check it later: ``host`` (the host name),
    ``machine`` (an 8-hex digest of the host name and the pid namespace: where ``pid``
    names the same process), ``pid`` and ``start`` (an 8-hex digest of the boot and the
    start time; empty where it cannot be read)."""

    host: str
    machine: str
    pid: int
    start: str


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def _pid_namespace() -> str:
    try:
        return os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        return ""


def _machine(host: str) -> str:
    return _digest(host, _pid_namespace())


def _start(pid: int) -> str:
    """The start digest of ``pid``, "" when ``/proc`` does not tell (another system, the
    process gone)."""
    try:
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return ""
    # the command name (field 2) is in parentheses and may hold spaces or parentheses;
    # the start time in clock ticks since boot is field 22, the 20th after it
    fields = stat.rsplit(")", 1)[-1].split()
    return _digest(boot, fields[19]) if len(fields) > 19 else ""


def process(pid: int) -> ProcessId:
    """The `ProcessId` of process ``pid`` on this machine (its start empty when it cannot
    be read)."""
    host = socket.gethostname()
    return ProcessId(host=host, machine=_machine(host), pid=pid, start=_start(pid))


def this_process() -> ProcessId:
    """The `ProcessId` of the calling process."""
    return process(os.getpid())


def _ended(pid: int) -> bool:
    """True when no process ``pid`` runs here (a zombie, killed but not yet reaped by its
    parent, has ended too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        pass
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def gone_reason(owner: ProcessId) -> str | None:
    """Why process ``owner`` has provably ended ("pid 123 is not running", "pid 123 is
    another process now"), or None when it may still run: on another machine or in
    another pid namespace, or its pid alive with the same start (or a start that cannot be
    compared)."""
    if owner.pid <= 0 or owner.machine != _machine(socket.gethostname()):
        return None
    if owner.pid == os.getpid() and owner.start == this_process().start:
        return None
    if _ended(owner.pid):
        return f"pid {owner.pid} on {owner.host} is not running"
    now = _start(owner.pid)
    if owner.start and now and now != owner.start:
        return f"pid {owner.pid} on {owner.host} is another process now"
    return None
