"""The pure parts of the serving, GPU, fuzzing and multi-model benchmarks
(:mod:`gpuknn.benchmark.serve_covtype`, :mod:`~gpuknn.benchmark.gpu_bench`,
:mod:`~gpuknn.benchmark.fuzz`, :mod:`~gpuknn.benchmark.multimodel_report`), on fabricated
numbers: summaries, file names and rendered tables. Nothing here is timed, and nothing
needs a GPU."""

from __future__ import annotations

import hashlib
import math
from types import SimpleNamespace

import numpy as np
import pytest

from gpuknn.benchmark import fuzz, gpu_bench, serve_covtype
from gpuknn.benchmark.multimodel_report import markdown


def _table(text: str) -> list[str]:
    """The rows of the first Markdown table, checked to be one unbroken block."""
    lines = text.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    first_gap = next((j for j, i in enumerate(rows) if i != rows[0] + j), len(rows))
    return [lines[i] for i in rows[:first_gap]]


# -- serve_covtype -----------------------------------------------------------------------------
def test_latency_summary_is_in_milliseconds():
    latencies = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    got = serve_covtype.latency_summary(latencies)
    assert got["count"] == 100
    assert math.isclose(got["mean_ms"], 50.5)
    assert math.isclose(got["p50_ms"], 50.5)
    assert math.isclose(got["p90_ms"], np.percentile(np.arange(1, 101), 90))
    assert math.isclose(got["p99_ms"], 99.01)


def test_csv_body_is_one_line_per_row_without_a_trailing_newline():
    rows = np.array([[1.0, 2.5, -3.0], [0.125, 1e-7, 4.0]], dtype=np.float32)
    assert serve_covtype.csv_body(rows) == b"1,2.5,-3\n0.125,1e-07,4"


def _serve_report(gain: float = 4.5) -> dict:
    single = {"mean_ms": 2.0, "p50_ms": 1.9, "p90_ms": 2.4, "p99_ms": 3.1,
              "requests_per_s": 500.0}
    conc = {"clients": 32, "requests_per_s": 500.0 * gain, "p50_ms": 12.0, "p99_ms": 40.0,
            "errors": ["ConnectionResetError()"]}
    return {
        "machine": {"date_utc": "2026-01-01T00:00:00+00:00",
                    "cpu": {"model": "Test CPU", "usable_cpus": 2}},
        "model": {"rows": 200_000}, "sagemaker_c5_xlarge": {
            "single_mean_ms": 15.1, "single_p90_ms": 17.2, "single_p99_ms": 21.2,
            "batch_581_mean_ms": 162.5},
        "targets": {"single_p50_ms": 5.0, "single_p99_ms": 15.0, "batch_581_mean_ms": 100.0,
                    "concurrency_gain": 4.0},
        "single": single, "batch": {"mean_ms": 60.25, "p99_ms": 70.0},
        "concurrent": conc, "concurrent_gain": gain,
        "concurrent_1_worker": dict(conc, requests_per_s=1000.0, errors=[]),
        "concurrent_1_worker_gain": 2.0,
        "in_process": {"gpuknn_1_ms": 0.5, "sklearn_1_ms": 2.0, "gpuknn_581_ms": 40.0,
                       "sklearn_581_ms": 60.0},
        "server_batches": {"batches": 1234, "rows_searched": 56789},
    }


def test_serve_render_puts_every_measure_beside_sagemaker_and_its_target():
    text = serve_covtype.render(_serve_report())
    assert text.startswith("# gpuknn serve on a covtype-shaped model (200,000 x 54, Flat, k=10)")
    assert "Test CPU, 2 usable cores" in text
    table = _table(text)
    assert table[2] == "| one row, mean | 2.00 ms | 15.1 ms | |"
    assert "| one row, p50 | 1.90 ms | | < 5 ms |" in table
    assert "| one row, p99 | 3.10 ms | 21.2 ms | < 15 ms |" in table
    assert "| 581 rows (CSV), mean | 60.2 ms | 162.5 ms | < 100 ms |" in table
    assert "| concurrency gain | 4.5x | | >= 4x |" in table
    assert "| 32 concurrent clients | 2250 req/s (p50 12.0 ms, p99 40.0 ms) | | |" in table
    assert "| concurrency gain, `--workers 1` | 2.0x | | |" in table


def test_serve_render_compares_the_in_process_peers_and_counts_errors():
    text = serve_covtype.render(_serve_report())
    assert "| 1 | 0.50 ms | 2.00 ms | 4.00x faster |" in text
    assert "| 581 | 40.00 ms | 60.00 ms | 1.50x faster |" in text
    assert "ran 1,234 searches for 56,789 rows" in text
    assert "Errors in the concurrent phases: 1." in text


def test_serve_render_reads_its_targets_from_the_report():
    report = _serve_report()
    report["targets"] = dict(report["targets"], single_p50_ms=2.5, concurrency_gain=8.0)
    table = _table(serve_covtype.render(report))
    assert "| one row, p50 | 1.90 ms | | < 2.5 ms |" in table
    assert "| concurrency gain | 4.5x | | >= 8x |" in table


# -- gpu_bench ---------------------------------------------------------------------------------
def _gpu_report(**train_predict) -> dict:
    job = {"exit_code": 0, "wall_s": 4.0, "test_accuracy": 0.9, "ran_on": "cpu"}
    tp = {"cpu_job": job, "gpu_job": dict(job, wall_s=2.0, ran_on="gpu"), "train_rows": 500_000,
          "test_rows": 58_000, "sample_size": 200_000, "job_gpu_over_cpu": 2.0,
          "cpu_predict_s": 0.5, "gpu_predict_s": 0.05, "predict_gpu_over_cpu": 10.0}
    tp.update(train_predict)
    return {
        "environment": {"gpu": "card", "compute_capability": "9.0", "memory_gib": 79.2,
                        "driver": 13000, "runtime": 12080, "cupy": "13.6", "date_utc": "now"},
        "sizes": {"base": 1_000_000, "queries": 10_000, "dim": 128, "rows": 1_000_000},
        "targets": dict(gpu_bench.TARGETS),
        "floors": {"fp32_gemm_tflops": 50.0, "bandwidth_gb_s": 3000.0},
        "search": {"gpu_s": 0.08, "gemm_floor_s": 0.05, "x_floor": 1.6, "cpu_s_scaled": 20.0,
                   "gpu_over_cpu": 250.0, "ids_equal_share": 0.995, "faiss_gpu_flat_s": 0.1},
        "fjlt": {"seconds": 0.002, "gb_s": 2250.0, "bandwidth_share": 0.75,
                 "max_abs_error_vs_twin": 1e-6},
        "vote_mean": {"vote_s": 1e-3, "mean_s": 2e-3, "search_s_same_queries": 8.0,
                      "vote_share_of_search": 1.25e-4, "mean_share_of_search": 2.5e-4},
        "train_predict": tp,
    }


def test_gpu_render_is_one_table_with_every_target():
    text = gpu_bench.render(_gpu_report())
    assert text.startswith("# GPU benchmarks: card (sm 9.0, 79.2 GiB), driver 13000, "
                           "CUDA runtime 12080, CuPy 13.6; now")
    table = _table(text)
    assert len(table) == 2 + 5 + 2  # header, the five kernel rows, train and predict
    assert table[2].endswith("| 80.0 ms | GEMM floor 50.0 ms | 1.60x floor | <= 2x |")
    assert table[3].endswith("| 20.0 s | | GPU 250x faster | >= 50x |")
    assert table[4].endswith("| 2.00 ms, 2250 GB/s | 3000 GB/s | 75% of bandwidth | >= 50% |")
    assert table[5].endswith("| 1.00 ms | search 8000 ms | 0.01% | < 5% |")
    assert table[6] == "| mean, the same | 2.00 ms | | 0.03% | < 5% |"
    assert "GPU 2.00 s, accuracy 0.9 | CPU path 4.00 s, accuracy 0.9 | GPU 2.00x" in table[7]
    assert table[8] == ("| predict 10,000 rows of that model | GPU 50.0 ms | CPU path 500.0 ms "
                        "| GPU 10.00x | |")
    assert "GpuIndexFlatL2 on the same search: 100.0 ms (gpuknn's CuPy search is 1.25x" in text
    assert "equal on 99.5% of 200 query rows" in text


def test_gpu_render_without_targets_uses_the_issues_goals():
    report = _gpu_report()
    del report["targets"]
    assert gpu_bench.render(report) == gpu_bench.render(_gpu_report())


def test_gpu_render_says_why_train_was_not_compared():
    failed = _gpu_report(gpu_job={"exit_code": 1})
    for key in ("job_gpu_over_cpu", "predict_gpu_over_cpu", "gpu_predict_s"):
        failed["train_predict"].pop(key)
    assert ("| `gpuknn train` covtype-shaped | not compared: cpu_job exit 0, gpu_job exit 1 "
            "(see the JSON) | | | |") in gpu_bench.render(failed)
    on_cpu = _gpu_report(gpu_job={"exit_code": 0, "wall_s": 4.0, "ran_on": "cpu"})
    assert "the GPU job ran on cpu: no comparison" in gpu_bench.render(on_cpu)
    no_faiss = _gpu_report()
    no_faiss["search"]["faiss_gpu_flat_s"] = None
    assert "faiss-gpu is not installed here" in gpu_bench.render(no_faiss)


def test_gpu_environment_reads_the_card_and_the_host_record():
    runtime = SimpleNamespace(
        getDeviceProperties=lambda device: {"name": b"NVIDIA H100", "major": 9, "minor": 0,
                                            "totalGlobalMem": 80 * 2**30},
        driverGetVersion=lambda: 12040, runtimeGetVersion=lambda: 12030)
    cp = SimpleNamespace(cuda=SimpleNamespace(runtime=runtime,
                                              Device=lambda: SimpleNamespace(id=0)),
                         __version__="13.0")
    env = gpu_bench.environment(cp, {"python": "3.12.1", "date_utc": "today"})
    assert env == {"gpu": "NVIDIA H100", "compute_capability": "9.0", "memory_gib": 80.0,
                   "driver": 12040, "runtime": 12030, "cupy": "13.0",
                   "numpy": np.__version__, "python": "3.12.1", "date_utc": "today"}


@pytest.mark.parametrize(("output", "device"), [
    ("2026-01-01 00:00:00,000 INFO Host algo-1 of ['algo-1']; device gpu\n", "gpu"),
    ("INFO Host algo-1 of ['algo-1']; device cpu", "cpu"),
    ("no such line", None)])
def test_ran_on_reads_the_train_log(output, device):
    assert gpu_bench.ran_on(output) == device


# -- fuzz --------------------------------------------------------------------------------------
def _frame(payload: bytes) -> bytes:
    return b"[" + payload + b"]"


def test_regression_file_names_each_target_as_the_suite_replays_it():
    body = b"1,2,3"
    digest = hashlib.sha256(body).hexdigest()[:12]
    assert fuzz.regression_file("decoders", (body, "text/csv"), _frame) == (
        f"body--text+csv--{digest}.bin", body)
    assert fuzz.regression_file("invocations", (body, "application/json"), _frame)[0] == (
        f"body--application+json--{digest}.bin")
    framed = b"[ab][c]"
    assert fuzz.regression_file("recordio", [b"ab", b"c"], _frame) == (
        f"body--application+x-recordio-protobuf--{hashlib.sha256(framed).hexdigest()[:12]}"
        ".bin", framed)
    assert fuzz.regression_file("archives", body, _frame)[0] == f"archive--model--{digest}.bin"


def test_save_writes_the_case_where_the_helpers_say(tmp_path):
    helpers = SimpleNamespace(frame=_frame, REGRESSIONS=tmp_path / "data" / "fuzz")
    path = fuzz.save("decoders", (b"\xff\x00", "application/jsonlines"), helpers)
    assert path.parent == helpers.REGRESSIONS
    assert path.name.startswith("body--application+jsonlines--")
    assert path.read_bytes() == b"\xff\x00"


def test_report_line_gives_the_rate_and_the_outcome(tmp_path):
    assert fuzz.report_line("decoders", 500, 2.0, None) == (
        "decoders          500 cases in    2.0 s =    250.0 cases/s: no failure")
    saved = tmp_path / "x.bin"
    assert fuzz.report_line("recordio", 3, 0.0, saved).endswith(f"FAILED, saved {saved}")


def test_targets_are_the_scripts_choices():
    helpers = SimpleNamespace(hostile_bodies=lambda: "bodies", record_runs=lambda: "runs",
                              decode_or_refuse=lambda body, kind: (body, kind),
                              recordio_paths_agree=len)
    targets = fuzz.targets(helpers, start_server=None)
    assert tuple(sorted(targets)) == fuzz.TARGET_NAMES
    with targets["decoders"]() as (strategy, check):
        assert strategy == "bodies" and check((b"x", "text/csv")) == (b"x", "text/csv")
    with targets["recordio"]() as (strategy, check):
        assert strategy == "runs" and check is len


# -- multimodel --------------------------------------------------------------------------------
def _spread(median: float) -> dict:
    return {"median": median, "q1": median * 0.9, "q3": median * 1.1}


def test_multimodel_markdown_rows_against_the_goals():
    many = {"models": 1000, "workers": 2, "added_pss_bytes": 300 * 2**20,
            "files_bytes": 280 * 2**20, "resident_ratio": 300 / 280, "load_all_s": 12.34,
            "load_each_s": _spread(0.012), "accounted_ratio": 1.05,
            "accounted_over_resident": 0.98, "invoke_random_s": _spread(0.002),
            "invoke_single_s": _spread(0.0018)}
    invoke = {"multi_p50_s": _spread(0.002), "single_p50_s": _spread(0.0019),
              "ratio": _spread(1.05)}
    report = {"machine": {"python": "3.12", "date_utc": "today",
                          "cpu": {"model": "Test CPU", "usable_cpus": 2}},
              "sizes": {"big": 1_000_000},
              "load": {"model_bytes": 512 * 2**20, "server_s": _spread(0.6),
                       "load_s": _spread(0.5), "ratio": _spread(1.2),
                       "server_cold_s": _spread(0.7), "load_cold_s": _spread(0.55),
                       "cold_ratio": _spread(1.27)},
              "invoke": {"1": invoke, "581": invoke}, "many": [many]}
    text = markdown(report)
    assert text.startswith("# Multi-model serving\n\nTest CPU, 2 usable cores, Python 3.12")
    table = _table(text)
    assert table[2] == ("| load 1,000,000 x 128 Flat (512 MiB) | 0.600 s | KNNModel.load "
                        "0.500 s | 1.20x (1.08-1.32) | <= 1.5x |")
    assert table[4].startswith("| invoke, 1 row(s), p50 | 2.00 ms | single-model server 1.90 ms")
    assert table[4].endswith("| <= 1.1x |")
    assert table[6] == ("| 1,000 models, 2 worker(s): resident (PSS added) | 300 MiB | their "
                        "files 280 MiB | 1.07x | <= 1.2x |")
    assert "| 1,000 | 2 | 12.3 s | 12.0 ms | 1.05x | 0.98x | 2.00 ms | 1.80 ms |" in text
