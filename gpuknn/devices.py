"""Which GPUs a job uses: the ``devices`` setting, read, checked and logged.

``devices`` is ``"all"`` (every visible GPU: ``$CUDA_VISIBLE_DEVICES`` applies), a
comma-separated list of ordinals such as ``"0,2"``, or a sequence of ints. The container
reads it from ``$GPUKNN_DEVICES``. On the CPU it chooses nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from gpuknn import _backend
from gpuknn.errors import DeviceError

log = logging.getLogger(__name__)

DEVICES_VARIABLE = "GPUKNN_DEVICES"
ALL = "all"


def parse(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """The ordinals ``value`` names, or None for every visible GPU.

    Raises
    ------
    DeviceError
        For anything but ``"all"``, distinct non-negative ordinals, or None.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", ALL)):
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    ordinals = []
    for item in items:
        text = str(item).strip()
        if not text.isdigit():
            raise DeviceError(f"devices must be 'all' or GPU ordinals such as '0,2'; got "
                              f"{value!r} ({text!r} is not a non-negative integer)")
        ordinals.append(int(text))
    if not ordinals or len(set(ordinals)) != len(ordinals):
        raise DeviceError(f"devices must name each GPU once; got {value!r}")
    return tuple(ordinals)


def resolve(value: str | Sequence[int] | None, device: str) -> tuple[int, ...]:
    """The GPU ordinals a job on resolved ``device`` (``"cpu"`` or ``"gpu"``) uses.

    Returns
    -------
    tuple of int
        Empty on the CPU; else the ordinals asked for, or every visible GPU.

    Raises
    ------
    DeviceError
        For a malformed setting, or an ordinal that is not visible.
    """
    chosen = parse(value)
    if device != "gpu":
        return ()
    count = _backend.gpu_count()
    if chosen is None:
        return tuple(range(count))
    absent = [ordinal for ordinal in chosen if ordinal >= count]
    if absent:
        raise DeviceError(f"devices {', '.join(map(str, absent))} are not visible: this "
                          f"process sees {count} GPU(s), ordinals 0-{count - 1} "
                          "($CUDA_VISIBLE_DEVICES renumbers them from 0)")
    return chosen


def from_environment(default: str = ALL) -> str:
    """``$GPUKNN_DEVICES``, else ``default``."""
    return os.environ.get(DEVICES_VARIABLE, "").strip() or default


def describe(ordinals: Sequence[int], *, free: bool = True) -> list[str]:
    """One line per GPU: ordinal, name, and its free (or, with ``free=False``, total)
    memory; ``free`` makes a CUDA context on each GPU."""
    lines = []
    for ordinal in ordinals:
        name, total = _backend.gpu_properties(ordinal)
        memory = (f"{_backend.gpu_free_memory(ordinal) / 2**30:.1f} of {total / 2**30:.1f} "
                  "GiB free" if free else f"{total / 2**30:.1f} GiB")
        lines.append(f"GPU {ordinal}: {name}, {memory}")
    return lines


def log_choice(ordinals: Sequence[int], *, free: bool = True) -> None:
    """Log the chosen GPUs (or that the job runs on the CPU)."""
    if not ordinals:
        log.info("devices: the CPU (%d cores)", _backend.usable_cores())
        return
    for line in describe(ordinals, free=free):
        log.info("devices: %s", line)


def physical_ids(ordinals: Sequence[int]) -> list[str]:
    """What ``$CUDA_VISIBLE_DEVICES`` must say for a child process to see GPU ``ordinal``
    of this one as its only GPU: the entry at that place of this process's own list
    (ordinals renumber it from 0), or the ordinal where the variable is unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    entries = [entry.strip() for entry in visible.split(",")] if visible else []
    return [entries[ordinal] if ordinal < len(entries) else str(ordinal)
            for ordinal in ordinals]
