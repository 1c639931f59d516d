"""``gpuknn transform``: batch transform without SageMaker, run as a real subprocess."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from _server import parse_predictions

import gpuknn.io
from gpuknn import KNN, KNNModel
from gpuknn.serving import transform

RECORDIO = "application/x-recordio-protobuf"


@pytest.fixture(scope="module")
def model_path(letter, tmp_path_factory):
    X, y, _, _ = letter
    model = KNN(k=5, predictor_type="classifier", sample_size=len(X), feature_dim=16).fit(X, y)
    return model.model.save(tmp_path_factory.mktemp("model") / "model.tar.gz")


@pytest.fixture(scope="module")
def model(model_path):
    return KNNModel.load(model_path)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuknn.cli", "transform", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def csv_text(X: np.ndarray) -> str:
    return "".join(",".join(f"{v:g}" for v in row) + "\n" for row in X)


def jsonl_predictions(path) -> list[float]:
    rows = parse_predictions(path.read_bytes().rstrip(b"\n"), "application/jsonlines")
    return [row["predicted_label"][0] for row in rows]


def test_csv_directory_to_jsonlines(model_path, model, letter, tmp_path):
    X = letter[2].astype(np.float32)
    inputs = tmp_path / "in"
    (inputs / "part").mkdir(parents=True)
    (inputs / "a.csv").write_text(csv_text(X[:1500]))
    (inputs / "part" / "b.csv.gz").write_bytes(gzip.compress(csv_text(X[1500:]).encode()))
    (inputs / ".hidden").write_text("not an input")
    result = run_cli("--model", str(model_path), "--input", str(inputs), "--output",
                     str(tmp_path / "out"), "--content-type", "text/csv", "--batch-rows", "700")
    assert result.returncode == 0, result.stderr
    assert "2 file(s) written, 0 skipped" in result.stdout
    assert jsonl_predictions(tmp_path / "out" / "a.csv.out") == model.predict(X[:1500]).tolist()
    got = jsonl_predictions(tmp_path / "out" / "part" / "b.csv.gz.out")
    assert got == model.predict(X[1500:]).tolist()
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "a.csv.out", "b.csv.gz.out"]


@pytest.mark.parametrize(("content_type", "accept"), [
    (RECORDIO, RECORDIO), (RECORDIO, "application/jsonlines; verbose=true"),
    ("application/jsonlines", "application/json"), ("application/json", "application/json")])
def test_formats(model, letter, tmp_path, content_type, accept):
    X = letter[2][:900].astype(np.float32)
    source = tmp_path / "input"
    if content_type == RECORDIO:
        gpuknn.io.write_recordio(source, X)
    elif content_type == "application/jsonlines":
        source.write_text("".join(json.dumps({"features": row.tolist()}) + "\n" for row in X))
    else:
        source.write_text(json.dumps({"instances": [{"features": row.tolist()} for row in X]}))
    job = transform.TransformJob(source, tmp_path / "out", content_type, accept=accept,
                                 batch_rows=400)
    report = transform.run(model, job, progress=False)
    assert report.rows == len(X)
    output = (tmp_path / "out" / "input.out").read_bytes()
    media_type = accept.split(";")[0]
    if media_type == "application/json":  # one document per batch, assembled by line
        documents = output.rstrip(b"\n").split(b"\n")
        rows = [row for doc in documents for row in parse_predictions(doc, media_type)]
        assert len(documents) == (1 if content_type == "application/json" else 3)
    else:
        rows = parse_predictions(output.rstrip(b"\n"), media_type)
    answer = model.answer(X)
    assert [row["predicted_label"][0] for row in rows] == answer.predicted_label.tolist()
    if "verbose" in accept:
        assert [row["ids"] for row in rows] == answer.ids.tolist()


def test_interrupted_run_resumes(model_path, model, letter, tmp_path):
    """A bad file stops the run after the good ones before it; once it is fixed, a rerun
    skips the finished outputs (untouched) and writes the rest. No partial file remains."""
    X = letter[2].astype(np.float32)
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i in range(4):
        (inputs / f"{i}.csv").write_text(csv_text(X[i * 100:(i + 1) * 100]))
    (inputs / "2.csv").write_text(csv_text(X[200:250]) + "1,2,x\n")
    args = ["--model", str(model_path), "--input", str(inputs), "--output", str(outputs),
            "--content-type", "text/csv", "--batch-rows", "16"]
    first = run_cli(*args)
    assert first.returncode == 2
    assert "2.csv: line 51: 3 columns; earlier lines have 16" in first.stderr
    assert sorted(p.name for p in outputs.iterdir()) == ["0.csv.out", "1.csv.out"]
    finished = {p.name: p.stat().st_mtime_ns for p in outputs.iterdir()}

    (inputs / "2.csv").write_text(csv_text(X[200:300]))
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "2 file(s) written, 2 skipped" in second.stdout
    assert {p: (outputs / p).stat().st_mtime_ns for p in finished} == finished
    for i in range(4):
        got = jsonl_predictions(outputs / f"{i}.csv.out")
        assert got == model.predict(X[i * 100:(i + 1) * 100]).tolist()
    assert not list(outputs.glob("*.partial"))


@pytest.mark.parametrize(("args", "message"), [
    (["--content-type", "application/json", "--split-type", "Line"],
     "split type 'Line' does not apply to application/json"),
    (["--content-type", "text/csv", "--accept", "text/csv"], "no CSV output"),
    (["--content-type", "text/plain"], "not supported"),
])
def test_bad_settings(model_path, tmp_path, args, message):
    (tmp_path / "in.csv").write_text("1,2\n")
    result = run_cli("--model", str(model_path), "--input", str(tmp_path / "in.csv"),
                     "--output", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_width_names_the_file(model_path, tmp_path):
    (tmp_path / "in.csv").write_text("1,2\n3,4\n")
    result = run_cli("--model", str(model_path), "--input", str(tmp_path / "in.csv"),
                     "--output", str(tmp_path / "out"), "--content-type", "text/csv")
    assert result.returncode == 2
    assert "in.csv: rows have 2 features; the model expects 16" in result.stderr
    assert not (tmp_path / "out" / "in.csv.out").exists()
