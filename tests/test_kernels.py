"""The CUDA kernels of ``kernels/*.cu``: compiled here, compared with their numpy twins
on a GPU.

Two compile checks run without a GPU, so a syntax error never waits for one: ``nvcc``
to PTX wherever it exists (the CPU CI machines have CUDA 13), and NVRTC, the compiler
CuPy uses at run time, to machine code for every documented card from sm_70 (ml.p3)
to sm_90, with gpuknn's own options. NVRTC comes from the ``nvidia-cuda-nvrtc-cu12``
wheel of the ``test`` extra: CUDA 12, so it still targets Volta. The comparisons are
marked ``gpu`` and use awkward sizes: not multiples of the block size, dimensions that
are not powers of two, k from 1 to 2048, missing neighbours and tied votes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpuknn import KNN, _backend, kernels
from gpuknn.model import predict
from gpuknn.model.reduction import FJLT
from gpuknn.search.topk import select_k

KERNELS = sorted((Path(__file__).resolve().parent.parent / "kernels").glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_every_kernel_file_is_found_and_documented():
    assert [path.stem for path in KERNELS] == ["fjlt", "mean", "select_k", "vote"]
    for path in KERNELS:
        assert kernels.source(path.stem) == path.read_text()
        assert f"``{path.stem}``" in kernels.__doc__, f"{path.name} has no twin listed"
        names = re.findall(r'extern "C" __global__ void (\w+)', path.read_text())
        assert names == [f"gpuknn_{path.stem}"], names


def supported_architectures() -> set[str]:
    listed = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True,
                            check=True).stdout.split()
    return {name.removeprefix("compute_") for name in listed}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["70", "75", "90"])
@pytest.mark.parametrize("path", KERNELS, ids=lambda path: path.name)
def test_kernels_compile_to_ptx(path, arch, tmp_path):
    if arch not in supported_architectures():
        # CUDA 13 dropped Volta; the kernels use nothing newer than sm_70 offers, and
        # CUDA 12 toolkits (the faiss-gpu and cupy-cuda12x world of ml.p3) compile them.
        pytest.skip(f"this nvcc cannot target compute_{arch}")
    result = subprocess.run([NVCC, "--ptx", "-std=c++14", f"-arch=compute_{arch}", "-o",
                             str(tmp_path / f"{path.stem}.ptx"), str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "gpuknn_" + path.stem in (tmp_path / f"{path.stem}.ptx").read_text()


def find_nvrtc() -> ctypes.CDLL | None:
    """libnvrtc from the ``nvidia-cuda-nvrtc-cu12`` wheel, else the system's, else None."""
    candidates = []
    try:
        import nvidia.cuda_nvrtc  # optional: the test extra's wheel

        candidates += sorted(Path(next(iter(nvidia.cuda_nvrtc.__path__))).glob(
            "lib/libnvrtc.so.*"))
    except ImportError:
        pass
    found = ctypes.util.find_library("nvrtc")
    candidates += [found] if found else []
    for candidate in candidates:
        try:
            return ctypes.CDLL(str(candidate))
        except OSError:
            continue
    return None


NVRTC = find_nvrtc()


def nvrtc_compile(source: str, name: str, options: list[str]) -> tuple[int, str, int]:
    """(NVRTC status, its log, bytes of machine code) for one compile of ``source``."""
    program = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(),
                                    0, None, None) == 0
    try:
        encoded = [option.encode() for option in options]
        status = NVRTC.nvrtcCompileProgram(program, len(encoded),
                                           (ctypes.c_char_p * len(encoded))(*encoded))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(program, log)
        cubin = ctypes.c_size_t(0)
        if status == 0:
            NVRTC.nvrtcGetCUBINSize(program, ctypes.byref(cubin))
        return status, log.value.decode(errors="replace"), cubin.value
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(program))


@pytest.mark.skipif(NVRTC is None, reason="NVRTC is not installed (nvidia-cuda-nvrtc-cu12)")
@pytest.mark.parametrize("arch", ["70", "75", "80", "86", "90"])
@pytest.mark.parametrize("path", KERNELS, ids=lambda path: path.name)
def test_kernels_compile_with_nvrtc_for_every_documented_card(path, arch):
    # V100 (ml.p3), T4 (g4dn), A100 (p4d), A10G (g5), H100/H200 (p5): machine code, as
    # CuPy asks NVRTC for it, with the options gpuknn.kernels gives RawModule.
    options = [*kernels.NVRTC_OPTIONS, f"-arch=sm_{arch}"]
    status, log, cubin_bytes = nvrtc_compile(path.read_text(), path.name, options)
    assert status == 0, log
    assert "error" not in log.lower(), log
    assert cubin_bytes > 0


# -- on a GPU: every kernel against its numpy twin ---------------------------------------------
@pytest.fixture
def cupy():
    return _backend.array_module("gpu")


VOTE_CASES = [(1, 1, 1), (1000, 7, 3), (4097, 100, 26), (333, 2048, 1000),
              (50, 10, kernels.MAX_VOTE_CLASSES)]


@pytest.mark.gpu
@pytest.mark.parametrize(("n_queries", "k", "n_classes"), VOTE_CASES)
def test_vote_matches_its_twin(cupy, rng, n_queries, k, n_classes):
    classes = rng.integers(-1, n_classes, size=(n_queries, k))  # -1: missing neighbour
    classes[: n_queries // 3] = np.sort(classes[: n_queries // 3], axis=1)
    classes[n_queries // 3 : n_queries // 2, ::2] = 0  # ties between class 0 and others
    counts, majority = kernels.vote(cupy.asarray(classes), n_classes, xp=cupy)
    want_counts = predict.vote_counts(classes, n_classes, xp=np)
    np.testing.assert_array_equal(counts.get(), want_counts)
    np.testing.assert_array_equal(majority.get(), predict.majority(want_counts, xp=np))
    shares = predict.vote_shares(counts, xp=cupy).get()
    np.testing.assert_allclose(shares, predict.vote_shares(want_counts, xp=np), rtol=1e-6)


SELECT_CASES = [(1, 1, 1), (7, 5, 5), (100, 3001, 10), (257, 2049, 2048), (33, 70_000, 2048),
                (5, 100_000, 1)]


@pytest.mark.gpu
@pytest.mark.parametrize(("n_rows", "n_cols", "k"), SELECT_CASES)
@pytest.mark.parametrize("kind", ["gaussian", "integer ties", "signed zeros"])
def test_select_k_matches_its_twin(cupy, rng, n_rows, n_cols, k, kind):
    if kind == "gaussian":
        scores = rng.standard_normal((n_rows, n_cols)).astype(np.float32) * 1e3
    elif kind == "integer ties":  # many equal scores: ties must go to the smaller column
        scores = rng.integers(-3, 4, (n_rows, n_cols)).astype(np.float32)
    else:
        scores = rng.choice(np.array([-0.0, 0.0, 1.0, -1.0], np.float32), (n_rows, n_cols))
    values, columns = kernels.select_k(cupy.asarray(scores), k, xp=cupy)
    want_values, want_columns = select_k(scores, k, xp=np)
    np.testing.assert_array_equal(values.get(), want_values)
    np.testing.assert_array_equal(columns.get(), want_columns)


@pytest.mark.gpu
@pytest.mark.parametrize(("n_rows", "n_cols", "k"), [(100, 3001, 10), (33, 70_000, 2048)])
def test_select_k_adds_column_offsets_as_its_twin_does(cupy, rng, n_rows, n_cols, k):
    scores = rng.standard_normal((n_rows, n_cols)).astype(np.float32) * 1e3
    offsets = np.round(rng.standard_normal(n_cols) * 1e3).astype(np.float32)
    values, columns = kernels.select_k(cupy.asarray(scores), k, xp=cupy,
                                       column_offsets=cupy.asarray(offsets))
    want_values, want_columns = select_k(scores, k, xp=np, column_offsets=offsets)
    np.testing.assert_array_equal(values.get(), want_values)
    np.testing.assert_array_equal(columns.get(), want_columns)


@pytest.mark.gpu
@pytest.mark.parametrize(("n_queries", "k"), [(1, 1), (999, 10), (4097, 33), (100, 2048)])
def test_mean_matches_its_twin(cupy, rng, n_queries, k):
    labels = (rng.standard_normal((n_queries, k)) * 100).astype(np.float32)
    found = rng.random((n_queries, k)) < 0.9
    found[0] = False  # a query without neighbours: NaN in both
    got = kernels.mean(cupy.asarray(labels), cupy.asarray(found), xp=cupy).get()
    want = predict.mean_labels(labels, found, xp=np)
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    assert np.isnan(got[0])


@pytest.mark.gpu
@pytest.mark.parametrize(("n_rows", "input_dim", "target_dim"),
                         [(1, 1, 1), (1000, 54, 16), (257, 100, 64), (3000, 784, 128),
                          (33, 5000, 1000), (10, 8192, 8192)])
def test_fjlt_matches_its_twin(cupy, rng, n_rows, input_dim, target_dim):
    transform = FJLT.fit(input_dim, target_dim, seed=7)
    X = rng.standard_normal((n_rows, input_dim)).astype(np.float32)
    got = transform.transform(cupy.asarray(X), xp=cupy).get()  # the kernel
    want = transform.transform(X, xp=np)  # the twin
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.gpu
def test_fjlt_wider_than_shared_memory_falls_back(cupy, rng):
    transform = FJLT.fit(9000, 32, seed=1)  # padded to 16384 > MAX_FJLT_DIM
    X = rng.standard_normal((5, 9000)).astype(np.float32)
    np.testing.assert_allclose(transform.transform(cupy.asarray(X), xp=cupy).get(),
                               transform.transform(X), rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("predictor_type", ["classifier", "regressor"])
@pytest.mark.parametrize("reduction", [None, "fjlt", "sign"])
def test_estimator_on_gpu_predicts_as_on_cpu(letter, predictor_type, reduction):
    X, y, Q, _ = letter
    extra = {} if reduction is None else {"dimension_reduction_type": reduction,
                                          "dimension_reduction_target": 8}
    settings = dict(k=10, predictor_type=predictor_type, sample_size=len(X), feature_dim=16,
                    **extra)
    cpu = KNN(device="cpu", **settings).fit(X, y)
    gpu = KNN(device="gpu", **settings).fit(X, y)
    got, want = gpu.predict(Q), cpu.predict(Q)
    agree = np.mean(got == want) if predictor_type == "classifier" else np.mean(
        np.isclose(got, want, rtol=1e-5))
    # Distance ties on this integer data may be ordered differently by float32 GEMMs
    # of different shapes; the neighbour sets, and so the votes, almost never change.
    assert agree >= 0.995, agree


@pytest.mark.skipif(_backend.has_gpu(), reason="on a GPU, gpu_check.sh is the real run")
def test_gpu_check_script_runs_through_without_a_gpu(tmp_path):
    """The one script a GPU session runs: here its tests skip, and the bench says why."""
    script = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh"
    result = subprocess.run(["bash", str(script), "--quick"], capture_output=True, text=True,
                            timeout=600, check=False,
                            env={**os.environ, "OUT": str(tmp_path),
                                 "PYTHON": sys.executable})
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "pytest exit 0, gpu_bench exit 2, shards exit 2" in result.stdout
    assert "gpu_bench: no CUDA GPU with CuPy here" in result.stderr
    assert "shards: no CUDA GPU with CuPy here" in result.stderr
    assert "skipped" in (tmp_path / "gpu_check-pytest.txt").read_text()


def test_gpu_bench_renders_one_table_with_every_target(monkeypatch):
    """The report a GPU session commits: one unbroken Markdown table, a row per target."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import gpu_bench  # bench/gpu_bench.py, importable only with bench/ on the path

    job = {"exit_code": 0, "wall_s": 4.0, "test_accuracy": 0.9, "ran_on": "cpu"}
    report = {
        "environment": {"gpu": "card", "compute_capability": "9.0", "memory_gib": 139.8,
                        "driver": 13000, "runtime": 13000, "cupy": "14", "date_utc": "now"},
        "sizes": {"base": 1_000_000, "queries": 10_000, "dim": 128, "rows": 1_000_000},
        "floors": {"fp32_gemm_tflops": 50.0, "bandwidth_gb_s": 4000.0},
        "search": {"gpu_s": 0.08, "gemm_floor_s": 0.05, "x_floor": 1.6, "cpu_s_scaled": 20.0,
                   "gpu_over_cpu": 250.0, "ids_equal_share": 1.0, "faiss_gpu_flat_s": None},
        "fjlt": {"seconds": 0.002, "gb_s": 3000.0, "bandwidth_share": 0.75,
                 "max_abs_error_vs_twin": 1e-6},
        "vote_mean": {"vote_s": 1e-3, "mean_s": 1e-3, "search_s_same_queries": 8.0,
                      "vote_share_of_search": 1e-4, "mean_share_of_search": 1e-4},
        "train_predict": {"cpu_job": job, "gpu_job": dict(job, wall_s=2.0, ran_on="gpu"),
                          "train_rows": 500_000,
                          "test_rows": 58_000, "sample_size": 200_000, "job_gpu_over_cpu": 2.0,
                          "cpu_predict_s": 0.5, "gpu_predict_s": 0.05,
                          "predict_gpu_over_cpu": 10.0},
    }
    lines = gpu_bench.render(report).splitlines()
    table = [i for i, line in enumerate(lines) if line.startswith("|")]
    assert table == list(range(table[0], table[0] + len(table))), "the table is cut"
    text = "\n".join(lines[i] for i in table)
    for row in ("exact search", "CPU path", "fjlt", "vote", "mean", "gpuknn train", "predict"):
        assert row in text, row
    assert "1.60x floor" in text and "75% of bandwidth" in text and "GPU 2.00x" in text
