"""Sampling parts of a data set where they are, on a Ray cluster, and merging the samples.

Used by ``KNN.fit([shard, ...])`` (one part per shard, spread over the cluster) and by
multi-host ``gpuknn train`` (one part per host, pinned to that host). A part is read and
reservoir-sampled by one Ray task on the host that holds it; only the reservoirs travel.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from gpuknn.distributed import parts as parts_
from gpuknn.distributed.merge import HostSample, MergedSample, merge
from gpuknn.errors import ClusterError, GpuknnError, first_line
from gpuknn.hyperparameters import parse
from gpuknn.io import CSV, parse_content_type
from gpuknn.io.batches import densify, describe_csv
from gpuknn.sampling import ReservoirSampler

logger = logging.getLogger("gpuknn.distributed")
Placement = Callable[[parts_.Part], dict[str, Any]]
POLL_SECONDS = 0.5


def sample_part(part: parts_.Part, name: str, content_type: str, hyperparameters: dict[str, str],
                label_size: int | None = None) -> HostSample:
    """Read one part and keep a reservoir sample of it (runs on the host that has it).

    Parameters
    ----------
    part : Part
    name : str
        The host or shard, for messages.
    content_type : str
    hyperparameters : dict of str to str
        The job's hyperparameters (``sample_size``, ``seed``, ``mini_batch_size``,
        ``feature_dim`` are used).
    label_size : int, optional
        CSV label columns.

    Returns
    -------
    HostSample
    """
    _show_logging()
    hp = parse(hyperparameters)
    sampler = ReservoirSampler(hp.sample_size, seed=hp.seed, host=part.rank)
    files, how = part.files()
    batches = parts_.part_batches(part, files, how, content_type=content_type,
                                  batch_size=hp.mini_batch_size, label_size=label_size)
    if parse_content_type(content_type)[0] == CSV:
        batches = describe_csv(batches, f"{name}: {part.path()}", hp.feature_dim)
    for X, y in batches:
        sampler.add(densify(X, hp.feature_dim) if sp.issparse(X) else X, y)
    if sampler.rows_seen == 0:
        return HostSample(part.rank, part.hosts, name, 0, how, None, None,
                          np.empty(0, dtype=np.int64), parts_.listing(part))
    features, labels, ids = sampler.result(take=True)
    return HostSample(part.rank, part.hosts, name, sampler.rows_seen, how, features, labels,
                      ids, parts_.listing(part))


def _show_logging() -> None:
    """In a Ray worker, show gpuknn's INFO lines (Ray forwards them to the driver); in any
    other process, leave the logging configuration alone."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or \
            ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return
    if not logging.getLogger("gpuknn").handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")


def sample_parts(ray: Any, parts: Sequence[parts_.Part], names: Sequence[str], *,
                 content_type: str, hyperparameters: dict[str, str], placement: Placement,
                 label_size: int | None = None,
                 check_stop: Callable[[], None] | None = None) -> list[HostSample]:
    """Sample every part in a Ray task of its own; the first failure stops the others.

    Parameters
    ----------
    ray : module
        ``ray``, connected.
    parts : sequence of Part
    names : sequence of str
        The hosts or shards, for messages.
    content_type : str
    hyperparameters : dict of str to str
    placement : callable
        Ray task options for a part (where it runs).
    label_size : int, optional
    check_stop : callable, optional
        Called between waits; raises to abandon the tasks (a job stopped by SIGTERM).

    Returns
    -------
    list of HostSample
        In the order of ``parts``.

    Raises
    ------
    GpuknnError
        The first error of a part (a ``DataError`` naming the file, for instance), its
        message prefixed with the host or shard.
    ClusterError
        When a task's host or worker was lost.
    """
    task = ray.remote(sample_part)
    refs = [task.options(max_retries=0, **placement(part)).remote(
        part, name, content_type, hyperparameters, label_size)
        for part, name in zip(parts, names, strict=True)]
    return gather(ray, refs, names, "sampling its part", check_stop=check_stop)


def gather(ray: Any, refs: Sequence[Any], names: Sequence[str], doing: str, *,
           check_stop: Callable[[], None] | None = None) -> list[Any]:
    """The results of Ray tasks in order; on the first failure, cancel the rest and raise.

    A gpuknn error raised in a task is raised again here with the same type, its
    message prefixed by the task's name; any other loss is a :class:`ClusterError`.
    ``check_stop`` is called every :data:`POLL_SECONDS` while waiting: an exception it
    raises cancels the tasks (a signal handler cannot raise inside Ray's own wait).
    """
    pending = {ref: index for index, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    started = time.perf_counter()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
        if not done:
            _check(check_stop, ray, pending)
            continue
        index = pending.pop(done[0])
        try:
            results[index] = ray.get(done[0])
        except Exception as err:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise _as_gpuknn_error(ray, err, names[index], doing) from None
        logger.info("%s finished %s after %.1f s", names[index], doing,
                    time.perf_counter() - started)
    return results


def _check(check_stop: Callable[[], None] | None, ray: Any, pending: dict[Any, int]) -> None:
    if check_stop is None:
        return
    try:
        check_stop()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _as_gpuknn_error(ray: Any, err: Exception, name: str, doing: str) -> GpuknnError:
    cause = getattr(err, "cause", None)
    if isinstance(err, ray.exceptions.RayTaskError) and isinstance(cause, GpuknnError):
        again = type(cause).__new__(type(cause))
        again.__dict__.update(cause.__dict__)
        again.args = (f"{name}: {cause}",)
        return again
    if isinstance(err, ray.exceptions.RayTaskError):
        return ClusterError(f"{name} failed while {doing}: internal error "
                            f"({type(cause).__name__}: {first_line(cause)})")
    said = first_line(err).split(". ")[0].rstrip(".")  # Ray's advice that follows is long
    return ClusterError(f"{name} was lost while {doing} ({type(err).__name__}: {said})")


def merge_parts(samples: Sequence[HostSample], sample_size: int, seed: int) -> MergedSample:
    """:func:`merge`, logging which global row ids each host's rows got."""
    merged = merge(samples, sample_size, seed)
    for sample, first in zip(samples, merged.first_ids, strict=True):
        ids = (f"ids j*{sample.hosts}+{sample.rank} for its j-th row"
               if sample.how == parts_.ROW_STRIPES
               else f"ids {first}..{first + sample.rows - 1}" if sample.rows else "no rows")
        logger.info("%s: %d rows (%s), %s", sample.name, sample.rows, sample.how, ids)
    logger.info("merged sample: %d of %d rows", len(merged.ids), merged.rows_seen)
    return merged


def fit_shards(shards: Sequence[str], content_type: str, hp: Any, label_size: int | None,
               ray_address: str | None) -> MergedSample:
    """Sample each shard in a Ray task, spread over the cluster, and merge the samples.

    Parameters
    ----------
    shards : sequence of str
        Sources (files, directories, manifests), each read where its task runs; shard
        ``r`` is host ``r`` of a ``ShardedByS3Key`` job.
    content_type : str
    hp : Hyperparameters
    label_size : int, optional
    ray_address : str, optional
        See :func:`gpuknn.distributed.cluster.connected`.

    Returns
    -------
    MergedSample
    """
    from gpuknn.distributed.cluster import connected  # noqa: PLC0415 - imports Ray

    where = [str(Path(shard).absolute()) if Path(shard).exists() else str(shard)
             for shard in shards]
    parts = [parts_.Part(rank, len(where), shard) for rank, shard in enumerate(where)]
    started = time.perf_counter()
    with connected(ray_address) as ray:
        samples = sample_parts(ray, parts, list(shards), content_type=content_type,
                               hyperparameters=hp.to_strings(), label_size=label_size,
                               placement=lambda part: {"scheduling_strategy": "SPREAD"})
    logger.info("sampled %d shard(s) on Ray in %.2f s", len(parts),
                time.perf_counter() - started)
    return merge_parts(samples, hp.sample_size, hp.seed)
