"""Batch transform on a Ray cluster, with Ray Data: ``gpuknn transform --ray-address``.

The job is the one :func:`gpuknn.serving.transform.run` does on one process, split by
file: a Dataset holds one row per input file that has no output yet, and
``map_batches`` hands one file at a time to a pool of actors. Each actor loads the model
once (on its own GPU when the cluster has GPUs), reads its files itself and writes each
output with :func:`gpuknn.serving.transform.transform_file`, so the outputs are
byte-identical to the single-process ones, written to ``<name>.out.partial`` and
renamed when complete. Existing outputs are skipped, so a stopped run resumes.

Every node must see the model, the inputs and the output directory at the same paths
(one machine, or a shared file system).

A file that cannot be answered (bad data, a model that does not load) fails the run
with gpuknn's own error, naming the file, instead of a Ray traceback; the outputs
finished before stay, and no ``.partial`` file is left behind.

Ray is imported only inside functions, through :mod:`gpuknn.distributed.cluster`.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.distributed.cluster import connected
from gpuknn.errors import ClientError, DeviceError, GpuknnError, ModelFileError
from gpuknn.model.knn_model import KNNModel
from gpuknn.serving import transform
from gpuknn.serving.transform import PARTIAL_SUFFIX, TransformJob, TransformReport

logger = logging.getLogger("gpuknn.distributed")


def run(model_path: str | Path, job: TransformJob, *, ray_address: str | None = None,
        workers: int | None = None, device: str = "auto") -> TransformReport:
    """Transform every input file of ``job`` that has no output yet, on a Ray cluster.

    Parameters
    ----------
    model_path : str or Path
        A model directory or ``model.tar.gz``, readable at this path on every node.
    job : TransformJob
        The same job :func:`gpuknn.serving.transform.run` takes.
    ray_address : str, optional
        ``host:port`` of a running cluster's head, ``"auto"``, or None / ``"local"`` to
        start a local cluster for the run (see :func:`gpuknn.distributed.cluster.connected`).
        A connection made before (``ray.init``) is used as it is.
    workers : int, optional
        Actors, each holding one copy of the model; default: one per GPU of the cluster,
        else one per CPU, and never more than the files to write.
    device : {"auto", "cpu", "gpu"}
        ``auto`` and ``gpu`` give each actor a GPU when the cluster has some; ``cpu``
        never does, and ``gpu`` on a cluster without GPUs is an error.

    Returns
    -------
    TransformReport
        Files written and skipped (in input order), and rows answered.

    Raises
    ------
    ClientError
        Bad settings, no input, a model that does not load, or an input file that
        cannot be answered (the error of :func:`~gpuknn.serving.transform.run`, naming
        the file).
    DependencyError
        Ray is not installed.
    """
    transform.check_job(job)
    if workers is not None and workers < 1:
        raise ClientError(f"workers={workers}: use a positive number, or None for all")
    if not Path(model_path).exists():
        raise ModelFileError(f"{model_path}: no such model directory or archive")
    todo, skipped = _pending(job)
    report = TransformReport([target for _, target in todo], skipped)
    if not todo:
        return report
    failure: GpuknnError | None = None
    try:
        with connected(ray_address) as ray:
            report.rows = _execute(ray, str(model_path), job, todo, workers=workers,
                                   device=device)
    except Exception as err:
        failure = _gpuknn_cause(err)
        if failure is None:
            _remove_partials(todo)
            raise
    if failure is not None:
        # Raised outside the except block, it holds no reference to Ray's error. The
        # failed execution's actors keep their CPUs or GPUs until it is collected.
        gc.collect()
        _remove_partials(todo)
        raise failure
    return report


def _pending(job: TransformJob) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """The ``(input, output)`` pairs still to write, and the outputs that exist."""
    todo: list[tuple[Path, Path]] = []
    skipped: list[Path] = []
    for source, target in transform.input_files(job):
        if target.exists():
            skipped.append(target)
        else:
            todo.append((source, target))
    return todo, skipped


def _execute(ray: Any, model_path: str, job: TransformJob, todo: list[tuple[Path, Path]], *,
             workers: int | None, device: str) -> int:
    """Run the actors over the files of ``todo``; returns the rows answered."""
    resources = _actor_resources(ray, device)
    count = _worker_count(ray, resources, workers, len(todo))
    logger.info("transforming %d file(s) with %d Ray actor(s), %s each", len(todo), count,
                resources)
    items = [{"source": str(source), "target": str(target)} for source, target in todo]
    gc.collect()  # the actors of an earlier failed run in this process, now unreferenced
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    _configure(dataset.context)
    answered = dataset.map_batches(
        FileTransformer, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs={"model_path": model_path, "job": job, "device": device},
        # Two files in flight per actor: the next one is queued while one is answered, so
        # an actor never idles waiting for the executor (measured: 2 actors went from 1.0x
        # to 1.45x of one actor on 32 files, 2 cores); more would unbalance the tail.
        compute=ray.data.ActorPoolStrategy(size=count, max_tasks_in_flight_per_actor=2),
        **resources)
    return sum(int(row["rows"]) for row in answered.take_all())


def _actor_resources(ray: Any, device: str) -> dict[str, float]:
    """``num_gpus=1`` per actor where the cluster has GPUs and ``device`` allows, else
    ``num_cpus=1``."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "gpu" and gpus < 1:
        raise DeviceError("device 'gpu': the Ray cluster has no GPU; use --device auto or cpu")
    if device != "cpu" and gpus >= 1:
        return {"num_gpus": 1}
    return {"num_cpus": 1}


def _worker_count(ray: Any, resources: dict[str, float], workers: int | None,
                  files: int) -> int:
    """Actors to start: as asked, else one per GPU or CPU; at most one per file, and no
    more than the cluster can hold at once (more would never start)."""
    kind = "GPU" if "num_gpus" in resources else "CPU"
    slots = max(1, int(ray.cluster_resources().get(kind, 1)))
    if workers is not None and workers > slots:
        logger.warning("%d Ray workers asked for, but the cluster has %d %s(s); using %d",
                       workers, slots, kind, slots)
    return max(1, min(workers or slots, slots, files))


def _configure(context: Any) -> None:
    """Settings of this Dataset's execution: the UDF's own exception, not a wrapper
    (whose cause Ray does not carry back to the driver); progress bars only on a
    terminal, like the single-process transform."""
    context.raise_original_map_exception = True
    context.enable_progress_bars = sys.stderr.isatty()
    context.print_on_execution_start = False


class FileFailedError(Exception):
    """Carries a gpuknn error from an actor to the driver.

    The error is the first argument: Ray Data appends notes to an exception's message
    on the way, which leaves the carried error's own message as it was.
    """


class FileTransformer:
    """A Ray Data actor: one model, loaded once, that answers one input file per call.

    Parameters
    ----------
    model_path : str
        The model, as :meth:`KNNModel.load` reads it.
    job : TransformJob
        Content type, split type, accept type and batch size of the run.
    device : str
        Passed to :meth:`KNNModel.load`.
    """

    def __init__(self, model_path: str, job: TransformJob, device: str):
        self.job = job
        self.model: KNNModel | None = None
        self.load_error: GpuknnError | None = None
        try:
            self.model = KNNModel.load(model_path, device=device)
        except GpuknnError as err:  # raised by the first call: Ray retries a failed
            self.load_error = err   # constructor for long, and loses its type

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Answer the files of ``batch`` (columns ``source`` and ``target``).

        Returns
        -------
        dict
            ``target`` and ``rows``, the rows answered per file.

        Raises
        ------
        FileFailedError
            Carrying the gpuknn error of a file that cannot be answered, or of a model
            that did not load.
        """
        rows = [self._answer(Path(source), Path(target))
                for source, target in zip(batch["source"], batch["target"], strict=True)]
        return {"target": batch["target"], "rows": np.asarray(rows, dtype=np.int64)}

    def _answer(self, source: Path, target: Path) -> int:
        if self.model is None:
            raise FileFailedError(self.load_error)
        try:
            return transform.transform_file(self.model, source, target, self.job)
        except GpuknnError as err:
            raise FileFailedError(err) from None


def _gpuknn_cause(err: BaseException) -> GpuknnError | None:
    """The gpuknn error that an exception from Ray carries, if any: followed through
    ``RayTaskError.cause``, ``__cause__`` and :class:`FileFailedError`."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FileFailedError) and current.args and isinstance(
                current.args[0], GpuknnError):
            return current.args[0]
        if isinstance(current, GpuknnError) and not _is_ray_error(current):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None


def _is_ray_error(err: BaseException) -> bool:
    """Whether ``err`` is Ray's (a ``RayTaskError(DataError)`` is also a DataError)."""
    return any(cls.__module__.startswith("ray.") for cls in type(err).__mro__)


def _remove_partials(todo: list[tuple[Path, Path]]) -> None:
    """Remove what a failed run left half-written: ``<output>.partial`` files."""
    for _, target in todo:
        target.with_name(target.name + PARTIAL_SUFFIX).unlink(missing_ok=True)
