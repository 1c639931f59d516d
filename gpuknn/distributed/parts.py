"""Which rows each host reads when several hosts sample one data set (numpy only).

A :class:`Part` is one host's share of the training data. Row ids are global and are
the same that one host reading all the data would give, host by host:

- **own files** (``ShardedByS3Key``, and each shard of ``KNN.fit([shard, ...])``): host
  ``r`` reads every file of its own source. Its rows get ids after all the rows of hosts
  ``0 .. r-1``: the ids number the concatenation of the hosts' sources in host order.
- **file blocks** (``FullyReplicated`` with at least as many files as hosts): every host
  sees every file; host ``r`` reads the ``r``-th contiguous block of the sorted file list
  (``files[r * F // H : (r + 1) * F // H]``). The ids are then exactly the row numbers of
  a single-host job over the same files.
- **row stripes** (``FullyReplicated`` with fewer files than hosts): every host reads
  every file and keeps the rows ``i`` with ``i % H == r``; its ``j``-th row is global row
  ``j * H + r``, again the single-host row number.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn import io
from gpuknn.environment import TrainingEnvironment, resolve_root
from gpuknn.errors import DataError

logger = logging.getLogger("gpuknn.distributed")
OWN_FILES, FILE_BLOCKS, ROW_STRIPES = "own files", "file blocks", "row stripes"
SHARDED, REPLICATED = "ShardedByS3Key", "FullyReplicated"


@dataclass(frozen=True)
class Part:
    """One host's share of the data: where it is and how the host takes its rows.

    Attributes
    ----------
    rank, hosts : int
        The host's place among ``hosts`` hosts (0 is the leader).
    source : str
        The host's source path (a file, directory or manifest), as that host sees it, or
        the name of a training channel.
    channel : bool
        ``source`` names a channel of each host's training job.
    distribution : {"ShardedByS3Key", "FullyReplicated"}
        Whether ``source`` holds only this host's data or everybody's.
    """

    rank: int
    hosts: int
    source: str
    distribution: str = SHARDED
    channel: bool = False

    def path(self) -> Path:
        """The source on this host. For a channel, where this host's own job configuration
        puts it under its ml root (``$GPUKNN_ML_ROOT`` or /opt/ml)."""
        if not self.channel:
            return Path(self.source)
        env = TrainingEnvironment.from_root(resolve_root())
        if self.source not in env.channels:
            raise DataError(f"{env.root / 'input' / 'config'}: this host's job has no "
                            f"{self.source!r} channel; every host needs the same channels")
        return env.channels[self.source].source(env.root)

    def files(self) -> tuple[list[Path], str]:
        """The files this host reads, in order, and how it took them (see the module)."""
        path = self.path()
        if not path.exists():
            if self.distribution == SHARDED:
                return [], OWN_FILES  # S3 sharding can leave a host without objects
            raise DataError(f"{path}: no such file or directory")
        files = io.sources.files_of(path)
        if self.distribution == SHARDED or self.hosts == 1:
            return files, OWN_FILES
        if len(files) >= self.hosts:
            start, stop = (self.rank * len(files) // self.hosts,
                           (self.rank + 1) * len(files) // self.hosts)
            return files[start:stop], FILE_BLOCKS
        return files, ROW_STRIPES


def part_batches(part: Part, files: list[Path], how: str, *, content_type: str,
                 batch_size: int, label_size: int | None = None) -> Iterator[tuple[Any, Any]]:
    """The batches of rows that belong to ``part``, file after file.

    Parameters
    ----------
    part : Part
    files, how
        What :meth:`Part.files` gave on this host.
    content_type : str
    batch_size : int
    label_size : int, optional
        CSV label columns.

    Yields
    ------
    X : ndarray or scipy sparse matrix of shape (n_rows, n_features)
    y : ndarray of shape (n_rows,), float32, or None
    """
    logger.info("host %d of %d reads %s of %s: %d file(s)%s", part.rank + 1, part.hosts, how,
                part.path(), len(files), _stripe_note(part, how))
    seen = 0
    for file in files:
        for X, y in io.iter_batches(file, content_type, batch_size, label_size):
            if how != ROW_STRIPES:
                yield X, y
                continue
            mine = np.flatnonzero((seen + np.arange(X.shape[0])) % part.hosts == part.rank)
            seen += X.shape[0]
            yield X[mine], None if y is None else y[mine]


def _stripe_note(part: Part, how: str) -> str:
    if how != ROW_STRIPES:
        return ""
    return (f", keeping rows i with i % {part.hosts} == {part.rank} (fewer files than "
            "hosts)")


def listing(part: Part) -> tuple[tuple[str, int], ...]:
    """Names (relative to the source) and sizes of every file the source holds."""
    path = part.path()
    if not path.exists():
        return ()
    base = path if path.is_dir() else path.parent
    return tuple((str(file.relative_to(base)) if file.is_relative_to(base) else str(file),
                  file.stat().st_size) for file in io.sources.files_of(path))


def global_ids(local: np.ndarray, rank: int, hosts: int, how: str, offset: int) -> np.ndarray:
    """Turn a host's row numbers within its part into the data set's row ids.

    Parameters
    ----------
    local : ndarray of shape (n,), int64
        Row numbers within the host's part.
    rank, hosts : int
    how : {"own files", "file blocks", "row stripes"}
    offset : int
        Rows of the parts of hosts ``0 .. rank-1`` (unused for row stripes).

    Returns
    -------
    ndarray of shape (n,), int64
    """
    if how == ROW_STRIPES:
        return local * hosts + rank
    return local + offset
