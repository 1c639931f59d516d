"""The memory harness: ``gpuknn bench --memory`` and :mod:`gpuknn.benchmark.memory` with
the modules it runs (``fit_memory``, ``server_memory``, ``gpu_memory``, ``procmem``).

Outputs are checked for shape and sense (positive, finite, one buffer counted once), never
for speed, and memory only where an allocation's size is certain.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import ClassVar

import numpy as np
import pytest

from gpuknn import KNN
from gpuknn.benchmark import fit_memory as fits
from gpuknn.benchmark import gpu_memory, measure, procmem, server_memory
from gpuknn.benchmark import memory as harness

# glibc then maps every allocation above 128 KiB on its own, and unmaps it when freed, so
# the resident memory of a small index is its size (no reuse of freed heap).
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuknn.cli", "bench", *args],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **FIXED_MMAP})


def test_bench_memory_adds_the_columns(tmp_path):
    result = bench("--preset", "tiny", "--memory", "--index-type", "faiss.Flat", "--peers",
                   "faiss", "--min-time", "0.05", "--latency-budget", "0.05",
                   "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    folder, = tmp_path.iterdir()
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert ("gpuknn", "faiss.Flat") in {(row["engine"], row["index"]) for row in rows}
    for row in rows:
        stats = row["memory"]
        assert stats["raw_bytes"] == 5_000 * 32 * 4  # the tiny preset's float32 base
        for key in ("held_ratio", "peak_ratio"):
            assert math.isfinite(stats[key]) and stats[key] > 0, (row["engine"], stats)
        assert stats["peak_bytes"] >= stats["held_bytes"]
    table = (folder / "results.md").read_text()
    assert "| model ÷ raw | build peak ÷ raw |" in table
    assert table.count("\n| ") == len(rows) + 1
    assert "`model ÷ raw` is the resident memory" in table


def test_without_memory_the_table_is_unchanged(tmp_path):
    result = bench("--preset", "tiny", "--index-type", "faiss.Flat", "--peers", "",
                   "--min-time", "0.05", "--latency-budget", "0.05", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    folder, = tmp_path.iterdir()
    row, = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert "memory" not in row
    assert "model ÷ raw" not in (folder / "results.md").read_text()


def test_peak_memory_keeps_start_peak_and_end():
    with measure.PeakMemory(collect=True) as memory:
        held = np.ones(40 << 20, dtype=np.uint8)  # touched: resident
        passing = np.ones(40 << 20, dtype=np.uint8)
        memory.wait_for_samples(2)  # a sample taken since: both arrays resident
        del passing
    assert memory.held_bytes >= 35 << 20
    assert memory.added_bytes >= 75 << 20  # both were resident at once
    assert memory.peak >= memory.end >= memory.start > 0
    ratios = measure.memory_ratios(memory, held.nbytes)
    assert ratios["held_ratio"] == pytest.approx(memory.held_bytes / held.nbytes)
    assert ratios["peak_ratio"] >= ratios["held_ratio"]


class _AllocatesWhenCollected:
    """A reference cycle whose finaliser allocates and keeps 40 MiB: only the garbage
    collector at PeakMemory's exit runs it, after the last sample."""

    kept: ClassVar[list[np.ndarray]] = []

    def __init__(self):
        self.cycle = self

    def __del__(self):
        self.kept.append(np.ones(40 << 20, dtype=np.uint8))


def test_peak_is_never_below_what_the_block_holds():
    """CI once saw held 712,704 > peak 708,608 bytes: the exit's collection touched a page
    after the last sample. Made large here, the end must still count in the peak."""
    try:
        with measure.PeakMemory(collect=True) as memory:
            _AllocatesWhenCollected()
        assert memory.held_bytes >= 35 << 20
        assert memory.peak >= memory.end
        assert memory.added_bytes >= memory.held_bytes
    finally:
        _AllocatesWhenCollected.kept.clear()


def test_fit_memory_in_a_fresh_process(monkeypatch):
    """faiss's IndexFlatL2 holds one copy of the base: its held ratio is about 1."""
    pytest.importorskip("faiss")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", FIXED_MMAP["MALLOC_MMAP_THRESHOLD_"])
    theirs = fits.fit_memory("covtype-like", 30_000, engine="faiss")
    assert theirs["raw_bytes"] == 30_000 * 54 * 4
    assert 0.9 <= theirs["held_ratio"] <= 1.2
    assert theirs["peak_ratio"] >= theirs["held_ratio"] - 0.01
    mine = fits.fit_memory("covtype-like", 30_000)
    for key in ("held_ratio", "held_trimmed_ratio", "peak_ratio", "peak_sampled_ratio"):
        assert math.isfinite(mine[key]) and mine[key] > 0
    assert mine["peak_ratio"] >= mine["held_ratio"]
    assert mine["arrays"][0]["nbytes"] >= mine["raw_bytes"]  # the base, float32, comes first


def test_model_arrays_count_each_buffer_once(rng):
    X = rng.standard_normal((3_000, 16)).astype(np.float32)
    model = KNN(k=3, predictor_type="classifier", sample_size=len(X), device="cpu").fit(
        X, np.arange(len(X)) % 3).model
    model.alias = model.labels[10:]  # a view of a buffer already counted
    arrays = fits.model_arrays(model)
    assert [entry["nbytes"] for entry in arrays] == sorted(
        (entry["nbytes"] for entry in arrays), reverse=True)
    assert arrays[0]["nbytes"] >= X.nbytes and arrays[0]["dtype"] == "float32"
    assert not any(entry["path"] == "model.alias" for entry in arrays)


def test_load_time_reports_both_sides(tmp_path, rng):
    X = rng.standard_normal((2_000, 8)).astype(np.float32)
    path = KNN(k=3, predictor_type="classifier", sample_size=len(X), device="cpu").fit(
        X, np.arange(len(X)) % 2).model.save(tmp_path / "model")
    result = fits.load_time(path, rounds=2)
    assert result["model_bytes"] == sum(p.stat().st_size for p in path.iterdir())
    for key in ("load_s", "read_s", "first_query_s", "ratio", "ratio_with_query"):
        assert result[key]["samples"] == 2 and result[key]["median"] > 0


def test_gpu_accounting_holds_the_base_once():
    gpu = gpu_memory.gpu_accounting(128, 16 * 10**9)
    base_once, old = gpu["base_once_largest_n"], gpu["old_layout_largest_n"]
    assert gpu_memory.base_once_bytes(base_once, 128) <= 16 * 10**9
    assert gpu_memory.base_once_bytes(base_once + 1, 128) > 16 * 10**9
    assert gpu_memory.old_layout_bytes(old, 128) <= 16 * 10**9
    assert gpu_memory.old_layout_bytes(old + 1, 128) > 16 * 10**9
    assert 1.9 < base_once / old < 2.0  # the base once instead of twice
    assert 0 < gpu["largest_n"] and gpu["device_bytes_at_largest"] <= 16 * 10**9
    assert gpu_memory.largest_fitting(lambda n: 3 * n + 10, 100) == 30
    assert gpu_memory.largest_fitting(lambda n: 1000, 100) == 0


def test_report_says_met_not_met_and_not_measured():
    results = _fake_results(held=1.1, peak=2.5, load=None, pss=1.1)
    rows = {row["goal"]: row for row in harness.goal_rows(results)}
    assert rows["held"]["met"] is True and rows["peak"]["met"] is False
    assert rows["load"]["met"] is None and rows["pss"]["met"] is True
    assert rows["held"]["peer"] == 1.0
    text = harness.report_markdown(results)
    assert "| 1. resident memory a fitted Flat model adds ÷ raw | sift-like | <= 1.15x | " \
           "1.10x | 1.00x | met |" in text
    assert "| 1. peak during fit ÷ raw | sift-like | <= 2.0x | 2.50x | 1.00x | **not met** |" \
        in text
    assert "not measured" in text and "## GPU" in text


def _fake_results(*, held: float, peak: float, load: float | None,
                  pss: float | None) -> dict:
    def fit(engine: str, held: float, peak: float) -> dict:
        return {"engine": engine, "index": "faiss.Flat", "held_ratio": held,
                "held_trimmed_ratio": held, "peak_ratio": peak, "peak_hwm_ratio": peak,
                "peak_sampled_ratio": peak, "build_s": 1.0}

    data = {"name": "sift-like", "n": 1000, "dim": 128, "raw_bytes": 512_000,
            "fits": [fit("gpuknn", held, peak), fit("faiss", 1.0, 1.0)],
            "load": None if load is None else {"ratio": {"median": load}},
            "serve": None if pss is None else {"pss_ratio": pss, "rss_ratio": pss,
                                                "runs": {}}}
    return {"datasets": [data], "gpu": gpu_memory.gpu_accounting()}


def test_stop_server_ends_the_whole_tree():
    """A child that outlives its parent's SIGTERM is killed too."""
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
              "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while len(procmem.process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = procmem.process_tree(parent.pid)
    assert len(tree) == 2
    procmem.stop_server(parent, timeout_s=10)
    assert parent.returncode is not None
    for pid in tree[1:]:
        _wait_gone(pid)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":  # killed, waiting for init to reap it
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs")


@pytest.mark.slow
def test_server_memory_of_one_and_two_workers(tmp_path, rng):
    X = rng.standard_normal((5_000, 8)).astype(np.float32)
    path = KNN(k=3, predictor_type="classifier", sample_size=len(X), device="cpu").fit(
        X, np.arange(len(X)) % 2).model.save(tmp_path / "model")
    result = server_memory.server_memory(path, 8, log_dir=tmp_path / "logs")
    one, two = result["runs"]["1"], result["runs"]["2"]
    assert len(one["processes"]) == 1 and len(two["processes"]) >= 3  # supervisor + 2
    for run in (one, two):
        assert run["pss_bytes"] > 0 and run["rss_bytes"] >= run["pss_bytes"]
        for process in run["processes"]:
            assert not os.path.exists(f"/proc/{process['pid']}/cmdline") or \
                open(f"/proc/{process['pid']}/cmdline").read() == ""
    assert result["pss_ratio"] == pytest.approx(two["pss_bytes"] / one["pss_bytes"])
