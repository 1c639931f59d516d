"""``gpuknn bench``: measure gpuknn and its peers on one data set, write the outputs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gpuknn import _backend
from gpuknn.benchmark import engines, measure, presets, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gpuknn bench``."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=presets.PRESETS, default=None,
                        help="a data set made on the fly (default: tiny)")
    source.add_argument("--data", default=None, help="your data: a file or directory")
    parser.add_argument("--content-type", default="text/csv",
                        help="of --data and --queries (default text/csv, label first)")
    parser.add_argument("--queries", default=None,
                        help="query rows (default: the last 1%% of --data)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--index-type", default="all",
                        help="faiss.Flat, faiss.IVFFlat, faiss.IVFPQ, or all (default)")
    parser.add_argument("--metric", default="L2", choices=("L2",),
                        help="L2 (the peers are compared on L2)")
    parser.add_argument("--device", choices=("cpu", "gpu", "all"), default="cpu")
    parser.add_argument("--peers", default="sklearn,faiss,hnswlib",
                        help="comma-separated: sklearn, faiss, hnswlib (missing ones skip)")
    parser.add_argument("--latency-budget", type=float, default=2.0,
                        help="seconds per engine and batch size for the latency runs")
    parser.add_argument("--out", default="gpuknn-bench", help="output directory")


def run(args: argparse.Namespace) -> list[Path]:
    """Run the benchmark described by ``args``; the files written."""
    data = (presets.from_files(args.data, args.content_type, args.queries) if args.data
            else presets.preset(args.preset or "tiny"))
    index_types = (engines.INDEX_TYPES if args.index_type == "all"
                   else tuple(args.index_type.split(",")))
    devices = _devices(args.device)
    peers = [p for p in args.peers.split(",") if p and engines.available(p)]
    print(f"gpuknn bench: {data.describe()}; indexes {', '.join(index_types)}; devices "
          f"{', '.join(devices)}; peers {', '.join(peers) or 'none'}")
    began = time.perf_counter()
    exact = measure.exact_neighbours(data.X, data.Q, args.k)
    print(f"exact neighbours for recall in {time.perf_counter() - began:.1f} s")
    results = _measure_all(data, args, index_types, devices, peers, exact=exact)
    written = report.write(results, data.describe(), Path(args.out))
    print((Path(args.out) / "results.md").read_text())
    return written


def _devices(choice: str) -> list[str]:
    if choice == "all":
        return ["cpu", "gpu"] if _backend.has_gpu() else ["cpu"]
    _backend.resolve_device(choice)  # a clear error for "gpu" without one
    return [choice]


def _measure_all(data, args, index_types, devices, peers, *,
                 exact) -> list[dict[str, Any]]:
    settings = [engines.Gpuknn(index, args.metric, device, args.k)
                for index in index_types for device in devices]
    results = []
    with tqdm(total=len(settings) + _peer_count(peers, index_types), unit=" runs",
              disable=None) as bar:
        for engine in settings:
            results.append(_one(engine, data, args, exact, bar))
            if "faiss" in peers:
                like = results[-1]["settings"]
                results.append(_one(engines.Faiss(engine.index, like), data, args, exact, bar))
        if "sklearn" in peers:
            results.append(_one(engines.Sklearn(args.metric), data, args, exact, bar))
        if "hnswlib" in peers:
            hnsw = engines.Hnswlib()
            hnsw.settings["target"] = min(0.99, max(r["recall"] for r in results))
            results.append(_one(hnsw, data, args, exact, bar))
    return results


def _peer_count(peers: list[str], index_types) -> int:
    return ("faiss" in peers) * len(index_types) + ("sklearn" in peers) + ("hnswlib" in peers)


def _one(engine, data, args, exact, bar) -> dict[str, Any]:
    bar.set_postfix_str(engine.label)
    result = measure.measure(engine, data, args.k, exact, budget_s=args.latency_budget)
    bar.update(1)
    return result
