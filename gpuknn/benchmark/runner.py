"""``gpuknn bench``: measure gpuknn and its peers on one data set, write the outputs.

Every option is checked before any work. Then every engine is built (build time,
recall, accuracy, memory; with ``--memory`` also what the built engine holds and the
peak of its build, over the raw vectors' bytes), their throughput is timed in
interleaved rounds (:mod:`gpuknn.benchmark.measure`), and each one's latency per batch
size. Each run writes a new folder, so a rerun never overwrites earlier results.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import re
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gpuknn import _backend
from gpuknn.benchmark import engines, measure, presets, report
from gpuknn.errors import ClientError

MAX_K = 2048
# What brings each peer, for the line that says it was skipped.
EXTRAS = {"sklearn": "pip install 'gpuknn[bench]' brings scikit-learn",
          "faiss": "pip install 'gpuknn[cpu]' brings faiss",
          "hnswlib": "pip install 'gpuknn[bench]' brings hnswlib (built with a C++ compiler)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gpuknn bench``."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=presets.PRESETS, default=None,
                        help="a data set made on the fly: tiny (seconds), letter, mnist, "
                             "covtype-like, sift-like (default: tiny)")
    source.add_argument("--data", default=None,
                        help="your data instead: a file or directory (see --content-type)")
    parser.add_argument("--content-type", default="text/csv",
                        help="format of --data and --queries (default: text/csv, label first)")
    parser.add_argument("--queries", default=None,
                        help="query rows, with --data (default: the last 1%% of --data)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument("--index-type", default="all",
                        help="faiss.Flat, faiss.IVFFlat, faiss.IVFPQ, a comma-separated list, "
                             "or all (default: all)")
    parser.add_argument("--metric", default="L2", choices=("L2",),
                        help="L2, the metric every peer supports (default: L2)")
    parser.add_argument("--device", choices=("cpu", "gpu", "all"), default="cpu",
                        help="where gpuknn runs; all = cpu and, if present, gpu (default: cpu)")
    parser.add_argument("--devices", default=None, metavar="all|0,2,...",
                        help="say how a model of this data would be placed on these GPUs "
                             "(whole on each, N shards or streamed, and why) and how many "
                             "rows each documented instance's GPUs hold; written to "
                             "placement.md (default: off)")
    parser.add_argument("--peers", default="sklearn,faiss,hnswlib",
                        help="comma-separated peers: sklearn, faiss, hnswlib; missing ones are "
                             "skipped with a note (default: all three)")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of timed searching per engine at least, in interleaved "
                             "rounds of at least 5 (default: 1.0)")
    parser.add_argument("--latency-budget", type=float, default=2.0,
                        help="seconds per engine and batch size for the latency runs "
                             "(default: 2.0)")
    parser.add_argument("--memory", action="store_true",
                        help="add each engine's memory to the table: the resident memory "
                             "its built index holds and the peak during its build, as "
                             "ratios to the raw vectors' bytes (default: off)")
    parser.add_argument("--out", default="gpuknn-bench",
                        help="each run writes a new folder OUT/<data set>-<UTC time> with "
                             "results.jsonl, results.md and the plots (default: gpuknn-bench)")


# -- checking the options ----------------------------------------------------------------------
def check_options(args: argparse.Namespace) -> None:
    """Every option at once, before any work; a ClientError lists all problems."""
    problems = []
    if not 1 <= args.k <= MAX_K:
        problems.append(f"--k must be an integer in [1, {MAX_K}]; got {args.k}")
    unknown = [kind for kind in _index_types(args.index_type) if kind not in engines.INDEX_TYPES]
    if unknown:
        problems.append(f"--index-type {', '.join(unknown)} is not one of "
                        f"{', '.join(engines.INDEX_TYPES)} (or all)")
    strangers = [peer for peer in _peers(args.peers) if peer not in engines.PEERS]
    if strangers:
        problems.append(f"--peers {', '.join(strangers)}: choose among "
                        f"{', '.join(engines.PEERS)}")
    for name in ("min_time", "latency_budget"):
        if not getattr(args, name) > 0:
            problems.append(f"--{name.replace('_', '-')} must be a positive number of "
                            f"seconds; got {getattr(args, name)}")
    if args.queries is not None and args.data is None:
        problems.append("--queries needs --data (the presets carry their own queries)")
    problems += _content_type_problems(args)
    if problems:
        raise ClientError("\n".join([f"{len(problems)} invalid option"
                                     f"{'s' if len(problems) > 1 else ''}:",
                                     *(f"  - {p}" for p in problems)]))
    _devices(args.device)  # "gpu" without a GPU: a DeviceError naming the device


def _content_type_problems(args: argparse.Namespace) -> list[str]:
    from gpuknn.io import parse_content_type  # noqa: PLC0415

    try:
        parse_content_type(args.content_type)
    except ClientError as err:
        return [f"--content-type: {err}"]
    return []


def _index_types(text: str) -> tuple[str, ...]:
    return engines.INDEX_TYPES if text == "all" else tuple(
        part.strip() for part in text.split(",") if part.strip())


def _peers(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _devices(choice: str) -> list[str]:
    if choice == "all":
        return ["cpu", "gpu"] if _backend.has_gpu() else ["cpu"]
    _backend.resolve_device(choice)  # a clear error for "gpu" without one
    return [choice]


# -- the run -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> list[Path]:
    """Run the benchmark described by ``args``; the files written."""
    check_options(args)
    logging.getLogger("gpuknn").setLevel(logging.WARNING)  # the table says it all
    data = (presets.from_files(args.data, args.content_type, args.queries) if args.data
            else presets.preset(args.preset or "tiny"))
    if args.k > len(data.X):
        raise ClientError(f"--k is {args.k} but the data has only {len(data.X):,} base rows")
    index_types, peers = _available(args)
    devices = _devices(args.device)
    print(f"gpuknn bench: {_describe(data)}; k={args.k}; gpuknn {', '.join(index_types)} on "
          f"{', '.join(devices)}; peers: {', '.join(peers) or 'none'}")
    began = time.perf_counter()
    exact = measure.exact_neighbours(data.X, data.Q, args.k)
    print(f"exact neighbours for recall: {time.perf_counter() - began:.1f} s")
    built, results = _build_all(data, args, index_types, devices, peers, exact=exact)
    _throughput(built, results, data, args)
    for engine, result in zip(built, results, strict=True):
        result["latency"] = measure.latencies(engine, data.Q, args.k,
                                              budget_s=args.latency_budget)
    out = _run_folder(Path(args.out), data.name)
    written = report.write(results, data.describe(), out)
    if getattr(args, "devices", None) is not None:
        written.append(_placement(data, args.devices, out))
    print(written[1].read_text())
    if not any(path.suffix == ".png" for path in written):
        print("no plots: matplotlib is not installed (pip install 'gpuknn[bench]')")
    print(f"gpuknn bench: results in {out}/ ({', '.join(path.name for path in written)})")
    return written


def _placement(data: presets.Dataset, choice: str, out: Path) -> Path:
    """``placement.md``: how a model of ``data`` goes on the GPUs ``choice`` names."""
    from gpuknn import devices  # noqa: PLC0415 - only with --devices
    from gpuknn.search import placement  # noqa: PLC0415

    ordinals = devices.resolve(choice, "gpu" if _backend.has_gpu() else "cpu")
    free = [_backend.gpu_free_memory(ordinal) for ordinal in ordinals]
    text = placement.report(len(data.X), data.X.shape[1], ordinals, free)
    print(text)
    path = out / "placement.md"
    path.write_text(f"# Where the model goes\n\n{text}\n")
    return path


def _available(args: argparse.Namespace) -> tuple[tuple[str, ...], list[str]]:
    """The index types and peers that can run here; says which are skipped and why."""
    index_types = _index_types(args.index_type)
    peers = _peers(args.peers)
    missing = [peer for peer in peers if not engines.available(peer)]
    for peer in missing:
        print(f"skipping the {peer} peer: not installed ({EXTRAS[peer]})")
    if not engines.available("faiss"):
        ivf = [kind for kind in index_types if kind != "faiss.Flat"]
        if ivf:
            print(f"skipping gpuknn {', '.join(ivf)}: IVF indexes need faiss "
                  f"({EXTRAS['faiss']})")
        index_types = tuple(kind for kind in index_types if kind == "faiss.Flat")
    return index_types, [peer for peer in peers if peer not in missing]


def _describe(data: presets.Dataset) -> str:
    shape = data.describe()
    labels = "labelled" if shape["labelled"] else "no labels"
    return (f"{shape['name']}, {shape['n_base']:,} x {shape['dim']} base rows, "
            f"{shape['n_queries']:,} queries, {labels}")


def _run_folder(parent: Path, name: str) -> Path:
    """A new folder ``parent/<data set>-<UTC time>`` (a suffix if that exists already)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(name).name) or 'data'}-{stamp}"
    folder, attempt = parent / base, 1
    while folder.exists():
        attempt += 1
        folder = parent / f"{base}-{attempt}"
    folder.mkdir(parents=True)
    return folder


def _build_all(data, args, index_types, devices, peers, *, exact):
    """Every engine built and checked once: (engines, their result rows)."""
    built, results = [], []

    def add(engine):
        bar.set_postfix_str(engine.label)
        results.append(measure.build(engine, data, args.k, exact,
                                     memory=getattr(args, "memory", False)))
        built.append(engine)
        bar.update(1)

    total = len(index_types) * len(devices) + ("faiss" in peers) * len(index_types) + (
        "sklearn" in peers) + ("hnswlib" in peers)
    with tqdm(total=total, desc="build", unit=" engines", disable=None) as bar:
        for index in index_types:
            for device in devices:
                add(engines.Gpuknn(index, args.metric, device, args.k))
            if "faiss" in peers:
                add(engines.Faiss(index, results[-1]["settings"]))
        if "sklearn" in peers:
            add(engines.Sklearn(args.metric))
        if "hnswlib" in peers:
            hnsw = engines.Hnswlib()
            hnsw.settings["target"] = min(0.99, max(r["recall"] for r in results))
            add(hnsw)
    return built, results


def _throughput(built, results, data, args) -> None:
    """Interleaved throughput of every engine; each peer's row gets its ratio to gpuknn."""
    with tqdm(total=100, desc="throughput", unit="%", disable=None) as bar:
        def progress(rounds: int, share: float) -> None:
            bar.n = min(100, int(100 * share))
            bar.set_postfix_str(f"round {rounds}")
            bar.refresh()

        samples = measure.interleaved_throughput(built, data.Q, args.k,
                                                 min_time_s=args.min_time, progress=progress)
    for result, series in zip(results, samples, strict=True):
        result["throughput"] = measure.summary(series)
        result["queries_per_s"] = result["throughput"]["median"]
        result["search_s"] = len(data.Q) / result["queries_per_s"]
    for peer, series in zip(results, samples, strict=True):
        mine = _counterpart(peer, results)
        if mine is not None:
            peer["gpuknn_ratio"] = measure.paired_ratio(samples[mine], series)


def _counterpart(row: dict[str, Any], results: list[dict[str, Any]]) -> int | None:
    """The gpuknn row a peer is compared with: the same index type (faiss) or the exact
    one (scikit-learn, hnswlib), on the CPU where there is one."""
    if row["engine"] == "gpuknn":
        return None
    wanted = row["index"] if row["engine"] == "faiss" else "faiss.Flat"
    candidates = [i for i, other in enumerate(results)
                  if other["engine"] == "gpuknn" and other["index"] == wanted]
    on_cpu = [i for i in candidates if results[i]["device"] == "cpu"]
    return (on_cpu or candidates or [None])[0]
