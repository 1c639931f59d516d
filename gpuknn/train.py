"""``gpuknn train``: SageMaker's training-container contract for k-NN.

Reads the job's configuration from the ml root, streams the ``train`` channel through the
reservoir sampler in ``mini_batch_size`` batches, builds the index, writes the model into
``model/`` and, with a ``test`` channel, scores it and logs SageMaker's metric lines:

    #quality_metric: host=algo-1, test accuracy <score>=0.9221
    #test_score (algo-1) : ('accuracy', 0.9221)

A job starts by removing an earlier run's ``output/failure``. On any failure,
``output/failure`` gets a one-paragraph reason (at most 1024 characters), the log gets
the reason once (with the traceback only for internal errors), ``model/`` is left without
model files and the exit code is non-zero. SIGTERM stops the job the same way. An ml root
that does not exist is reported in the log only: nothing is created under it.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn import _backend, devices, io
from gpuknn.environment import Channel, TrainingEnvironment, resolve_root
from gpuknn.errors import (
    ClientError,
    ClusterError,
    DataError,
    DependencyError,
    StoppedError,
)
from gpuknn.estimator import KNN
from gpuknn.hyperparameters import Hyperparameters, parse
from gpuknn.io.batches import describe_csv
from gpuknn.io.text import label_column_hint
from gpuknn.model import files as model_files
from gpuknn.model import layout
from gpuknn.model.knn_model import KNNModel

logger = logging.getLogger("gpuknn.train")
CHANNELS = ("train", "test")
FAILURE_LIMIT = 1024
PROGRESS_SECONDS = 10.0
EXIT_FAILED, EXIT_STOPPED = 1, 143


def main(root: str | Path | None = None, *, gpus: str | None = None) -> int:
    """Run a training job; returns the process exit code (0 on success).

    ``gpus`` is the ``devices`` setting (:mod:`gpuknn.devices`; default
    ``$GPUKNN_DEVICES``, else every visible GPU): the test channel is scored on all of
    them, the model split into one shard each.
    """
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    env = None
    try:
        env = TrainingEnvironment.from_root(root)
        env.failure_file.unlink(missing_ok=True)  # an earlier run's reason is not this one's
        train(env, gpus=gpus)
        return 0
    except StoppedError:
        _fail(env, root, "Training was stopped (SIGTERM) before it finished; no model was "
                         "written.")
        return EXIT_STOPPED
    except (ClientError, ClusterError, DependencyError) as err:
        _fail(env, root, str(err))
        return EXIT_FAILED
    except MemoryError:
        _fail(env, root, _out_of_memory_reason(env), with_traceback=True)
        return EXIT_FAILED
    except Exception as err:
        _fail(env, root, f"Internal error ({type(err).__name__}: {err}). This is a bug in "
                         "gpuknn; the traceback is in the job's log.", with_traceback=True)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise StoppedError("SIGTERM")


def train(env: TrainingEnvironment, *, gpus: str | None = None) -> dict[str, float]:
    """Train, save and score; returns the metrics written to ``output/data/metrics.json``."""
    _check_job(env)
    hp = parse(env.hyperparameters)
    device = _backend.resolve_device("auto")
    ordinals = devices.resolve(gpus or devices.from_environment(), device)
    devices.log_choice(ordinals)
    logger.info("Final configuration: %s", json.dumps(hp.to_strings(), sort_keys=True))
    logger.info("Host %s of %s; device %s", env.current_host, list(env.hosts),
                _backend.device_name(_backend.array_module(device)))
    if len(env.hosts) > 1:
        from gpuknn.distributed import hosts  # noqa: PLC0415 - needs Ray, only here

        return hosts.train(env, hp, device, lambda model, seconds: _finish(
            env, hp, model, seconds, ordinals))
    model, seconds = _fit(env, hp, device)
    return _finish(env, hp, model, seconds, ordinals)


def _finish(env: TrainingEnvironment, hp: Hyperparameters, model: KNNModel,
            seconds: float, ordinals: tuple[int, ...] = ()) -> dict[str, float]:
    """Log the training metrics, save the model, score the test channel."""
    started = time.perf_counter()
    rows = model.rows_seen
    throughput = rows / max(seconds, 1e-9)
    logger.info("Read %d records in %.2f s; sample of %d rows x %d features", rows, seconds,
                model.n_indexed, model.feature_dim)
    print(f"#progress_metric: host={env.current_host}, completed 100.0 % of epochs", flush=True)
    print(f"#throughput_metric: host={env.current_host}, train throughput={throughput} "
          "records/second", flush=True)
    _save(model, env)
    metrics = {"train:throughput": throughput, "train:records": float(rows),
               "train:sample_size": float(model.n_indexed)}
    if "test" in env.channels:  # on every chosen GPU: one shard each
        scorer = model.sharded(len(ordinals), devices=ordinals) if len(ordinals) > 1 else model
        metrics.update(_score(scorer, env, hp))
    env.metrics_file.parent.mkdir(parents=True, exist_ok=True)
    env.metrics_file.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    logger.info("Job finished in %.2f s", time.perf_counter() - started)
    return metrics


def _check_job(env: TrainingEnvironment) -> None:
    extra = sorted(set(env.channels) - set(CHANNELS))
    if extra:
        raise ClientError(f"Channel(s) {', '.join(map(repr, extra))} are not used by k-NN; "
                          "allowed channels: 'train' (required) and 'test' (optional).")
    if "train" not in env.channels:
        raise ClientError("The 'train' channel is required: put the training data in "
                          f"{Channel('train').source(env.root)} (File mode) or declare it "
                          "in inputdataconfig.json.")


def _fit(env: TrainingEnvironment, hp: Hyperparameters, device: str) -> tuple[KNNModel, float]:
    """The fitted model and the seconds of the training pass (reading and sampling, as
    SageMaker's throughput metric counts it; the index build is logged apart)."""
    channel = env.channels["train"]
    started = time.perf_counter()
    finished: dict[str, float] = {}
    estimator = KNN(device=device, **hp.to_dict())
    batches = _batches(channel, env, hp.mini_batch_size, feature_dim=hp.feature_dim)
    estimator.fit(_progress(batches, "train", finished))
    model = estimator.fitted_model
    if model.labels is None:
        raise DataError(f"{channel.source(env.root)}: the training data has no labels "
                        "(label[\"values\"] in RecordIO records, the first column of CSV)")
    return model, finished.get("at", time.perf_counter()) - started


def _batches(channel: Channel, env: TrainingEnvironment, batch_size: int,
             feature_dim: int | str = "auto") -> Iterator[Any]:
    """A channel's batches; for CSV, the first batch logs the label column and the feature
    count, and is checked against ``feature_dim``."""
    source = channel.source(env.root)
    if not source.exists():
        raise DataError(f"{source}: the {channel.name!r} channel has no data there "
                        f"({channel.input_mode} mode)")
    logger.info("Channel %s: %s, %s mode, %s, from %s", channel.name, channel.content_type,
                channel.input_mode, channel.distribution, source)
    batches = io.iter_batches(source, channel.content_type, batch_size)
    if _is_csv(channel):
        batches = describe_csv(batches, f"{channel.name} channel ({source})", feature_dim,
                               role=channel.name)
    return batches


def _is_csv(channel: Channel) -> bool:
    try:
        return io.parse_content_type(channel.content_type)[0] == io.CSV
    except DataError:
        return False  # iter_batches names the unsupported type


def _progress(batches: Iterator[Any], name: str,
              finished: dict[str, float] | None = None) -> Iterator[Any]:
    """Pass batches through, showing progress: a tqdm bar on a terminal, else log lines.

    ``finished["at"]`` gets the ``perf_counter`` time at which the data ran out.
    """
    bar = _bar(name)
    rows, last = 0, time.perf_counter()
    for X, y in batches:
        rows += X.shape[0]
        if bar is not None:
            bar.update(X.shape[0])
        elif time.perf_counter() - last >= PROGRESS_SECONDS:
            logger.info("%s: %d records read", name, rows)
            last = time.perf_counter()
        yield X, y
    if finished is not None:
        finished["at"] = time.perf_counter()
    if bar is not None:
        bar.close()


def _bar(name: str):
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm  # noqa: PLC0415 - optional, terminals only
    except ImportError:
        return None
    return tqdm(desc=name, unit=" records", unit_scale=True)


def _save(model: KNNModel, env: TrainingEnvironment) -> None:
    """Write the model elsewhere, then move the files into ``model/`` (never half a model)."""
    started = time.perf_counter()
    env.model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gpuknn-model-", dir=_staging_parent(env)))
    try:
        model_files.save(model.parts(), staging)
        _clear_model_dir(env)  # no old JSON beside new files, no stale reduction file
        names = [p.name for p in staging.iterdir() if p.name != layout.METADATA]
        for name in [*names, layout.METADATA]:  # the JSON last: it marks a complete model
            shutil.move(str(staging / name), str(env.model_dir / name))
    except BaseException:
        _clear_model_dir(env)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Model written to %s in %.2f s", env.model_dir, time.perf_counter() - started)


def _staging_parent(env: TrainingEnvironment) -> Path | None:
    """A writable directory next to model/ (same file system when possible)."""
    for candidate in (env.root, env.output_dir):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=candidate)
            probe.close()
            return candidate
        except OSError:
            continue
    return None


def _clear_model_dir(env: TrainingEnvironment) -> None:
    """Remove gpuknn's model files from ``model/``, the JSON (the commit record) first."""
    for name in (layout.METADATA, *layout.KNOWN_FILES):
        (env.model_dir / name).unlink(missing_ok=True)


def _score(model: KNNModel, env: TrainingEnvironment, hp: Hyperparameters) -> dict[str, float]:
    """Score the test channel; logs SageMaker's metric lines."""
    started = time.perf_counter()
    channel = env.channels["test"]
    source = channel.source(env.root)
    errors, total = 0.0, 0
    for X, y in _progress(_batches(channel, env, hp.mini_batch_size), "test"):
        if y is None:
            raise DataError(f"{source}: the test data has no labels")
        if X.shape[1] != model.feature_dim:
            hint = label_column_hint(X.shape[1], model.feature_dim, "test") if _is_csv(
                channel) else ""
            raise DataError(f"{source}: test records have {X.shape[1]} features; the model was "
                            f"trained on {model.feature_dim}.{hint}")
        dense = X.toarray() if hasattr(X, "toarray") else X
        try:
            predicted = model.predict(dense)
        except DataError as err:
            raise DataError(f"{source}: test rows {total} to {total + len(y) - 1} (0-based): "
                            f"{err}") from None
        errors += float(np.sum((predicted != y) if hp.predictor_type == "classifier"
                               else (predicted.astype(np.float64) - y) ** 2))
        total += len(y)
    host = env.current_host
    if hp.predictor_type == "classifier":
        name, value, kind = "accuracy", 1.0 - errors / total, "score"
    else:
        name, value, kind = "mse", errors / total, "loss"
    logger.info("Scored %d test records in %.2f s", total, time.perf_counter() - started)
    print(f"#test_score ({host}) : ('{name}', {value})", flush=True)
    print(f"#quality_metric: host={host}, test {name} <{kind}>={value}", flush=True)
    return {f"test:{name}": value}


def _fail(env: TrainingEnvironment | None, root: str | Path | None, reason: str, *,
          with_traceback: bool = False) -> None:
    """Log the reason once, write ``output/failure`` and leave ``model/`` without model files.

    A user's mistake (a ``ClientError``) or a stop is logged without a traceback; an
    internal error or running out of memory also logs the traceback (never in the file).
    Nothing is written when the ml root itself does not exist.
    """
    if with_traceback:
        logger.error("Training failed: %s\n%s", reason, traceback.format_exc().rstrip())
    else:
        logger.error("Training failed: %s", reason)
    if env is None:
        env = TrainingEnvironment(root=resolve_root(root))
        if not env.root.is_dir():
            return  # a mistyped root: create nothing
    try:
        if env.current_host == env.hosts[0]:  # another host's model/ may be the leader's
            _clear_model_dir(env)            # (SageMaker local mode mounts one for all)
        env.failure_file.parent.mkdir(parents=True, exist_ok=True)
        env.failure_file.write_text(_one_paragraph(reason)[:FAILURE_LIMIT])
    except OSError as err:
        logger.error("Could not write %s: %s", env.failure_file, err)


def _one_paragraph(text: str) -> str:
    return " ".join(line.strip(" -") for line in text.splitlines() if line.strip())


def _out_of_memory_reason(env: TrainingEnvironment | None) -> str:
    hp = (env.hyperparameters if env else {}) or {}
    size = hp.get("sample_size", "?")
    dim = hp.get("feature_dim", "auto")
    estimate = ""
    if str(size).isdigit() and str(dim).isdigit():
        estimate = f" about {int(size) * int(dim) * 4 / 2**30:.1f} GiB for the sample alone;"
    return (f"Out of memory while training: a sample of {size} rows x {dim} features needs"
            f"{estimate or ' sample_size x feature_dim x 4 bytes;'} lower sample_size, or set "
            "dimension_reduction_type and dimension_reduction_target, or use a larger instance.")
