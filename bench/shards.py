"""N shards on the same cores against one index: the cost of the shard layer's merge.

Run from the project root with the project's virtual environment::

    python bench/shards.py            # 1M x 128 sift-like, Flat and IVFFlat
    python bench/shards.py --quick    # 100k rows, a smoke test
    python bench/shards.py --gpu      # on a GPU machine (bench/gpu_check.sh runs it)

Goals (issue "Every GPU of the instance"): 2 and 4 shards at most 1.1x the whole index's
time, for 1M x 128 Flat and IVFFlat, with answers identical bit for bit. On a GPU
(``--gpu``, 4M x 128 exact): a base streamed from host memory within 1.5x of the same base
in device memory, beside the bus's floor, and queries/s against the number of GPUs.
Writes ``<out>/shards.{json,md}`` (``shards-quick.*``, ``shards-gpu.*``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpuknn import _backend
from gpuknn.benchmark import shards
from gpuknn.benchmark.machine import machine
from gpuknn.datasets.synthetic import sift_like

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
QUERIES = {"faiss.Flat": 2_000, "faiss.IVFFlat": 10_000}
GPU_ROWS = 4_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.gpu:
        if not _backend.has_gpu():
            print("shards: no CUDA GPU with CuPy here; nothing measured", file=sys.stderr)
            return 2
        return gpu(args.out)
    rows = 100_000 if args.quick else 1_000_000
    data = sift_like(rows + max(QUERIES.values()), seed=7)
    base, queries = data[:rows], data[rows:]
    results = []
    for index_type, count in QUERIES.items():
        result = shards.sharded_against_whole(base, queries[:count], index_type)
        print(shards.markdown([result]), flush=True)
        results.append(result)
    name = "shards-quick" if args.quick else "shards"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(
        {"machine": machine(), "results": results}, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(f"# Shards against one index\n\n"
                                         f"{shards.markdown(results)}\n")
    return 0


def gpu(out: Path) -> int:
    data = sift_like(GPU_ROWS + 10_000, seed=7)
    base, queries = data[:GPU_ROWS], data[GPU_ROWS:]
    streaming = shards.gpu_streaming(base, queries)
    scaling = shards.gpu_devices(base, queries)
    text = (f"# Streamed and multi-GPU exact search ({GPU_ROWS:,} x 128, 10,000 queries)\n\n"
            f"- in device memory {streaming['in_memory_s']:.3f} s, streamed in "
            f"{streaming['segments']} segments {streaming['streamed_s']:.3f} s: "
            f"{streaming['ratio']:.2f}x (goal <= {streaming['goal_ratio']}x), identical "
            f"{streaming['identical']}\n- the base's copy from pinned memory alone "
            f"{streaming['copy_s']:.3f} s ({streaming['bus_gb_per_s']:.1f} GB/s): the floor\n"
            + "".join(f"- {row['gpus']} GPU(s): {row['queries_per_s']:,.0f} queries/s\n"
                      for row in scaling))
    print(text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shards-gpu.json").write_text(json.dumps(
        {"machine": machine(), "streaming": streaming, "devices": scaling}, indent=2) + "\n")
    (out / "shards-gpu.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
