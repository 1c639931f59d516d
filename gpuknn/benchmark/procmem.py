"""A process's memory and its process tree, read from ``/proc``, and the end of a tree.

- :func:`proc_status`, :func:`reset_peak`, :func:`malloc_trim`, :func:`smaps_rollup`: this
  process's ``Vm*`` counters, its peak reset, glibc's free memory given back, and any
  process's RSS and PSS;
- :func:`process_tree`, :func:`process_memory`, :func:`stop_server`: a process and its
  descendants, the memory of each, and SIGTERM then SIGKILL to all of them (each recognised
  by its start time, so that a reused process id is never signalled).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

SERVER_STOP_TIMEOUT_S = 30.0


# -- reading memory from /proc -----------------------------------------------------------------
def proc_status(pid: int | str = "self") -> dict[str, int]:
    """The ``Vm*`` lines of ``/proc/<pid>/status`` in bytes (``VmRSS``, ``VmHWM``, ...)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key.startswith("Vm") and len(parts) == 2 and parts[1] == "kB":
            values[key] = int(parts[0]) * 1024
    return values


def reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def malloc_trim() -> bool:
    """Give glibc's free memory back to the system (``malloc_trim(0)``); False without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def smaps_rollup(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss``, ``Pss_Anon``, ``Pss_File``... of a process in bytes, from
    ``/proc/<pid>/smaps_rollup`` (summed from ``smaps`` on kernels without it)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except FileNotFoundError:
        text = Path(f"/proc/{pid}/smaps").read_text()
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[key] = values.get(key, 0) + int(parts[0]) * 1024
    return values


# -- process trees -----------------------------------------------------------------------------
def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now (from the parent ids in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending += children.get(pid, [])
    return tree


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent id, start time in clock ticks) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def process_memory(pid: int) -> dict[str, Any]:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        memory = smaps_rollup(pid)
    except OSError:  # it ended meanwhile
        return {"pid": pid, "command": "", "pss_bytes": 0, "rss_bytes": 0}
    return {"pid": pid, "command": command.strip()[:200], "pss_bytes": memory.get("Pss", 0),
            "rss_bytes": memory.get("Rss", 0), "pss_anon_bytes": memory.get("Pss_Anon", 0),
            "pss_file_bytes": memory.get("Pss_File", 0)}


def stop_server(server: subprocess.Popen, timeout_s: float = SERVER_STOP_TIMEOUT_S) -> None:
    """SIGTERM to the server, then SIGKILL to it and to any descendant still running (each
    recognised by its start time, so a reused process id is never signalled)."""
    tree = {pid: _stat(pid) for pid in process_tree(server.pid)} if server.poll() is None else {}
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 5
    for pid, stat in tree.items():
        while stat is not None and _same_process(pid, stat) and time.monotonic() < deadline:
            time.sleep(0.05)  # a worker finishing its shutdown
        if stat is not None and _same_process(pid, stat):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _same_process(pid: int, stat: tuple[int, int]) -> bool:
    now = _stat(pid)
    return now is not None and now[1] == stat[1]
