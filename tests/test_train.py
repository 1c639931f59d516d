"""``gpuknn train``: SageMaker's training-container contract, run as a real subprocess.

Every test builds an ml root under ``tmp_path`` (``input/config/*.json``, ``input/data/``)
and runs ``python -m gpuknn.cli train`` (or the console script) on it, then checks the
exit code, the metric lines (with SageMaker's own HPO regexes), ``output/data/metrics.json``,
``output/failure`` and the model in ``model/``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from gpuknn import KNN, KNNModel, io
from gpuknn.model import layout

# SageMaker's metric definitions for the k-NN algorithm, verbatim.
METRIC_REGEXES = {
    "test:accuracy": r"#quality_metric: host=\S+, test accuracy <score>=(\S+)",
    "test:mse": r"#quality_metric: host=\S+, test mse <loss>=(\S+)",
    "train:progress": r"#progress_metric: host=\S+, completed (\S+) %",
    "train:throughput": r"#throughput_metric: host=\S+, train throughput=(\S+) records/second",
}
RECORDIO = "application/x-recordio-protobuf"
CSV = "text/csv"
TIMEOUT = 120


# -- helpers -----------------------------------------------------------------------------------
def channel(content_type: str = RECORDIO, mode: str = "File", **extra: str) -> dict[str, str]:
    """One channel of inputdataconfig.json, as SageMaker writes it."""
    return {"ContentType": content_type, "TrainingInputMode": mode,
            "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None", **extra}


def write_job(root: Path, hyperparameters: dict[str, str],
              channels: dict[str, dict[str, str]] | None = None,
              hosts: tuple[str, ...] = ("algo-1",)) -> Path:
    """Write input/config/ under ``root``; ``channels`` defaults to a File-mode train channel."""
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    channels = {"train": channel()} if channels is None else channels
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": hosts[0], "hosts": list(hosts), "network_interface_name": "eth0"}))
    return root


def data_dir(root: Path, name: str = "train") -> Path:
    path = root / "input" / "data" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def blobs(n: int, d: int, seed: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian clusters: float32 features, float32 class labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    X = centers[y] + rng.normal(size=(n, d))
    return X.astype(np.float32), y.astype(np.float32)


def smooth(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Regression data: a smooth function of the features plus noise, float32."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(n, d)).astype(np.float32)
    y = np.sin(2.0 * X[:, 0]) + X[:, 1] ** 2 + 0.05 * rng.normal(size=n)
    return X, y.astype(np.float32)


def command() -> list[str]:
    """The console script next to the interpreter, else ``python -m gpuknn.cli``."""
    script = Path(sys.executable).with_name("gpuknn")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gpuknn.cli"]


def environment(root: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GPUKNN_ML_ROOT"}
    if root is not None:
        env["GPUKNN_ML_ROOT"] = str(root)
    return env


def run_train(root: Path, *, via_env: bool = False) -> subprocess.CompletedProcess:
    """``gpuknn train`` on ``root``, given by --ml-root or by $GPUKNN_ML_ROOT."""
    if via_env:
        args, env = [*command(), "train"], environment(root)
    else:
        args = [sys.executable, "-m", "gpuknn.cli", "train", "--ml-root", str(root)]
        env = environment()
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env=env, cwd=root.parent)


def metric(stdout: str, name: str) -> float:
    """The value SageMaker would extract for ``name``; exactly one match."""
    found = re.findall(METRIC_REGEXES[name], stdout)
    assert len(found) == 1, (name, stdout)
    return float(found[0])


def metrics_json(root: Path) -> dict[str, float]:
    return json.loads((root / "output" / "data" / "metrics.json").read_text())


def assert_succeeded(result: subprocess.CompletedProcess, root: Path) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (root / "output" / "failure").exists()
    assert metric(result.stdout, "train:progress") == 100.0
    assert metric(result.stdout, "train:throughput") > 0


def files_in_model(root: Path) -> list[str]:
    model = root / "model"
    return sorted(p.name for p in model.iterdir()) if model.is_dir() else []


def assert_failed(result: subprocess.CompletedProcess, root: Path, *needles: str) -> str:
    """Non-zero exit, a one-paragraph failure file naming the problem, model/ empty."""
    assert result.returncode != 0, result.stdout
    failure = (root / "output" / "failure").read_text()
    assert 0 < len(failure) <= 1024
    assert "Traceback" not in failure
    assert "\n" not in failure.strip(), failure
    for needle in needles:
        assert needle in failure, (needle, failure)
    log = result.stdout + result.stderr
    assert "Traceback" not in log  # a user's mistake: the reason, once, no traceback
    assert log.count("Training failed:") == 1, log
    assert files_in_model(root) == []
    assert not re.search(METRIC_REGEXES["test:accuracy"], result.stdout)
    return failure


def api_model(X: np.ndarray, y: np.ndarray, hyperparameters: dict[str, str]) -> KNN:
    """The Python API's estimator with the job's hyperparameters, on the CPU."""
    return KNN(device="cpu", **hyperparameters).fit(X, y)


def assert_same_model(root: Path, expected: KNN, queries: np.ndarray) -> KNNModel:
    """The model in ``model/`` answers exactly as ``expected`` does."""
    model = KNNModel.load(root / "model", device="cpu")
    reference = expected.fitted_model
    np.testing.assert_array_equal(model.ids, reference.ids)
    np.testing.assert_array_equal(model.labels, reference.labels)
    assert model.rows_seen == reference.rows_seen
    assert model.hyperparameters == reference.hyperparameters
    distances, ids = model.kneighbors(queries)
    ref_distances, ref_ids = reference.kneighbors(queries)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(distances, ref_distances)
    np.testing.assert_array_equal(model.predict(queries), expected.predict(queries))
    return model


# -- successful jobs -----------------------------------------------------------------------------
def test_letter_classifier_scores_the_reference_accuracy(tmp_path, letter):
    """RecordIO float32 in two shards (as the SDK's record_set writes), k=1: 0.9565."""
    X, y, X_test, y_test = letter
    hp = {"k": "1", "predictor_type": "classifier", "sample_size": "200000",
          "feature_dim": "16", "_tuning_objective_metric": "test:accuracy"}
    root = write_job(tmp_path / "ml", hp, {"train": channel(), "test": channel()})
    io.record_set(X, y, path=data_dir(root, "train"), shards=2)
    io.write_recordio(data_dir(root, "test") / "test.pbr", X_test, y_test)

    result = run_train(root)

    assert_succeeded(result, root)
    lines = result.stdout.splitlines()
    assert "#quality_metric: host=algo-1, test accuracy <score>=0.9565" in lines
    assert "#test_score (algo-1) : ('accuracy', 0.9565)" in lines
    assert "#progress_metric: host=algo-1, completed 100.0 % of epochs" in lines
    assert metric(result.stdout, "test:accuracy") == 0.9565
    assert not re.search(METRIC_REGEXES["test:mse"], result.stdout)
    metrics = metrics_json(root)
    assert metrics == {"test:accuracy": 0.9565, "train:records": 16000.0,
                       "train:sample_size": 16000.0,
                       "train:throughput": metric(result.stdout, "train:throughput")}
    assert files_in_model(root) == sorted([layout.INDEX, layout.LABELS, layout.IDS,
                                        layout.FLAT, layout.METADATA])
    model = KNNModel.load(root / "model", device="cpu")
    assert (model.k, model.predictor_type, model.n_indexed, model.feature_dim) == (
        1, "classifier", 16000, 16)
    assert float(np.mean(model.predict(X_test) == y_test)) == 0.9565


def test_regressor_matches_the_python_api_with_sampling(tmp_path):
    """FastFile mode, root from $GPUKNN_ML_ROOT, the console script; sample_size < rows.

    The model must equal ``KNN(...).fit(X, y)`` with the same hyperparameters (same seed,
    same sample) and the logged mse must be the API's predictions' mse.
    """
    X, y = smooth(3000, 8, seed=1)
    X_test, y_test = smooth(400, 8, seed=2)
    hp = {"k": "5", "predictor_type": "regressor", "sample_size": "1000", "feature_dim": "8",
          "mini_batch_size": "256", "seed": "11"}
    mode = channel(mode="FastFile")
    root = write_job(tmp_path / "ml", hp, {"train": mode, "test": mode})
    io.write_recordio(data_dir(root, "train") / "part-0.pbr", X[:1700], y[:1700])
    io.write_recordio(data_dir(root, "train") / "part-1.pbr", X[1700:], y[1700:])
    io.write_recordio(data_dir(root, "test") / "test.pbr", X_test, y_test)

    result = run_train(root, via_env=True)

    assert_succeeded(result, root)
    expected = api_model(X, y, hp)
    assert expected.fitted_model.n_indexed == 1000
    model = assert_same_model(root, expected, X_test)
    assert model.n_indexed == 1000 and model.rows_seen == 3000
    predicted = expected.predict(X_test).astype(np.float64)
    mse = float(np.mean((predicted - y_test.astype(np.float64)) ** 2))
    logged = metric(result.stdout, "test:mse")
    assert logged == pytest.approx(mse, rel=1e-12, abs=0)
    assert f"#quality_metric: host=algo-1, test mse <loss>={logged!r}" in result.stdout
    assert f"#test_score (algo-1) : ('mse', {logged!r})" in result.stdout
    assert not re.search(METRIC_REGEXES["test:accuracy"], result.stdout)
    metrics = metrics_json(root)
    assert metrics["test:mse"] == logged
    assert metrics["train:records"] == 3000.0 and metrics["train:sample_size"] == 1000.0
    assert metrics["train:throughput"] == metric(result.stdout, "train:throughput")


def _write_float64(directory: Path, X: np.ndarray, y: np.ndarray) -> dict[str, str]:
    io.write_recordio(directory / "train.pbr", X.astype(np.float64), y.astype(np.float64))
    return channel()


def _write_sparse(directory: Path, X: np.ndarray, y: np.ndarray) -> dict[str, str]:
    io.write_recordio(directory / "train.pbr", sp.csr_matrix(X), y)
    return channel()


def _write_csv(directory: Path, X: np.ndarray, y: np.ndarray) -> dict[str, str]:
    np.savetxt(directory / "train.csv", np.column_stack([y, X]), delimiter=",", fmt="%.9g")
    return channel(CSV)


def _write_csv_gzip(directory: Path, X: np.ndarray, y: np.ndarray) -> dict[str, str]:
    with gzip.open(directory / "train.csv.gz", "wt") as handle:
        np.savetxt(handle, np.column_stack([y, X]), delimiter=",", fmt="%.9g")
    return channel(f"{CSV};label_size=1", CompressionType="Gzip")


@pytest.mark.parametrize("write", [_write_float64, _write_sparse, _write_csv, _write_csv_gzip],
                         ids=["recordio-float64", "recordio-sparse", "csv", "csv-gzip"])
def test_every_training_format_gives_the_python_api_model(tmp_path, write):
    X, y = blobs(300, 12, seed=3)
    if write is _write_sparse:
        X[np.random.default_rng(4).random(X.shape) < 0.6] = 0.0
    hp = {"k": "3", "predictor_type": "classifier", "sample_size": "200", "seed": "5",
          "mini_batch_size": "64"}
    if write is not _write_csv:
        hp["feature_dim"] = "auto" if write is _write_float64 else "12"
    root = tmp_path / "ml"
    config = write(data_dir(root, "train"), X, y)
    write_job(root, hp, {"train": config})

    result = run_train(root)

    assert_succeeded(result, root)
    assert not re.search(r"#quality_metric|#test_score", result.stdout)
    metrics = metrics_json(root)
    assert metrics["train:records"] == 300.0 and metrics["train:sample_size"] == 200.0
    queries, _ = blobs(50, 12, seed=6)
    assert_same_model(root, api_model(X, y, hp), queries)


def _pipe_writer(source: Path, fifo: Path, stall_after: int | None = None) -> subprocess.Popen:
    """Another process that copies ``source`` into ``fifo`` (opening it blocks until read).

    With ``stall_after``, it writes that many bytes, says "sent" on its stdout, waits for
    the reader to take every byte out of the pipe (``FIONREAD`` on its end reads 0), says
    "drained" and sleeps.
    """
    code = ("import fcntl, struct, sys, termios, time\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "part = int(sys.argv[3]) if len(sys.argv) > 3 else len(data)\n"
            "with open(sys.argv[2], 'wb') as pipe:\n"
            "    pipe.write(data[:part])\n"
            "    pipe.flush()\n"
            "    print('sent', flush=True)\n"
            "    if part < len(data):\n"
            "        unread = lambda: struct.unpack('i', fcntl.ioctl(\n"
            "            pipe, termios.FIONREAD, b'\\0' * 4))[0]\n"
            "        while unread():\n"
            "            time.sleep(0.01)\n"
            "        print('drained', flush=True)\n"
            "        time.sleep(120)\n")
    extra = [] if stall_after is None else [str(stall_after)]
    return subprocess.Popen([sys.executable, "-c", code, str(source), str(fifo), *extra],
                            stdout=subprocess.PIPE, text=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def test_pipe_mode_reads_train_and_test_fifos(tmp_path):
    X, y = blobs(2000, 10, seed=7)
    X_test, y_test = blobs(300, 10, seed=8)
    hp = {"k": "7", "predictor_type": "classifier", "sample_size": "1500", "seed": "3"}
    pipe = channel(mode="Pipe")
    root = write_job(tmp_path / "ml", hp, {"train": pipe, "test": pipe})
    (root / "input" / "data").mkdir(parents=True)
    files = tmp_path / "files"
    files.mkdir()
    io.write_recordio(files / "train.pbr", X, y)
    io.write_recordio(files / "test.pbr", X_test, y_test)
    writers = []
    try:
        for name in ("train", "test"):
            fifo = root / "input" / "data" / f"{name}_0"
            os.mkfifo(fifo)
            writers.append(_pipe_writer(files / f"{name}.pbr", fifo))

        result = run_train(root)

        for writer in writers:
            assert writer.wait(timeout=10) == 0
    finally:
        for writer in writers:
            _stop(writer)
    assert_succeeded(result, root)
    expected = api_model(X, y, hp)
    assert_same_model(root, expected, X_test)
    accuracy = 1.0 - float(np.sum(expected.predict(X_test) != y_test)) / len(y_test)
    logged = metric(result.stdout, "test:accuracy")
    assert logged == pytest.approx(accuracy, abs=1e-12)
    assert f"#test_score (algo-1) : ('accuracy', {logged!r})" in result.stdout
    assert metrics_json(root)["test:accuracy"] == logged


def test_sigterm_stops_a_job_blocked_on_a_pipe(tmp_path):
    X, y = blobs(4000, 8, seed=9)
    hp = {"k": "3", "predictor_type": "classifier", "sample_size": "1000"}
    root = write_job(tmp_path / "ml", hp, {"train": channel(mode="Pipe")})
    (root / "input" / "data").mkdir(parents=True)
    source = tmp_path / "train.pbr"
    io.write_recordio(source, X, y)
    fifo = root / "input" / "data" / "train_0"
    os.mkfifo(fifo)
    log = tmp_path / "train.log"
    writer = _pipe_writer(source, fifo, stall_after=source.stat().st_size // 3)
    try:
        with open(log, "w") as out:
            job = subprocess.Popen(
                [sys.executable, "-m", "gpuknn.cli", "train", "--ml-root", str(root)],
                stdout=out, stderr=subprocess.STDOUT, env=environment(), cwd=tmp_path)
        try:
            ready, _, _ = select.select([writer.stdout], [], [], 30)
            assert ready and writer.stdout.readline().strip() == "sent"
            deadline = time.monotonic() + 30
            while "Channel train:" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "Channel train:" in log.read_text()
            # the job took it all (a line, not select: "sent" may have buffered this one;
            # the writer's own 120 s sleep is the hang guard)
            assert writer.stdout.readline().strip() == "drained"
            assert job.poll() is None, log.read_text()

            job.send_signal(signal.SIGTERM)
            code = job.wait(timeout=60)  # a hang guard: the job stops at once, blocked or not
        finally:
            _stop(job)
    finally:
        _stop(writer)
    output = log.read_text()
    assert code != 0, output
    failure = (root / "output" / "failure").read_text()
    assert "stopped" in failure.lower() and "SIGTERM" in failure
    assert len(failure) <= 1024 and "Traceback" not in failure
    assert files_in_model(root) == []
    assert not re.search(METRIC_REGEXES["train:progress"], output)


# -- failures ------------------------------------------------------------------------------------
BASE_HP = {"k": "3", "predictor_type": "classifier", "sample_size": "500"}
TRAIN_X, TRAIN_Y = blobs(100, 4, seed=12)


def _train_file(root: Path, X: np.ndarray = TRAIN_X, y: np.ndarray | None = TRAIN_Y) -> Path:
    path = data_dir(root, "train") / "train.pbr"
    io.write_recordio(path, X, y)
    return path


def _bad_value(root: Path) -> tuple[str, ...]:
    write_job(root, {**BASE_HP, "k": "ten"})
    _train_file(root)
    return "'k'", "integer in [1, 2048]", "'ten'"


def _unknown_name(root: Path) -> tuple[str, ...]:
    write_job(root, {**BASE_HP, "sample_sise": "10"})
    _train_file(root)
    return "Unknown hyperparameter 'sample_sise'", "'sample_size'"


def _missing_train_channel(root: Path) -> tuple[str, ...]:
    write_job(root, BASE_HP, {"test": channel()})
    io.write_recordio(data_dir(root, "test") / "test.pbr", TRAIN_X, TRAIN_Y)
    return "'train' channel is required", "input/data/train"


def _missing_train_data(root: Path) -> tuple[str, ...]:
    write_job(root, BASE_HP)
    return "input/data/train", "'train' channel has no data"


def _extra_channel(root: Path) -> tuple[str, ...]:
    write_job(root, BASE_HP, {"train": channel(), "validation": channel()})
    _train_file(root)
    io.write_recordio(data_dir(root, "validation") / "v.pbr", TRAIN_X, TRAIN_Y)
    return "'validation'", "'train' (required) and 'test' (optional)"


def _corrupt_record(root: Path) -> tuple[str, ...]:
    write_job(root, BASE_HP)
    path = _train_file(root)
    data = bytearray(path.read_bytes())
    stride = len(data) // len(TRAIN_X)  # equal-size dense records
    length = int.from_bytes(data[4:8], "little")
    data[7 * stride + 8 : 7 * stride + 8 + length] = b"\xff" * length  # record 7's payload
    path.write_bytes(bytes(data))
    return str(path), "record 7", f"byte offset {7 * stride}", "not a valid Record protobuf"


def _feature_dim_mismatch(root: Path) -> tuple[str, ...]:
    write_job(root, {**BASE_HP, "feature_dim": "7"})
    _train_file(root)
    return "'feature_dim' is 7", "4 features"


def _k_above_sample(root: Path) -> tuple[str, ...]:
    write_job(root, {**BASE_HP, "k": "50", "sample_size": "20"})
    _train_file(root)
    return "'k' (50) must not exceed 'sample_size' (20)", "Lower k or raise sample_size"


def _k_above_rows(root: Path) -> tuple[str, ...]:
    write_job(root, {**BASE_HP, "k": "50", "sample_size": "500"})
    _train_file(root, TRAIN_X[:20], TRAIN_Y[:20])
    return ("k=50 but the training data has only 20 rows",)


def _nan_rows(root: Path) -> tuple[str, ...]:
    write_job(root, BASE_HP)
    X = TRAIN_X.copy()
    X[5, 2] = np.nan
    X[42, 0] = np.inf
    _train_file(root, X)
    return "NaN", ("train.pbr: record 5 (0-based; byte offset 300); record 42 (0-based; "
                   "byte offset 2520)")


def _no_labels(root: Path) -> tuple[str, ...]:
    write_job(root, BASE_HP)
    path = _train_file(root, y=None)
    return str(path.parent), "no labels"


def _test_features_mismatch(root: Path) -> tuple[str, ...]:
    """Fails after the model was written: it must be removed again, and the reason must
    say which data is at fault (the test channel's file), not only "queries"."""
    write_job(root, BASE_HP, {"train": channel(), "test": channel()})
    _train_file(root)
    io.write_recordio(data_dir(root, "test") / "test.pbr", blobs(20, 5, seed=13)[0],
                      np.zeros(20, dtype=np.float32))
    return ("input/data/test",)


def _many_problems(root: Path) -> tuple[str, ...]:
    """A reason longer than 1024 characters is cut to 1024."""
    write_job(root, {**BASE_HP, **{f"unknown_{i}": "1" for i in range(12)}, "k": "0"})
    _train_file(root)
    return "Unknown hyperparameter 'unknown_0'", "invalid hyperparameters"


def _malformed_config(root: Path) -> tuple[str, ...]:
    write_job(root, BASE_HP)
    _train_file(root)
    (root / "input" / "config" / "hyperparameters.json").write_text('{"k": "3",')
    return "hyperparameters.json", "not valid JSON"


FAILURES = [_bad_value, _unknown_name, _missing_train_channel, _missing_train_data,
            _extra_channel, _corrupt_record, _feature_dim_mismatch, _k_above_sample,
            _k_above_rows, _nan_rows, _no_labels, _test_features_mismatch, _many_problems,
            _malformed_config]


@pytest.mark.parametrize("setup", FAILURES, ids=[f.__name__.strip("_") for f in FAILURES])
def test_failures_leave_a_reason_and_no_model(tmp_path, setup):
    """Each failure: clear output/failure, non-zero exit, and a stale model/ emptied."""
    root = tmp_path / "ml"
    needles = setup(root)
    stale = KNN(k=1, predictor_type="classifier", sample_size=10, device="cpu")
    stale.fit(TRAIN_X, TRAIN_Y).fitted_model.save(root / "model")  # an earlier run's model
    assert layout.METADATA in files_in_model(root)

    result = run_train(root)

    assert_failed(result, root, *needles)
