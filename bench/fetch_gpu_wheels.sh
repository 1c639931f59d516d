#!/usr/bin/env bash
# Fill .wheels/ with what bench/gpu_check.sh may need on a GPU machine without internet
# (x86-64 Linux, CPython 3.12 by default; set PYVER=3.11 etc. for another).
# numpy and CuPy are expected there already; pandas and scikit-learn are left out to stay
# under the 64 MiB that travels with the tree (the CSV reader and the scikit-learn
# comparisons are not part of the GPU check).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
mkdir -p .wheels
grep -qx '/.wheels/' .git/info/exclude 2>/dev/null || echo '/.wheels/' >> .git/info/exclude
python3 -m pip download --quiet --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --no-deps -d .wheels \
    "scipy>=1.10" "protobuf>=4.23,<7" "threadpoolctl>=3.1" "tqdm>=4.60" "faiss-cpu>=1.8" \
    "pytest>=8" pluggy iniconfig packaging pygments
du -sh .wheels
