"""GPU accounting, no GPU needed: the largest n x d float32 base whose device memory fits
a card, by :func:`gpuknn.search.tiling.device_bytes` where it exists, beside the base-once
formula (:func:`base_once_bytes`) and the old layout (the base held twice,
:func:`old_layout_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A "16 GB" card, in bytes (nominal; CUDA reports a little less or more per model).
CARD_BYTES = 16 * 10**9


# -- GPU accounting ----------------------------------------------------------------------------
def gpu_accounting(dim: int = 128, card_bytes: int = CARD_BYTES) -> dict[str, Any]:
    """The largest n x ``dim`` float32 Flat base a card holds, by device accounting alone.

    gpuknn's count is :func:`gpuknn.search.tiling.device_bytes` (n, dim) where it exists, else
    :func:`base_once_bytes` (and ``source`` says so). Beside it, the largest n of the
    base-once accounting and of the old layout (:func:`old_layout_bytes`).

    Returns
    -------
    dict
        ``dim``, ``card_bytes``, ``source``, ``largest_n`` (gpuknn's count),
        ``base_once_largest_n``, ``old_layout_largest_n``, ``gain_over_old`` and the
        constants used (``tile_bytes``, ``query_chunk``, ``block_rows``).
    """
    counted, source = _device_bytes()
    largest = largest_fitting(lambda n: counted(n, dim), card_bytes)
    tile, chunk = _gpu_constants()
    old = largest_fitting(lambda n: old_layout_bytes(n, dim), card_bytes)
    return {"dim": dim, "card_bytes": card_bytes, "source": source, "largest_n": largest,
            "device_bytes_at_largest": counted(largest, dim) if largest else 0,
            "base_once_largest_n": largest_fitting(lambda n: base_once_bytes(n, dim),
                                                   card_bytes),
            "old_layout_largest_n": old, "gain_over_old": largest / old if old else None,
            "tile_bytes": tile, "query_chunk": chunk, "block_rows": _block_rows(tile, chunk)}


def base_once_bytes(n: int, dim: int) -> int:
    """Device bytes of an n x dim float32 exact search holding the base once: the base, its
    norms (float32), one score tile (:data:`gpuknn.search.tiling.GPU_TILE_BYTES`), a scratch block
    of the base rows one tile covers, and one query chunk
    (:data:`gpuknn.search.tiling.GPU_QUERY_CHUNK` rows)."""
    tile, chunk = _gpu_constants()
    return (n * dim * 4 + n * 4 + tile + _block_rows(tile, chunk) * dim * 4
            + chunk * dim * 4)


def old_layout_bytes(n: int, dim: int) -> int:
    """Device bytes of the old layout: the base twice (vectors and their scaled copy), the
    norms and one score tile."""
    tile, _ = _gpu_constants()
    return 2 * n * dim * 4 + n * 4 + tile


def largest_fitting(bytes_of: Callable[[int], int], budget: int) -> int:
    """The largest n with ``bytes_of(n) <= budget`` (``bytes_of`` non-decreasing); 0 if
    none."""
    if bytes_of(1) > budget:
        return 0
    low, high = 1, 2
    while bytes_of(high) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if bytes_of(middle) <= budget else (low, middle)
    return low


def _device_bytes() -> tuple[Callable[[int, int], int], str]:
    from gpuknn.search import tiling  # noqa: PLC0415 - only when asked

    counted = getattr(tiling, "device_bytes", None)
    if counted is not None:
        try:
            int(counted(1000, 128))
        except (TypeError, ValueError):
            counted = None
    if counted is None:
        return base_once_bytes, ("this harness's base-once formula: "
                                 "gpuknn.search.tiling.device_bytes is missing")
    return (lambda n, dim: int(counted(n, dim))), "gpuknn.search.tiling.device_bytes"


def _gpu_constants() -> tuple[int, int]:
    from gpuknn.search import tiling  # noqa: PLC0415 - only when asked

    tile = getattr(tiling, "GPU_TILE_BYTES", 1 << 30)
    return int(tile), int(getattr(tiling, "GPU_QUERY_CHUNK", 8192))


def _block_rows(tile: int, chunk: int) -> int:
    """Base rows one score tile covers for a whole query chunk (float32 scores)."""
    return max(1, tile // (4 * chunk))
