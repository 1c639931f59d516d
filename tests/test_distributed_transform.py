"""``gpuknn transform`` on Ray Data: the same bytes as the single-process transform.

One local Ray cluster (2 CPUs) serves the whole module; each run starts its own pool of
actors on it.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import gpuknn.io
from gpuknn import KNN, KNNModel
from gpuknn.distributed import transform as distributed
from gpuknn.errors import ClientError, DataError, ModelFileError
from gpuknn.serving import transform

ray = pytest.importorskip("ray")

RECORDIO = "application/x-recordio-protobuf"
# Six inputs in nested folders, of uneven sizes: most take several batches of BATCH_ROWS.
NAMES = ("a", "b", "sub/c", "sub/d", "sub/deep/e", "z")
ROWS = (120, 301, 77, 250, 64, 199)
BATCH_ROWS = 100
FORMATS = [("text/csv", "application/jsonlines"), (RECORDIO, RECORDIO),
           ("application/jsonlines", "application/jsonlines; verbose=true")]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    """A cluster of this module's own: address "local", since a bare ``ray.init()``
    joins any cluster that ``ray start`` runs on the machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False)
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def model_path(letter, tmp_path_factory):
    X, y = letter[0][:3000], letter[1][:3000]
    model = KNN(k=5, predictor_type="classifier", sample_size=len(X), feature_dim=16).fit(X, y)
    return model.model.save(tmp_path_factory.mktemp("model") / "model.tar.gz")


@pytest.fixture(scope="module")
def model(model_path):
    return KNNModel.load(model_path, device="cpu")


@pytest.fixture(scope="module")
def queries(letter):
    return letter[2].astype(np.float32)


def csv_text(X: np.ndarray) -> str:
    return "".join(",".join(f"{v:g}" for v in row) + "\n" for row in X)


def write_input(path, X: np.ndarray, content_type: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if content_type == RECORDIO:
        gpuknn.io.write_recordio(path, X)
    elif content_type == "text/csv":
        path.write_text(csv_text(X))
    else:
        path.write_text("".join(json.dumps({"features": row.tolist()}) + "\n" for row in X))


def make_inputs(root, X: np.ndarray, content_type: str) -> None:
    """The six input files of NAMES; the second one gzipped."""
    start = 0
    for name, rows in zip(NAMES, ROWS, strict=True):
        write_input(root / name, X[start:start + rows], content_type)
        start += rows
    (root / "b").write_bytes(gzip.compress((root / "b").read_bytes()))


def outputs(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def job_for(inputs, output, content_type: str, accept: str) -> transform.TransformJob:
    return transform.TransformJob(inputs, output, content_type, accept=accept,
                                  batch_rows=BATCH_ROWS)


def single_process(model, inputs, output, content_type: str, accept: str) -> dict[str, bytes]:
    report = transform.run(model, job_for(inputs, output, content_type, accept),
                           progress=False)
    assert len(report.written) == len(NAMES)
    return outputs(output)


@pytest.mark.parametrize(("content_type", "accept"), FORMATS)
def test_same_bytes_as_single_process(model_path, model, queries, tmp_path, content_type,
                                      accept):
    inputs = tmp_path / "in"
    make_inputs(inputs, queries, content_type)
    expected = single_process(model, inputs, tmp_path / "ref", content_type, accept)
    assert sorted(expected) == sorted(f"{name}.out" for name in NAMES)

    job = job_for(inputs, tmp_path / "out", content_type, accept)
    report = distributed.run(model_path, job, workers=2, device="cpu")
    assert report.rows == sum(ROWS)
    assert report.written == [tmp_path / "out" / f"{name}.out" for name in NAMES]
    assert report.skipped == []
    assert outputs(tmp_path / "out") == expected


@pytest.mark.parametrize(("content_type", "accept"), FORMATS)
def test_resume_rewrites_only_missing_outputs(model_path, model, queries, tmp_path,
                                              content_type, accept):
    inputs, out = tmp_path / "in", tmp_path / "out"
    make_inputs(inputs, queries, content_type)
    expected = single_process(model, inputs, tmp_path / "ref", content_type, accept)
    single_process(model, inputs, out, content_type, accept)
    removed = ["b.out", "sub/deep/e.out"]
    for name in removed:
        (out / name).unlink()
    (out / "sub/deep/e.out.partial").write_bytes(b"left by a stopped run")
    kept = {name: (out / name).stat().st_mtime_ns for name in expected if name not in removed}

    report = distributed.run(model_path, job_for(inputs, out, content_type, accept),
                             device="cpu")
    assert report.written == [out / name for name in removed]
    assert report.skipped == [out / name for name in kept]
    assert report.rows == ROWS[1] + ROWS[4]
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert outputs(out) == expected


def test_nothing_to_do_starts_no_actor(model_path, model, queries, tmp_path):
    inputs = tmp_path / "in"
    make_inputs(inputs, queries, "text/csv")
    expected = single_process(model, inputs, tmp_path / "out", "text/csv", "application/json")
    job = job_for(inputs, tmp_path / "out", "text/csv", "application/json")
    report = distributed.run(model_path, job)
    assert (report.written, report.rows, len(report.skipped)) == ([], 0, len(NAMES))
    assert outputs(tmp_path / "out") == expected


@pytest.fixture
def no_log_records():
    """No log records: Ray Data logs a failure with its exception, whose traceback holds
    the actors' handles, and pytest's log capture would keep them (and so the actors and
    their CPUs) alive to the end of the test."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.usefixtures("no_log_records")
def test_bad_file_fails_the_run_with_its_error(model_path, model, queries, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    make_inputs(inputs, queries, "text/csv")
    expected = single_process(model, inputs, tmp_path / "ref", "text/csv",
                              "application/jsonlines")
    bad = inputs / "sub" / "d"
    bad.write_text(csv_text(queries[:40]) + "1,2,3\n" + csv_text(queries[40:60]))

    job = job_for(inputs, out, "text/csv", "application/jsonlines")
    with pytest.raises(DataError) as caught:
        distributed.run(model_path, job, workers=2, device="cpu")
    assert type(caught.value) is DataError  # gpuknn's own, not a RayTaskError(DataError)
    assert str(caught.value) == f"{bad}: line 41: 3 columns; earlier lines have 16"
    written = outputs(out)
    assert "sub/d.out" not in written
    assert not [name for name in written if name.endswith(transform.PARTIAL_SUFFIX)]
    assert written == {name: expected[name] for name in written}
    # The failed run's actors give their CPUs back (else the next run would wait).
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2


def test_broken_model_fails_with_its_error(queries, tmp_path):
    make_inputs(tmp_path / "in", queries, "text/csv")
    broken = tmp_path / "model.tar.gz"
    broken.write_bytes(b"not a model")
    job = job_for(tmp_path / "in", tmp_path / "out", "text/csv", "application/jsonlines")
    with pytest.raises(ModelFileError) as caught:
        distributed.run(broken, job, device="cpu")
    assert type(caught.value) is ModelFileError
    assert str(caught.value).startswith(f"{broken}: ")
    assert outputs(tmp_path / "out") == {}


def test_bad_settings_fail_before_any_work(model_path, tmp_path, monkeypatch):
    def no_cluster(*args, **kwargs):
        pytest.fail("connected to Ray before checking the settings")

    monkeypatch.setattr(distributed, "connected", no_cluster)
    (tmp_path / "in.csv").write_text("1,2\n")
    job = transform.TransformJob(tmp_path / "in.csv", tmp_path / "out", "application/json",
                                 split_type="Line")
    with pytest.raises(ClientError, match="does not apply to application/json"):
        distributed.run(model_path, job)
    job = transform.TransformJob(tmp_path / "in.csv", tmp_path / "out", "text/csv",
                                 accept="text/csv")
    with pytest.raises(ClientError, match="no CSV output"):
        distributed.run(model_path, job)
    assert not (tmp_path / "out").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # RAY_ADDRESS=local: ray.init() without an address would join a cluster that
    # `ray start` runs on this machine (other tests' multi-host clusters) instead of
    # starting the command's own.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "local"}
    return subprocess.run([sys.executable, "-m", "gpuknn.cli", "transform", *args],
                          capture_output=True, text=True, timeout=120, check=False, env=env)


def test_cli_ray_address_local(model_path, queries, tmp_path):
    inputs = tmp_path / "in"
    make_inputs(inputs, queries, "text/csv")
    args = ["--model", str(model_path), "--input", str(inputs), "--content-type", "text/csv",
            "--accept", "application/jsonlines; verbose=true", "--batch-rows", "64",
            "--device", "cpu"]
    single = run_cli(*args, "--output", str(tmp_path / "ref"))
    assert single.returncode == 0, single.stderr
    on_ray = run_cli(*args, "--output", str(tmp_path / "out"), "--ray-address", "local",
                     "--ray-workers", "2")
    assert on_ray.returncode == 0, on_ray.stderr
    assert f"{len(NAMES)} file(s) written, 0 skipped" in on_ray.stdout
    assert f"{sum(ROWS)} rows answered" in on_ray.stdout
    assert outputs(tmp_path / "out") == outputs(tmp_path / "ref")
    assert len(outputs(tmp_path / "out")) == len(NAMES)


def test_cli_ray_workers_needs_ray_address(model_path, tmp_path, capsys):
    from gpuknn.cli import main

    (tmp_path / "in.csv").write_text("1,2\n")
    code = main(["transform", "--model", str(model_path), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out"), "--content-type", "text/csv",
                 "--ray-workers", "2"])
    assert code == 2
    assert "--ray-workers needs --ray-address" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
