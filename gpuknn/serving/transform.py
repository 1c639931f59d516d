"""Batch transform without SageMaker: ``gpuknn transform``.

Like a SageMaker batch transform job, every input file gets one ``<name>.out`` in the
output directory (relative paths kept). Inputs are streamed in batches of rows
(``split_type`` ``Line`` for CSV and JSON Lines, ``RecordIO`` for RecordIO-protobuf)
or read whole (``None``, the only choice for a JSON document). Each batch is answered
exactly as ``/invocations`` answers a request, and the answers are assembled as
SageMaker assembles them: by line for JSON and JSON Lines (a newline after each
batch's answer), byte for byte for RecordIO.

An output is written to a ``.partial`` file and renamed when complete, so an
interrupted run leaves no truncated output, and a rerun skips the outputs that exist.
"""

from __future__ import annotations

import collections
import os
import queue
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpuknn import io as data_io
from gpuknn.errors import ClientError, DataError
from gpuknn.model.knn_model import KNNModel
from gpuknn.serving import formats
from gpuknn.serving.replicas import Replica

SPLIT_TYPES = ("Line", "RecordIO", "None")
_DEFAULT_SPLIT = {data_io.CSV: "Line", data_io.JSONLINES: "Line", data_io.RECORDIO: "RecordIO",
                  data_io.JSON: "None"}
_ALLOWED_SPLITS = {data_io.CSV: ("Line", "None"), data_io.JSONLINES: ("Line", "None"),
                   data_io.RECORDIO: ("RecordIO", "None"), data_io.JSON: ("None",)}
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class TransformJob:
    """One batch transform run.

    Attributes
    ----------
    input : Path
        A file, or a directory whose files (recursively, hidden ones skipped) are inputs.
    output : Path
        Directory for the ``.out`` files.
    content_type : str
        Content type of every input file (gzip allowed).
    split_type : {"Line", "RecordIO", "None"} or None
        None picks the natural split of the content type.
    accept : str
        Output format, as an ``Accept`` header (``verbose=true`` allowed).
    batch_rows : int
        Rows per search batch when splitting.
    max_payload_mb : float
        With split type ``None`` a whole file is one request, held to this limit like
        SageMaker's ``MaxPayloadInMB`` (default 6), before and after gzip inflation.
    """

    input: Path
    output: Path
    content_type: str
    split_type: str | None = None
    accept: str = data_io.JSONLINES
    batch_rows: int = 4096
    max_payload_mb: float = 6.0


@dataclass
class TransformReport:
    """What a run did: files written and skipped, rows answered."""

    written: list[Path]
    skipped: list[Path]
    rows: int = 0


def run(model: KNNModel | Sequence[Replica], job: TransformJob, *,
        progress: bool | None = None) -> TransformReport:
    """Transform every input file of ``job`` that has no output yet.

    Parameters
    ----------
    model : KNNModel, or sequence of Replica
        Several replicas (one per GPU, :func:`gpuknn.serving.replicas.load_replicas`)
        answer a file each at a time, each on its own thread.
    job : TransformJob
    progress : bool, optional
        Show a progress bar; default: only on a terminal.

    Raises
    ------
    ClientError
        Unknown split or accept type, unreadable input (naming the file and row).
    """
    split, output = check_job(job)
    replicas = [Replica(model)] if isinstance(model, KNNModel) else list(model)
    report = TransformReport([], [])
    inputs = input_files(job)
    free: queue.SimpleQueue[Replica] = queue.SimpleQueue()
    for replica in replicas:
        free.put(replica)

    def transform(source: Path, target: Path) -> int:
        replica = free.get()  # a thread per replica: one file at a time on each
        try:
            return _transform_file(replica, source, target, job, split=split, output=output)
        finally:
            free.put(replica)

    todo = []
    for source, target in inputs:
        if target.exists():
            report.skipped.append(target)
        else:
            todo.append((source, target))
    with tqdm(total=len(inputs), initial=len(report.skipped), unit=" files",
              disable=None if progress is None else not progress) as bar, \
            ThreadPoolExecutor(len(replicas), thread_name_prefix="gpuknn-replica") as pool:
        waiting, running = iter(todo), collections.deque()

        def start_next() -> None:  # one file in flight per replica, no more
            pair = next(waiting, None)
            if pair is not None:
                running.append((pair[1], pool.submit(transform, *pair)))

        for _ in replicas:
            start_next()
        while running:
            target, future = running.popleft()
            report.rows += future.result()  # in input order; a failure starts nothing more
            report.written.append(target)
            bar.set_postfix_str(str(target.relative_to(job.output)).removesuffix(".out"))
            bar.update(1)
            start_next()
    return report


def check_job(job: TransformJob) -> tuple[str, formats.OutputFormat]:
    """Check a job's content type, split type and accept type before any work.

    Parameters
    ----------
    job : TransformJob

    Returns
    -------
    split : str
        The split type that applies (the content type's natural one when unset).
    output : formats.OutputFormat
        The parsed accept type.

    Raises
    ------
    ClientError
        An unsupported content type, a split type that does not apply, no such accept.
    """
    kind, _ = formats.check_content_type(job.content_type)
    return _split_type(kind, job.split_type), formats.parse_accept(job.accept)


def input_files(job: TransformJob) -> list[tuple[Path, Path]]:
    """Every input file of ``job``, in the order :func:`run` takes them, with its output.

    Returns
    -------
    list of (Path, Path)
        ``(input file, <output>/<relative name>.out)`` pairs, whether the output exists
        or not.

    Raises
    ------
    DataError
        No such input, or an input directory with no files.
    """
    return [(source, job.output / (str(relative) + ".out"))
            for source, relative in _input_files(job.input)]


def transform_file(model: KNNModel, source: Path, target: Path, job: TransformJob) -> int:
    """Answer one input file into ``target``, exactly as :func:`run` does.

    The output is written to ``<target>.partial`` and renamed to ``target`` when
    complete; a failure leaves neither.

    Parameters
    ----------
    model : KNNModel
    source : Path
        The input file.
    target : Path
        Its output file (parent directories are made).
    job : TransformJob
        Content type, split type, accept type and batch size of the run.

    Returns
    -------
    int
        Rows answered.

    Raises
    ------
    ClientError
        Bad settings, or unreadable input (naming the file and row).
    """
    split, output = check_job(job)
    return _transform_file(Replica(model), source, target, job, split=split, output=output)


def _split_type(kind: str, split_type: str | None) -> str:
    split = _DEFAULT_SPLIT[kind] if split_type is None else split_type
    if split not in SPLIT_TYPES:
        raise ClientError(f"split type {split!r}: use one of {', '.join(SPLIT_TYPES)}")
    if split not in _ALLOWED_SPLITS[kind]:
        raise ClientError(f"split type {split!r} does not apply to {kind}; use "
                          f"{' or '.join(_ALLOWED_SPLITS[kind])}")
    return split


def _input_files(root: Path) -> Iterator[tuple[Path, Path]]:
    if root.is_file():
        yield root, Path(root.name)
        return
    if not root.is_dir():
        raise DataError(f"{root}: no such input file or directory")
    files = sorted(path for path in root.rglob("*") if path.is_file() and not any(
        part.startswith(".") for part in path.relative_to(root).parts))
    if not files:
        raise DataError(f"{root}: the input directory holds no files")
    for path in files:
        yield path, path.relative_to(root)


def _transform_file(model: Replica, source: Path, target: Path, job: TransformJob, *,
                    split: str, output: formats.OutputFormat) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    rows = 0
    try:
        with open(partial, "wb") as handle:
            for X in _batches(source, job, split, model.model):
                answer = model.answer(X)
                handle.write(formats.encode_response(answer, output))
                if output.media_type != data_io.RECORDIO:
                    handle.write(b"\n")
                rows += len(X)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def _whole_file(source: Path, max_payload_mb: float) -> bytes:
    """A file read whole as one request, refused past the payload limit."""
    limit = int(max_payload_mb * (1 << 20))
    with open(source, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{source}: over the {max_payload_mb:g} MB payload limit of split type "
                        "None (one request per file); split it by Line or RecordIO, or raise "
                        "--max-payload-mb")
    return data


def _batches(source: Path, job: TransformJob, split: str,
             model: KNNModel) -> Iterator[np.ndarray]:
    if split == "None":
        limits = formats.RequestLimits.for_model(model, int(job.max_payload_mb * (1 << 20)))
        yield formats.decode_request(_whole_file(source, job.max_payload_mb),
                                     job.content_type, model.feature_dim, limits,
                                     where=str(source))
        return
    kind, parameters = formats.check_content_type(job.content_type)
    label_size = formats.label_size_of(parameters)
    csv_label_size = label_size if kind == data_io.CSV else None
    first_row = 0
    for X, _ in data_io.iter_batches(source, kind, batch_size=job.batch_rows,
                                     label_size=label_size):
        yield formats.check_rows(X, model.feature_dim, where=f"{source}", first_row=first_row,
                                 csv_label_size=csv_label_size)
        first_row += X.shape[0]
