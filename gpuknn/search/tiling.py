"""How exact search cuts its work into tiles, and the memory that takes.

The score tile's size (``$GPUKNN_TILE_MB``, else 16 MiB on the CPU and 1 GiB on a GPU),
the base rows a tile spans (:func:`block_width`), and the device memory an exact search
holds while it searches (:func:`device_bytes`), which placement on GPUs and the
multi-model budget plan with.
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from gpuknn.search.topk import candidates_for

DEFAULT_TILE_BYTES = 16 << 20
# On a GPU, large tiles keep the GEMMs and selections big enough to fill the device.
GPU_TILE_BYTES = 1 << 30
# Overrides the score tile's size in MiB on either device (train, serve and Python alike).
TILE_VARIABLE = "GPUKNN_TILE_MB"
GPU_QUERY_CHUNK = 8192
# The largest block of scaled base rows a tile makes on the CPU (see block_width).
SCRATCH_BYTES = 8 << 20
# Tiles whose candidate lists are held before they are merged into one (a large base
# would otherwise hold n / width lists per query chunk: 0.5 GB on a GPU for 10M rows).
MERGE_TILES = 32


def block_width(n_rows: int, dim: int, tile_bytes: int) -> int:
    """Base rows per tile for ``n_rows`` queries: a score tile of ``tile_bytes``, and a
    block of scaled base rows of at most ``max(SCRATCH_BYTES, tile_bytes / 16)`` (so a
    one-row search does not scale the whole base at once); at least 1,024 rows."""
    width = tile_bytes // (4 * max(n_rows, 1))
    scratch = max(SCRATCH_BYTES, tile_bytes // 16) // (4 * max(dim, 1))
    return int(max(min(width, scratch), 1024))


def device_bytes(n_base: int, dim: int, *, k: int = 10, tile_bytes: int = GPU_TILE_BYTES,
                 query_chunk: int = GPU_QUERY_CHUNK) -> int:
    """Device memory an L2 exact search (:class:`~gpuknn.search.exact.ExactSearch`) of an
    (n_base, dim) float32 base holds on a GPU while it searches a full chunk of queries.

    The base once (``4 n d``), its norms (``4 n``), one score tile (``tile_bytes``), one
    block of scaled base rows for that tile, the query chunk with its centred copy, and
    each tile's candidate lists: what its ``search`` allocates, with the default tile and
    chunk sizes of a GPU.

    Parameters
    ----------
    n_base, dim : int
    k : int
        Neighbours asked for (sets the candidate lists' width).
    tile_bytes : int
        The score tile (``$GPUKNN_TILE_MB``; 1 GiB by default on a GPU).
    query_chunk : int
        Queries searched at once.

    Returns
    -------
    int
        Bytes.
    """
    width = block_width(query_chunk, dim, tile_bytes)
    tiles = min(-(-n_base // width), MERGE_TILES + 1)
    candidates = 2 * tiles * query_chunk * candidates_for(k) * (4 + 8)  # lists, merged
    return (4 * n_base * dim + 4 * n_base + tile_bytes + 4 * width * dim
            + 2 * 4 * query_chunk * dim + candidates)


def default_tile_bytes(xp: ModuleType) -> int:
    """The score tile's size: ``$GPUKNN_TILE_MB`` if set, else the device's default.

    Raises
    ------
    ValueError
        When the variable is not a positive number of MiB.
    """
    value = os.environ.get(TILE_VARIABLE, "").strip()
    if not value:
        return DEFAULT_TILE_BYTES if xp is np else GPU_TILE_BYTES
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = 0.0
    if not megabytes > 0:
        raise ValueError(f"${TILE_VARIABLE} must be a positive number of MiB; got {value!r}")
    return max(int(megabytes * (1 << 20)), 4096)
