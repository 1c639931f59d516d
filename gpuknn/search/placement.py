"""Where an index goes on a set of GPUs, and why: one device, or N shards.

A model whose search fits one GPU with room to spare is placed whole on it (a server
runs one such replica per GPU); one that does not is split into the fewest shards whose
parts fit the chosen GPUs. The need of a search comes from the same arithmetic as its
allocations: :func:`gpuknn.search.tiling.device_bytes` for exact search, and for IVF the
lists, centroids and PQ tables faiss-gpu holds plus a chunk of queries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpuknn import _backend
from gpuknn.errors import DeviceError
from gpuknn.search.exact import ExactSearch
from gpuknn.search.faiss_index import index_kind
from gpuknn.search.tiling import GPU_QUERY_CHUNK, device_bytes

log = logging.getLogger(__name__)

# Share of a GPU's free memory a placement may plan to use (the rest: CUDA context
# growth, allocator slack, other processes' small allocations).
USABLE_SHARE = 0.9
PQ_BITS = 8
# The documented GPU instances gpuknn targets: (GPUs, GiB each, GPU model).
INSTANCES = {
    "ml.p2.8xlarge": (8, 12, "K80 (one die)"),
    "ml.p2.16xlarge": (16, 12, "K80 (one die)"),
    "ml.p3.8xlarge": (4, 16, "V100"),
    "ml.p3.16xlarge": (8, 16, "V100"),
    "ml.p3dn.24xlarge": (8, 32, "V100"),
    "ml.g5.12xlarge": (4, 24, "A10G"),
    "ml.g5.48xlarge": (8, 24, "A10G"),
    "ml.p4d.24xlarge": (8, 40, "A100"),
    "ml.p5.48xlarge": (8, 80, "H100"),
}


@dataclass(frozen=True)
class Placement:
    """How an index is laid out on the chosen GPUs.

    Attributes
    ----------
    mode : {"replicas", "shards", "streamed", "too-large"}
        Whole on one GPU (a server runs one replica per GPU), split, streamed from host
        memory (exact search larger than every chosen GPU together), or too large.
    shards : int
    reason : str
        The bytes needed and free that decided it, for the log.
    segment_rows : int
        Streamed: rows each GPU holds at once (two segments of them, double buffered).
    """

    mode: str
    shards: int
    reason: str
    segment_rows: int = 0


def index_bytes(index_type: str, n_rows: int, dim: int, *, k: int = 10,
                pq_m: int | None = None, nlists: int = 0) -> int:
    """GPU memory a search of an (n_rows, dim) index holds while it answers a full chunk
    of queries.

    Parameters
    ----------
    index_type : {"faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ"}
    n_rows, dim : int
    k : int
    pq_m : int, optional
        IVFPQ's code bytes per row (default ``dim / 8``).
    nlists : int
        IVF lists (default ``4 sqrt(n_rows)``).

    Returns
    -------
    int
        Bytes.
    """
    if index_type == "faiss.Flat":
        return device_bytes(n_rows, dim, k=k)
    nlists = nlists or max(1, int(4 * n_rows ** 0.5))
    code = 4 * dim if index_type == "faiss.IVFFlat" else (pq_m or max(1, dim // 8))
    tables = 0 if index_type == "faiss.IVFFlat" else 4 * dim * 2**PQ_BITS
    queries = GPU_QUERY_CHUNK * (4 * dim + 12 * k)
    return n_rows * (code + 8) + 4 * nlists * dim + tables + queries


def choose(need: int, n_rows: int, free: Sequence[int], *, per_row: float,
           fixed: int, streamable: bool = False) -> Placement:
    """The placement of an index needing ``need`` bytes whole on GPUs with ``free`` bytes.

    Parameters
    ----------
    need : int
        :func:`index_bytes` of the whole index.
    n_rows : int
    free : sequence of int
        Free bytes of each chosen GPU.
    per_row, fixed : float, int
        A shard of r rows needs about ``fixed + per_row * r`` bytes (its working memory
        does not shrink with it).
    streamable : bool
        Exact search: too large for the GPUs together, it is streamed from host memory
        (two segments a GPU, each of ``segment_rows``) rather than refused.

    Returns
    -------
    Placement
    """
    if not free:
        return Placement("too-large", 0, "no GPU was chosen")
    usable = [int(USABLE_SHARE * value) for value in free]
    smallest = min(usable)
    gib = 2**30
    if need <= smallest:
        return Placement("replicas", 1, f"the index needs {need / gib:.2f} GiB and every chosen "
                                        f"GPU has {smallest / gib:.2f} GiB to use")
    for shards in range(2, len(free) + 1):
        part = fixed + per_row * -(-n_rows // shards)
        if part <= smallest:
            return Placement("shards", shards, f"the index needs {need / gib:.2f} GiB, more "
                             f"than one GPU's {smallest / gib:.2f} GiB; {shards} shards need "
                             f"{part / gib:.2f} GiB each")
    too_large = (f"the index needs {need / gib:.2f} GiB; {len(free)} GPU(s) of "
                 f"{smallest / gib:.2f} GiB usable each cannot hold it")
    segment = int((smallest - fixed) // (2 * per_row))
    if streamable and segment >= 1:
        return Placement("streamed", len(free), f"{too_large}: each streams its share from "
                         f"host memory, {segment:,} rows at a time", segment)
    return Placement("too-large", 0, too_large)


@dataclass(frozen=True)
class Need:
    """GPU memory a search needs: ``fixed + per_row * rows`` bytes, for ``rows`` rows."""

    rows: int
    per_row: int
    fixed: int
    streamable: bool = False

    @property
    def whole(self) -> int:
        """Bytes of the whole index."""
        return self.fixed + self.per_row * self.rows

    @classmethod
    def of(cls, index_type: str, n_rows: int, dim: int, *, code_bytes: int | None = None,
           k: int = 10) -> Need:
        """The need of an index (``code_bytes``: an IVF index's bytes a row, default
        IVFFlat's ``4 dim`` or IVFPQ's ``dim / 8``)."""
        whole = index_bytes(index_type, n_rows, dim, k=k, pq_m=code_bytes)
        if index_type == "faiss.Flat":
            per_row = 4 * dim + 4
        elif index_type == "faiss.IVFFlat":
            per_row = 4 * dim + 8
        else:
            per_row = (code_bytes or max(1, dim // 8)) + 8
        return cls(n_rows, per_row, max(whole - per_row * n_rows, 0),
                   streamable=index_type == "faiss.Flat")

    @classmethod
    def of_index(cls, index: Any, *, k: int = 10) -> Need:
        """The need of a loaded :class:`ExactSearch` or IVF index."""
        if isinstance(index, ExactSearch):
            return cls.of("faiss.Flat", int(index.ntotal), int(index.dim), k=k)
        code = int(getattr(index.index, "code_size", 4 * int(index.dim)))
        return cls.of(index_kind(index.index), int(index.ntotal), int(index.dim),
                      code_bytes=code, k=k)

    @classmethod
    def of_metadata(cls, meta: dict[str, Any], *, k: int = 10) -> Need:
        """The need of a model from its metadata (``model_algo-1.json``), unloaded."""
        index = meta["index"]
        return cls.of(index["type"], int(index["ntotal"]), int(index["dim"]),
                      code_bytes=index.get("pq_m"), k=k)


def place(need: Need, ordinals: Sequence[int], *, free: Sequence[int] | None = None,
          ) -> Placement:
    """:func:`choose` for GPUs ``ordinals`` (their free memory, read unless given),
    logged with the reason."""
    if free is None:
        free = [_backend.gpu_free_memory(ordinal) for ordinal in ordinals]
    chosen = choose(need.whole, need.rows, free, per_row=need.per_row, fixed=need.fixed,
                    streamable=need.streamable)
    log.info("placement on GPU(s) %s: %s, because %s", ", ".join(map(str, ordinals)),
             chosen.mode if chosen.mode != "shards" else f"{chosen.shards} shards",
             chosen.reason)
    return chosen


def for_index(index: Any, ordinals: Sequence[int]) -> Placement:
    """The placement of an index loaded on the CPU on GPUs ``ordinals``: whole on the
    first, N shards, or streamed.

    Raises
    ------
    DeviceError
        When the GPUs together cannot hold it (an IVF index).
    """
    chosen = place(Need.of_index(index), ordinals)
    if chosen.mode == "too-large":
        raise DeviceError(f"the model does not fit the chosen GPUs: {chosen.reason}; choose "
                          "more devices, or device='cpu'")
    return chosen


def rows_per_gpu(index_type: str, dim: int, gpu_bytes: int, *, k: int = 10) -> int:
    """The most rows of ``dim`` dimensions whose search fits a GPU of ``gpu_bytes``."""
    usable = int(USABLE_SHARE * gpu_bytes)
    low, high = 0, max(1, usable // 8)  # every index holds 8 bytes of id a row at least
    while low < high:  # largest n with index_bytes(n) <= usable
        middle = (low + high + 1) // 2
        if index_bytes(index_type, middle, dim, k=k) <= usable:
            low = middle
        else:
            high = middle - 1
    return low


def instance_table(dim: int = 128) -> str:
    """A Markdown table: for each documented instance, the rows of ``dim`` dimensions one
    GPU holds (Flat, IVFFlat, IVFPQ with ``dim / 8`` code bytes), and all its GPUs as
    shards."""
    kinds = ("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ")
    heads = " | ".join(f"{kind} rows: 1 GPU / all" for kind in kinds)
    lines = [f"| instance | GPUs | each | {heads} |", "|---|---:|---|" + "---:|" * len(kinds)]
    for name, (count, gib, model) in INSTANCES.items():
        cells = []
        for kind in kinds:
            one = rows_per_gpu(kind, dim, gib * 2**30)
            cells.append(f"{_millions(one)} / {_millions(one * count)}")
        lines.append(f"| {name} | {count} | {gib} GB {model} | {' | '.join(cells)} |")
    return "\n".join(lines)


def report(n_rows: int, dim: int, ordinals: Sequence[int], free: Sequence[int]) -> str:
    """Markdown: for an (n_rows, dim) model of each index type, its placement on GPUs
    ``ordinals`` with ``free`` bytes (none: no GPU here), then :func:`instance_table`."""
    lines = [f"## Placement of {n_rows:,} x {dim} on "
             + (", ".join(f"GPU {o} ({f / 2**30:.1f} GiB free)" for o, f in
                          zip(ordinals, free, strict=True)) or "no GPU (none is visible)"), ""]
    if ordinals:
        lines += ["| index | mode | shards | rows streamed at once | why |",
                  "|---|---|---:|---:|---|"]
        for kind in ("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ"):
            need = Need.of(kind, n_rows, dim)
            chosen = choose(need.whole, n_rows, free, per_row=need.per_row, fixed=need.fixed,
                            streamable=need.streamable)
            lines.append(f"| {kind} | {chosen.mode} | {chosen.shards} | "
                         f"{chosen.segment_rows or '-'} | {chosen.reason} |")
        lines.append("")
    lines += [f"Rows of {dim} dimensions each GPU of the documented instances holds:", "",
              instance_table(dim)]
    return "\n".join(lines)


def _millions(rows: int) -> str:
    return f"{rows / 1e6:,.0f}M" if rows >= 1e7 else f"{rows / 1e6:.1f}M"

