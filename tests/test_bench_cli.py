"""``gpuknn bench``: the tiny preset end to end (outputs checked for shape, never for speed),
and the harness's recall and accuracy against an independent numpy computation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _compare import reference_knn

from gpuknn import _backend
from gpuknn.benchmark import engines, measure
from gpuknn.benchmark.presets import Dataset
from gpuknn.datasets.synthetic import clustered

FIELDS = {"dataset", "engine", "index", "device", "settings", "k", "build_s", "queries_per_s",
          "search_s", "recall", "peak_host_mib_added", "latency", "accuracy", "environment",
          "throughput"}


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuknn.cli", "bench", *args],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = bench("--preset", "tiny", "--latency-budget", "0.1", "--min-time", "0.2",
                   "--devices", "all", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    folders = list(out.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("tiny-")
    assert f"results in {folders[0]}/" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr  # faiss's k-means warnings
    return folders[0]


def test_tiny_preset_writes_every_output(tiny_run):
    rows = [json.loads(line) for line in (tiny_run / "results.jsonl").read_text().splitlines()]
    expected = {("gpuknn", index) for index in engines.INDEX_TYPES}
    expected |= {("faiss", index) for index in engines.INDEX_TYPES}
    expected |= {(peer, index) for peer, index in (("sklearn", "brute"), ("hnswlib", "HNSW"))
                 if engines.available(peer)}
    assert {(row["engine"], row["index"]) for row in rows} == expected
    for row in rows:
        assert FIELDS <= set(row), FIELDS - set(row)
        assert 0.0 <= row["recall"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
        assert row["queries_per_s"] > 0 and row["build_s"] >= 0
        assert set(row["latency"]) == {"1", "64", "500"}  # 4096 capped at the 500 queries
        assert row["throughput"]["samples"] >= 5
        assert row["throughput"]["q1"] <= row["queries_per_s"] <= row["throughput"]["q3"]
        assert ("gpuknn_ratio" in row) == (row["engine"] != "gpuknn")
        assert row["dataset"] == {"name": "tiny", "n_base": 5000, "dim": 32, "n_queries": 500,
                                  "labelled": True}
        assert {"cpu", "cores", "blas", "versions"} <= set(row["environment"])
    exact = [row for row in rows if row["index"] in ("faiss.Flat", "brute")]
    assert all(row["recall"] == 1.0 for row in exact)  # exact engines find exact neighbours
    table = (tiny_run / "results.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # the header and one row per setting
    assert "p50 / p99 ms, 500 queries" in table and "4,096" not in table


def test_devices_writes_where_the_model_would_go(tiny_run):
    """--devices: the placement on this machine's GPUs (none in CI, and it says so) and
    the rows each documented instance's GPUs hold for the data's 32 dimensions."""
    text = (tiny_run / "placement.md").read_text()
    assert "Placement of 5,000 x 32 on" in text
    assert "| ml.p3.16xlarge | 8 | 16 GB V100 |" in text
    if not _backend.has_gpu():
        assert "no GPU (none is visible)" in text and "| faiss.Flat | replicas" not in text
    else:
        assert "| faiss.Flat | replicas | 1 |" in text  # 5,000 rows fit any GPU


def test_tiny_preset_draws_both_plots(tiny_run):
    pytest.importorskip("matplotlib")
    for name in ("throughput_vs_recall.png", "latency_vs_batch.png"):
        data = (tiny_run / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_recall_and_accuracy_against_numpy(rng):
    """The harness's ground truth, recall and vote against a float64 numpy brute force."""
    X, y = clustered(3_000, 12, 4, seed=3)
    Q, y_q = X[2_800:], y[2_800:]
    X, y = X[:2_800], y[:2_800]
    _, want, clear = reference_knn(X, Q, 10)
    exact = measure.exact_neighbours(X, Q, 10)
    np.testing.assert_array_equal(np.sort(exact[clear], axis=1), np.sort(want[clear], axis=1))
    assert measure.recall_at_k(want, want) == 1.0
    damaged = want.copy()
    damaged[:, -3:] = -1  # three of ten neighbours missed on every row
    assert measure.recall_at_k(damaged, want) == pytest.approx(0.7)
    labels = y[want]
    votes = np.array([np.bincount(row.astype(int), minlength=4).argmax() for row in labels])
    assert measure.vote_accuracy(want, y, y_q) == pytest.approx(np.mean(votes == y_q))


def test_faiss_peer_pads_for_pq_like_gpuknn(rng):
    pytest.importorskip("faiss")
    data = Dataset("odd", rng.standard_normal((3_000, 54)).astype(np.float32),
                   rng.standard_normal((20, 54)).astype(np.float32))
    peer = engines.Faiss("faiss.IVFPQ", {"nlists": 8, "nprobe": 8, "pq_m": 8})
    peer.build(data.X)  # 54 is not a multiple of 8: padded to 56, as gpuknn pads
    assert peer.search(data.Q, 5).shape == (20, 5)


def test_bad_options_fail_at_once_with_every_problem(tmp_path):
    """Before any work: no index is built, no folder written, no traceback."""
    result = bench("--preset", "tiny", "--k", "0", "--index-type", "faiss.HNSW",
                   "--peers", "faiss,annoy", "--min-time", "-1", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "4 invalid options:" in result.stderr
    for needle in ("--k must be an integer in [1, 2048]; got 0", "--index-type faiss.HNSW",
                   "--peers annoy", "--min-time must be a positive number"):
        assert needle in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()
    assert "exact neighbours" not in result.stdout


def test_k_above_the_rows_is_named(tmp_path):
    data = tmp_path / "small.csv"
    data.write_text("".join(f"{i % 2},{i},{i * 2}\n" for i in range(30)))
    result = bench("--data", str(data), "--k", "40", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "--k is 40 but the data has only 29 base rows" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def test_missing_peers_and_reruns_are_said(tmp_path, monkeypatch):
    from gpuknn.benchmark import runner

    monkeypatch.setattr(engines, "available", lambda peer: peer == "faiss")
    args = runner.argparse.Namespace(index_type="all", peers="sklearn,faiss,hnswlib")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        index_types, peers = runner._available(args)
    assert peers == ["faiss"] and index_types == engines.INDEX_TYPES
    assert "skipping the sklearn peer: not installed (pip install 'gpuknn[bench]'" in \
        printed.getvalue()
    assert "skipping the hnswlib peer" in printed.getvalue()
    first, second = runner._run_folder(tmp_path, "tiny"), runner._run_folder(tmp_path, "tiny")
    assert first != second and first.is_dir() and second.is_dir()


def test_gpuknn_and_faiss_share_a_colour_per_index():
    from gpuknn.benchmark import report

    for index in engines.INDEX_TYPES:
        mine = report._style({"engine": "gpuknn", "index": index})
        theirs = report._style({"engine": "faiss", "index": index})
        assert mine[0] == theirs[0] and mine[1] != theirs[1]
    colours = {report._style({"engine": "gpuknn", "index": i})[0] for i in engines.INDEX_TYPES}
    assert len(colours) == len(engines.INDEX_TYPES)


def test_summaries_and_paired_ratios():
    stats = measure.summary([10.0, 11.0, 12.0, 13.0, 100.0])
    assert stats["median"] == 12.0 and stats["q1"] == 11.0 and stats["q3"] == 13.0
    assert stats["spread"] == pytest.approx(2 / 12)
    # a machine that halves its speed in round 3 moves both engines: the ratio holds
    ratio = measure.paired_ratio([20.0, 20.0, 10.0, 10.0], [10.0, 10.0, 5.0, 5.0])
    assert ratio["median"] == 2.0 and ratio["spread"] == 0.0
    assert measure.batch_sizes(500) == [1, 64, 500]
    assert measure.batch_sizes(10) == [1, 10]
