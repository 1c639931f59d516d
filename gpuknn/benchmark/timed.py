"""Wall and CPU time of a benchmark's operations, called in interleaved rounds, and the
statistics the CPU and data-layer comparisons (``bench/compare.py``,
``bench/io_compare.py``) report from them.

Every operation is called once untimed (the warm-up), then :func:`time_rounds` calls them
all in rounds through :func:`gpuknn.benchmark.measure.interleaved` (a fresh seeded random
order each round, ``gc.collect()`` and a settle pause before every call), recording the
wall seconds and the process CPU seconds of each call. The headline is the best
(smallest) wall time, the median is beside it, and a ratio between two operations is
given both of their best times and as the median over rounds of the ratio within a round.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gpuknn.benchmark import measure


class TimedOperation(Protocol):
    """What :func:`time_rounds` times: a unique ``key``, a ``call`` and two lists it fills."""

    key: str
    call: Callable[[], Any]
    times: list[float]
    cpu_times: list[float]


def wall_and_cpu(call: Callable[[], Any]) -> tuple[float, float]:
    """Call once: its wall seconds and this process's CPU seconds (all threads) meanwhile.

    The result is released only after both clocks are read, so freeing it is not timed.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    seconds = time.perf_counter() - wall, time.process_time() - cpu
    del result
    return seconds


def time_rounds(ops: Sequence[TimedOperation], repeats: int, *, settle_s: float,
                seed: int | Sequence[int]) -> None:
    """Warm every operation up, then time ``repeats`` interleaved rounds of all of them.

    Parameters
    ----------
    ops : sequence of TimedOperation
        Their ``times`` and ``cpu_times`` get one entry per round, in round order.
    repeats : int
        Rounds; every operation is timed once in each.
    settle_s : float
        Sleep before every timed call (after ``gc.collect()``): OpenBLAS and OpenMP
        worker threads spin for a while after a call (OpenBLAS about 2**28 cycles) and
        would otherwise steal a core from whatever runs next.
    seed : int or sequence of int
        Seed of the rounds' orders.
    """
    for op in ops:
        wall_and_cpu(op.call)
    samples = measure.interleaved({op.key: (lambda op=op: wall_and_cpu(op.call)) for op in ops},
                                  repeats, seed, settle_s=settle_s)
    for op in ops:
        op.times.extend(wall for wall, _ in samples[op.key])
        op.cpu_times.extend(cpu for _, cpu in samples[op.key])


def best_median_cores(times: Sequence[float], cpu_times: Sequence[float]) -> dict[str, float]:
    """``best_s`` (the smallest time), ``median_s`` and ``cores_used_best``.

    ``cores_used_best`` is the process CPU seconds over the wall seconds in the best
    round: the cores the operation obtained.
    """
    best = min(times)
    return {"best_s": best, "median_s": measure.summary(times)["median"],
            "cores_used_best": cpu_times[list(times).index(best)] / best}


def time_ratio(numerator: Sequence[float], denominator: Sequence[float],
               scale: float = 1.0) -> dict[str, float]:
    """``scale`` times one operation's time over another's, round by round.

    Returns
    -------
    dict
        ``of_best``: of the two best times; ``median_paired``: the median over rounds of
        the ratio within one round (robust to a machine that drifts between rounds).
        With ``scale = bytes_b / bytes_a`` and the arguments swapped, it is a ratio of
        throughputs.
    """
    per_round = [scale * a / b for a, b in zip(numerator, denominator, strict=True)]
    return {"of_best": scale * min(numerator) / min(denominator),
            "median_paired": measure.summary(per_round)["median"]}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, to 2 decimals (None where there are none).

    Other processes competing for the cores show here.
    """
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None
