"""Memory of gpuknn's exact search next to faiss: fit, load and serve.

Run from the project root with the project's virtual environment::

    python bench/memory.py                 # 1M x 128 sift-like and 500k x 54 covtype-like
    python bench/memory.py --quick         # 100k rows each, no server: about a minute
    python bench/memory.py --ivf --rounds 7 --out /tmp/results

Each measurement runs in a fresh process (:mod:`gpuknn.benchmark.fit_memory` says how):
the resident memory a fitted ``faiss.Flat`` model adds and the peak during its fit, over
the raw vectors' bytes, beside faiss's ``IndexFlatL2`` (and IVF with ``--ivf``); the time
of ``KNNModel.load`` over reading the model's files from the page cache; the PSS of
``gpuknn serve --workers 2`` over ``--workers 1``; and the largest n x 128 base a 16 GB
card holds by gpuknn's device accounting. Writes ``<out>/memory.json`` and
``<out>/memory.md`` (``memory-quick.*`` with ``--quick``, so a smoke test never overwrites
a full run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from gpuknn.benchmark import fit_memory, gpu_memory, memory, memory_data

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="100,000 rows per data set and no server, unless --serve")
    parser.add_argument("--datasets", default=",".join(memory_data.DATASETS),
                        help="comma-separated: sift-like, covtype-like (default: both)")
    parser.add_argument("--rows", type=int, default=None,
                        help="rows of every data set (default: 1M sift-like and 500k "
                             "covtype-like; 100k each with --quick)")
    parser.add_argument("--ivf", action="store_true",
                        help="also gpuknn IVFFlat and IVFPQ, and faiss with their settings")
    serve = parser.add_mutually_exclusive_group()
    serve.add_argument("--serve", action="store_true", default=None,
                       help="measure the servers (the default without --quick)")
    serve.add_argument("--no-serve", dest="serve", action="store_false",
                       help="skip the servers")
    parser.add_argument("--rounds", type=int, default=fit_memory.LOAD_ROUNDS,
                        help="interleaved rounds of the load timing (default: 5)")
    parser.add_argument("--card-gb", type=float, default=gpu_memory.CARD_BYTES / 1e9,
                        help="the card of the GPU accounting, in 10^9 bytes (default: 16)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for memory.json and memory.md (default: bench/results)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in names if name not in memory_data.DATASETS]
    if unknown or args.rounds < 1:
        parser.error(f"unknown data sets {unknown}" if unknown else "--rounds must be >= 1")
    sizes = memory_data.QUICK_ROWS if args.quick else memory_data.FULL_ROWS
    rows = {name: args.rows or sizes[name] for name in names}
    serve_too = (not args.quick) if args.serve is None else args.serve
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpuknn-memory-bench-") as workdir:
        results = memory.measure_all(rows, workdir=workdir, ivf=args.ivf, serve=serve_too,
                                     rounds=args.rounds, card_bytes=int(args.card_gb * 1e9),
                                     log=lambda line: print(line, flush=True))
    results["quick"] = args.quick
    results["elapsed_s"] = time.perf_counter() - began
    results["command"] = " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    stem = "memory-quick" if args.quick else "memory"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = memory.report_markdown(results)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {args.out / stem}.json and .md in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
