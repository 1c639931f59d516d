#!/usr/bin/env bash
# The GPU check of issue 6, in one run (under 10 minutes): the `gpu` tests, then the GPU
# benchmarks, then a short table. Results go to bench/results/ (or $OUT).
#
#   bash bench/gpu_check.sh [--quick]
#
# Run from anywhere on a machine with a CUDA GPU and CuPy. gpuknn is used from this
# tree (PYTHONPATH), not installed. Python packages that are missing are installed from
# the wheels in .wheels/, which `bash bench/fetch_gpu_wheels.sh` fills on a machine with
# internet access (carry .wheels to the GPU machine with the tree).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"

missing=()
for pair in scipy:scipy google.protobuf:protobuf threadpoolctl:threadpoolctl tqdm:tqdm \
            pytest:pytest faiss:faiss-cpu; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
done
if ((${#missing[@]})); then
    if [ -d .wheels ]; then
        # --no-deps: .wheels holds every wheel needed, and numpy comes with CuPy there
        "$PY" -m pip install --quiet --no-index --no-deps --find-links .wheels .wheels/*.whl \
            || echo "gpu_check: could not install ${missing[*]} from .wheels/"
    else
        echo "gpu_check: missing ${missing[*]} and there is no .wheels/ (bench/fetch_gpu_wheels.sh)"
    fi
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | tee "$OUT/gpu_check-nvidia-smi.txt"

# test_faiss_gpu.py's GPU tests also need faiss-gpu; with faiss-cpu they skip, saying so.
tests=(tests/test_kernels.py tests/test_exact.py tests/test_topk.py tests/test_reduction.py
       tests/test_predict.py tests/test_faiss_gpu.py tests/test_multimodel_parts.py
       tests/test_shards.py)
"$PY" -c "import sklearn" 2>/dev/null && tests+=(tests/test_estimator.py)
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts=-ra "${tests[@]}" 2>&1 \
    | tee "$OUT/gpu_check-pytest.txt"
tests_status=${PIPESTATUS[0]}

timeout 220 "$PY" bench/gpu_bench.py "$@" --out "$OUT"
bench_status=$?

# streamed against in-memory exact search, and queries/s against the number of GPUs
timeout 120 "$PY" bench/shards.py --gpu --out "$OUT"
shards_status=$?

echo
echo "gpu_check: pytest exit ${tests_status}, gpu_bench exit ${bench_status}, shards exit" \
     "${shards_status}; results in ${OUT}/"
exit $((tests_status != 0 || bench_status != 0 || shards_status != 0))
