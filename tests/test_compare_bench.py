"""The pure parts behind ``bench/compare.py`` and ``bench/io_compare.py``: the synthetic sets
they draw, the timing loop's bookkeeping, the result checks, the rows and ratios, and the
Markdown writers, on small fabricated inputs (nothing here asserts a time)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from gpuknn.benchmark import (
    cpu_compare,
    cpu_compare_report,
    io_compare,
    io_compare_checks,
    io_compare_report,
    measure,
    timed,
)
from gpuknn.datasets.synthetic import gaussian, gaussian_mixture
from gpuknn.io import write_recordio


# ---------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gaussian_is_seeded_and_of_one_dtype(dtype):
    X, y = gaussian(300, 7, dtype, seed=1)
    assert X.shape == (300, 7) and y.shape == (300,)
    assert X.dtype == y.dtype == np.dtype(dtype)
    assert set(np.unique(y)) <= set(range(10)) and len(np.unique(y)) == 10
    again, _ = gaussian(300, 7, dtype, seed=1)
    other, _ = gaussian(300, 7, dtype, seed=2)
    assert np.array_equal(X, again) and not np.array_equal(X, other)
    assert abs(float(X.mean())) < 0.1 and 0.9 < float(X.std()) < 1.1


def test_gaussian_mixture_splits_one_draw_into_base_and_queries():
    X, y, Q, y_q = gaussian_mixture(500, 50, dim=16, n_clusters=20, n_labels=4, seed=3)
    assert X.shape == (500, 16) and Q.shape == (50, 16) and y.shape == (500,)
    assert {a.dtype for a in (X, y, Q, y_q)} == {np.dtype(np.float32)}
    assert set(np.unique(np.concatenate([y, y_q]))) <= {0.0, 1.0, 2.0, 3.0}
    X2, _, Q2, _ = gaussian_mixture(500, 50, dim=16, n_clusters=20, n_labels=4, seed=3)
    assert np.array_equal(X, X2) and np.array_equal(Q, Q2)
    # the same distribution: base and queries are drawn together, then split
    X3, _, Q3, _ = gaussian_mixture(520, 30, dim=16, n_clusters=20, n_labels=4, seed=3)
    assert np.array_equal(np.concatenate([X, Q]), np.concatenate([X3, Q3]))


# ---------------------------------------------------------------------------- timing
class _Op:
    def __init__(self, key, log):
        self.key, self.times, self.cpu_times = key, [], []
        self.call = lambda: log.append(key)


def test_time_rounds_warms_up_then_interleaves_every_round():
    log = []
    ops = [_Op(name, log) for name in "abc"]
    timed.time_rounds(ops, 4, settle_s=0.0, seed=[11, 0])
    assert log[:3] == ["a", "b", "c"]  # the warm-up, in order
    rounds = [log[3 + 3 * r: 6 + 3 * r] for r in range(4)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # a fresh order each round
    assert all(len(op.times) == len(op.cpu_times) == 4 for op in ops)


def test_interleaved_settles_only_when_asked(monkeypatch):
    slept = []
    monkeypatch.setattr(measure.time, "sleep", slept.append)
    measure.interleaved({"a": lambda: 1, "b": lambda: 2}, 3, 0)
    assert slept == []
    samples = measure.interleaved({"a": lambda: 1, "b": lambda: 2}, 3, 0, settle_s=0.25)
    assert slept == [0.25] * 6 and samples == {"a": [1, 1, 1], "b": [2, 2, 2]}


def test_best_median_cores_and_paired_ratios():
    stats = timed.best_median_cores([3.0, 1.0, 2.0, 4.0], [3.0, 1.5, 2.0, 4.0])
    assert stats == {"best_s": 1.0, "median_s": 2.5, "cores_used_best": 1.5}
    ratio = timed.time_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 2.0])
    assert ratio == {"of_best": 2.0, "median_paired": 3.0}
    assert timed.time_ratio([2.0], [1.0], scale=0.5)["of_best"] == 1.0


# ---------------------------------------------------------------------------- cpu checks
def test_faiss_vote_takes_the_majority_and_breaks_ties_to_the_smallest_label():
    classes = np.array([2.0, 5.0, 9.0])
    label_classes = np.array([0, 1, 2, 2, 1])  # base rows' labels: 2, 5, 9, 9, 5
    indices = np.array([[2, 3, 0], [1, 4, 0], [0, 1, 2], [4, 2, 1]])
    assert cpu_compare.faiss_vote(indices, label_classes, classes).tolist() == [9.0, 5.0, 2.0,
                                                                                5.0]


def test_untied_rows_and_same_sets():
    distances = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0 + 1e-7],
                          [0.0, 1.0, 1.1]], dtype=np.float32)
    assert cpu_compare.untied_rows(distances, 2).tolist() == [True, False, False, True]
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = np.array([[3, 1, 2], [4, 5, 7]])
    assert cpu_compare.same_sets(a, b).tolist() == [True, False]
    assert cpu_compare.fraction(np.array([True, False, True, True])) == 0.75
    assert cpu_compare.fraction(np.array([], dtype=bool)) is None


def _cpu_report():
    X, Q = np.zeros((100, 4), np.float32), np.zeros((10, 4), np.float32)
    w = cpu_compare.Workload("tiny-k3", "a tiny set", X, np.zeros(100), Q, np.zeros(10), 3)
    seconds = {("gpuknn", "kneighbors"): [1.0, 2.0], ("gpuknn", "predict"): [1.0, 1.0],
               ("faiss", "kneighbors"): [2.0, 6.0], ("faiss", "predict"): [1.0, 1.0],
               ("sklearn", "kneighbors"): [4.0, 4.0], ("sklearn", "predict"): [3.0, 2.0],
               ("numpy-gemm", "gemm"): [0.5, 0.5]}
    ops = [cpu_compare.Operation(e, o, lambda: None, list(t), [2 * s for s in t])
           for (e, o), t in seconds.items()]
    rows = cpu_compare.make_rows(w, ops)
    checks = {"rows": 10, "untied_rows": 8, "gpuknn_vs_faiss_index_sets_untied": 1.0,
              "gpuknn_vs_faiss_index_order_untied": 0.875, "gpuknn_vs_faiss_index_sets_all": 0.9,
              "gpuknn_vs_faiss_predict_untied": 1.0, "gpuknn_vs_faiss_predict_all": 1.0,
              "gpuknn_sq_distance_max_rel_diff": 2.5e-7,
              "sklearn_vs_faiss_index_sets_untied": 1.0,
              "sklearn_vs_faiss_predict_untied": None, "sklearn_vs_faiss_predict_all": 1.0,
              "accuracy": {"gpuknn": 0.5, "faiss+vote": 0.5, "sklearn": 0.5}}
    env = {"date_utc": "2026-01-01T00:00:00+00:00", "hostname": "box", "platform": "Linux",
           "python": "3.11.7", "cpu": {"model": "CPU", "logical_cpus": 2, "usable_cpus": 2,
                                       "physical_cores": 1, "simd_flags": ["avx2"]},
           "thread_env": {}, "versions": {"gpuknn": "0.1.0", "faiss": "1.9.0"},
           "faiss_compile_options": "OPTIMIZE AVX2 ", "faiss_omp_max_threads": 2,
           "sklearn_openmp_started_before_faiss_import": True,
           "threadpool_info": [{"prefix": "libopenblas", "internal_api": "openblas",
                                "version": "0.3.15", "num_threads": 2,
                                "filepath": "/x/libopenblas.so"}]}
    workload = {"name": w.name, "description": w.description, "checks": checks,
                "fit_seconds": {"gpuknn": 0.02, "faiss": 0.003},
                "loadavg_before": [0.5, 0.25, 1.0], "loadavg_after": None}
    return {"repeats": 2, "settle_s": 0.05, "workloads": [workload], "rows": rows,
            "environment": env}


def test_make_rows_gives_throughput_gemm_multiples_and_gpuknn_ratios():
    rows = {(r["engine"], r["operation"]): r for r in _cpu_report()["rows"]}
    gk = rows[("gpuknn", "kneighbors")]
    assert gk["best_s"] == 1.0 and gk["median_s"] == 1.5 and gk["qps_best"] == 10.0
    assert gk["x_gemm_floor"] == 2.0 and gk["cores_used_best"] == 2.0
    assert gk["speed_ratio_vs"]["faiss:kneighbors"] == {"of_best": 2.0, "median_paired": 2.5}
    assert gk["speed_ratio_vs"]["sklearn:kneighbors"] == {"of_best": 4.0, "median_paired": 3.0}
    assert rows[("numpy-gemm", "gemm")]["gflops_best"] == 2.0 * 10 * 100 * 4 / 0.5 / 1e9
    assert "speed_ratio_vs" not in rows[("faiss", "kneighbors")]


def test_cpu_markdown_tables_checks_and_environment():
    text = cpu_compare_report.markdown(_cpu_report())
    assert text.startswith("# gpuknn CPU comparison: exact search and prediction\n")
    assert "## tiny-k3\n\na tiny set.\n" in text
    assert "| faiss IndexFlatL2.search | 2.0000 | 4.0000 | 5 | 4.00 | 2.00 | 2.00 (2.50) |" in text
    assert "| gpuknn KNN.kneighbors | 1.0000 | 1.5000 | 10 | 2.00 | 2.00 | - |" in text
    assert "numpy GEMM floor (Q @ X.T) (0 GFLOP/s)" in text
    assert "Checks on 8 of 10 rows" in text and "(same order: 87.50%)" in text
    assert "predictions n/a" in text and "2.5e-07" in text
    assert "before / after: 0.50, 0.25, 1.00 / n/a." in text
    assert "`OPTIMIZE AVX2`" in text and "started before faiss was imported" in text
    assert "| libopenblas | openblas | 0.3.15 | - | 2 | - | libopenblas.so |" in text
    assert text.count("\n| ") == 7 + 2 + 1  # 7 rows and a header, the pool and a header


# ---------------------------------------------------------------------------- io checks
def test_same_arrays_checks_shape_dtype_values_and_none():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert io_compare_checks.same_arrays(a, a.copy())
    assert not io_compare_checks.same_arrays(a, a.astype(np.float64))
    assert not io_compare_checks.same_arrays(a, a.reshape(3, 2))
    assert io_compare_checks.same_arrays(None, None)
    assert not io_compare_checks.same_arrays(a, None)


def test_writer_check_skips_without_the_sdk_and_compares_bytes_with_it():
    assert io_compare_checks.check_writer(None, "no sdk") == {"skipped": "no sdk"}
    same = io_compare_checks.check_writer(lambda f, X, y: write_recordio(f, X, labels=y))
    assert same["byte_identical"] and len(same["cases"]) == 4
    other = io_compare_checks.check_writer(lambda f, X, y: f.write(b"x"))
    assert other["byte_identical"] is False


def test_recordio_and_csv_workloads_check_equal_and_cut_a_prefix(tmp_path):
    X, y = gaussian(120, 5, np.float64, seed=4)
    w = io_compare.make_recordio("tiny", "tiny", X, y, tmp_path, sdk_records=50)
    assert w.prefix_records == 50 and w.sdk_tensor == "float64_tensor"
    assert w.prefix_path.stat().st_size * 120 == w.nbytes * 50
    sdk = lambda path, tensor, label_tensor: io_compare.read(path)  # noqa: E731
    io_compare_checks.check_recordio(w, 32, sdk)
    assert w.checks["iter_batches_sizes"] == [24, 32]
    assert all(w.checks[key] is True for key in (
        "gpuknn_read_equals_written", "gpuknn_iter_batches_equals_read",
        "gpuknn_read_prefix_equals_written", "sdk_equals_gpuknn"))
    unlabelled = io_compare.make_recordio("bare", "bare", X, None, tmp_path, sdk_records=500)
    io_compare_checks.check_recordio(unlabelled, 1000, None, "no sdk")
    assert unlabelled.prefix_records == 120
    assert unlabelled.checks["sdk_equals_gpuknn"] == "skipped: no sdk"
    assert unlabelled.checks["gpuknn_read_equals_written"] is True
    table = io_compare.make_csv("tiny-csv", "tiny", X, y, tmp_path)
    io_compare_checks.check_csv(table)
    assert table.checks["gpuknn_equals_loadtxt"] and table.checks["pandas_equals_loadtxt"]
    assert table.checks["gpuknn_labels_equal_written"]
    assert table.checks["gpuknn_max_abs_diff_vs_written"] < 1e-5


def test_record_stride_refuses_records_of_different_lengths(tmp_path):
    one = io.BytesIO()
    write_recordio(one, np.ones((1, 3), np.float32))
    two = io.BytesIO()
    write_recordio(two, np.ones((1, 4), np.float32))
    data = one.getvalue() + two.getvalue()
    with pytest.raises(RuntimeError, match="one fixed length"):
        io_compare.record_stride(data, 2, tmp_path / "x.pbr")
    assert io_compare.record_stride(one.getvalue() * 3, 3, tmp_path) == len(one.getvalue())


def test_short_path_keeps_the_package_part():
    assert io_compare_checks.short_path("/venv/lib/gpuknn/io/text.py") == "gpuknn/io/text.py"
    assert io_compare_checks.short_path("/somewhere/else.py") == "else.py"


# ---------------------------------------------------------------------------- io report
class _Reader:
    def __init__(self, key, nbytes, times):
        self.key, self.label, self.scope = key, f"the {key}", "whole file"
        self.nbytes, self.n_records, self.times = nbytes, 100, times
        self.cpu_times = [t * 2 for t in times]


def _io_report(missing=None):
    recordio = {"gpuknn.read": _Reader("gpuknn.read", 10_000_000, [0.01, 0.02]),
                "gpuknn.iter_batches": _Reader("gpuknn.iter_batches", 10_000_000, [0.02, 0.02]),
                "gpuknn.read_prefix": _Reader("gpuknn.read_prefix", 1_000_000, [0.001, 0.001]),
                "floor.copy": _Reader("floor.copy", 10_000_000, [0.004, 0.005]),
                "floor.read_bytes": _Reader("floor.read_bytes", 10_000_000, [0.002, 0.002])}
    if not missing:
        recordio["sdk.read_records"] = _Reader("sdk.read_records", 1_000_000, [0.05, 0.04])
    csv = {"gpuknn.read": _Reader("gpuknn.read", 5_000_000, [0.1, 0.1]),
           "numpy.loadtxt": _Reader("numpy.loadtxt", 5_000_000, [0.5, 0.6]),
           "pandas.read_csv": _Reader("pandas.read_csv", 5_000_000, [0.2, 0.1]),
           "floor.read_bytes": _Reader("floor.read_bytes", 5_000_000, [0.001, 0.001])}
    profile = [{"total_s": 0.01}, {"function": "f", "calls": 1, "own_s": 0.005,
                                   "cumulative_s": 0.01, "own_share": 0.5}]
    workloads, rows = [], []
    for name, kind, ops in (("rio", "recordio", recordio), ("csv", "csv", csv)):
        workloads.append({"name": name, "kind": kind, "description": f"the {kind} file",
                          "bytes": 10_000_000, "records": 100, "write_seconds": 0.5,
                          "checks": {"ok": True}, "ratios": io_compare_report.ratios(kind, ops),
                          "loadavg_before": [0.5, 0.5, 0.5], "loadavg_after": None,
                          "profile_read": profile})
        rows += [io_compare_report.row(name, op) for op in ops.values()]
    env = {"date_utc": "2026-01-01T00:00:00+00:00", "hostname": "box",
           "cpu": {"model": "CPU", "usable_cpus": 2}, "python_executable": "/py",
           "python": "3.11.7", "protobuf_implementation": "upb", "sdk": missing or "present",
           "versions": {"gpuknn": "0.1.0", "numpy": "2", "pandas": "3", "protobuf": "6",
                        "sagemaker": None if missing else "2.257"}}
    writer = {"skipped": missing} if missing else {"byte_identical": True, "cases": {"a": True}}
    return {"repeats": 2, "settle_s": 0.1, "sdk_records": 2000, "writer_check": writer,
            "workloads": workloads, "rows": rows, "environment": env,
            "targets": io_compare_report.targets(workloads, missing)}


def test_io_rows_ratios_and_targets():
    report = _io_report()
    rio, csv = (w["ratios"] for w in report["workloads"])
    assert rio["read_x_copy_floor"] == {"of_best": 2.5, "median_paired": pytest.approx(3.25)}
    assert rio["read_vs_sdk"]["of_best"] == pytest.approx(40.0)  # 1e9 B/s over 2.5e7 B/s
    assert rio["read_prefix_vs_sdk_same_bytes"]["of_best"] == pytest.approx(40.0)
    assert csv["read_vs_loadtxt"] == {"of_best": 5.0, "median_paired": pytest.approx(5.5)}
    first = report["rows"][0]
    assert first["mb_per_s_best"] == pytest.approx(1000.0) and first["cores_used_best"] == 2.0
    met = {(t["workload"], t["target"][:20]): t["met"] for t in report["targets"]}
    assert list(met.values()) == [True, True, False]
    skipped = _io_report("no sdk")
    assert "read_vs_sdk" not in skipped["workloads"][0]["ratios"]
    assert skipped["targets"][0] == {"workload": "rio", "target": report["targets"][0]["target"],
                                     "value": None, "met": None, "note": "no sdk"}


def test_io_markdown_with_and_without_the_sdk():
    text = io_compare_report.markdown(_io_report())
    assert text.startswith("# gpuknn data layer: read throughput\n")
    assert "**The SDK is timed on the first 2,000 records" in text
    assert "output is byte-identical to the SDK's `write_numpy_to_dense_tensor` on a." in text
    assert "| rio | gpuknn read ≥ 30x SDK throughput | 40.0x (" in text
    assert "| csv | gpuknn CSV read ≥ 10x numpy.loadtxt throughput | 5.0x (5.5x) | **not met** |" \
        in text
    assert ("| the floor.copy | whole file | 10.0 | 0.0040 | 0.0045 | 2,500.0 | 25,000 | 2.00 "
            "| 0.4 | 1.00 |") in text
    assert "| the sdk.read_records | whole file | 1.0 |" in text
    assert "before / after timing: [0.5, 0.5, 0.5] / None." in text
    assert "`f` 0.005 s (50%)" in text
    bare = io_compare_report.markdown(_io_report("no sdk"))
    assert "**SDK rows skipped: no sdk.**" in bare and "Writer: check skipped (no sdk)." in bare
    assert "| not measured | n/a |" in bare and "sagemaker not installed" in bare


def test_a_workload_without_the_sdk_is_checked_and_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(io_compare, "load_sdk", lambda: io_compare.Sdk(missing="no sdk"))
    X, y = gaussian(60, 4, np.float32, seed=5)
    for number, w in enumerate([io_compare.make_recordio("r", "r", X, y, tmp_path,
                                                         sdk_records=20),
                                io_compare.make_csv("c", "c", X, y, tmp_path)]):
        entry, rows = io_compare.measure_workload(w, number, 1, 0.0)
        assert all(value is not False for value in entry["checks"].values())
        assert not any(row["key"].startswith("sdk.") for row in rows)
        assert all(len(row["times_s"]) == 1 for row in rows)
        assert entry["profile_read"][0]["total_s"] >= 0
    assert set(entry["ratios"]) == {"read_vs_loadtxt", "read_vs_pandas", "pandas_vs_loadtxt",
                                    "read_x_read_bytes_floor"}
    assert "r: gpuknn.read" in capsys.readouterr().out
