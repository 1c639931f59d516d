"""N shards on the same cores against one index: the cost of the shard layer's merge.

Run from the project root with the project's virtual environment::

    python bench/shards.py            # 1M x 128 sift-like, Flat and IVFFlat
    python bench/shards.py --quick    # 100k rows, a smoke test

Goal (issue "Every GPU of the instance"): 2 and 4 shards at most 1.1x the whole index's
time, for 1M x 128 Flat and IVFFlat, with answers identical bit for bit. Writes
``<out>/shards.json`` and ``<out>/shards.md`` (``shards-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _machine import machine  # bench/_machine.py, beside this script

from gpuknn.benchmark import shards
from gpuknn.datasets.synthetic import sift_like

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
QUERIES = {"faiss.Flat": 2_000, "faiss.IVFFlat": 10_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
