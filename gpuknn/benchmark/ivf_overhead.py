"""What gpuknn adds on top of faiss when it searches an IVF index.

gpuknn's ``faiss.IVFFlat`` and ``faiss.IVFPQ`` models search a faiss index
(``model.index.index``). This benchmark times three engines on **that same faiss
object**, in one process, so that any difference is gpuknn's own work (query checks and
preparation, the short-row check, the square root of L2 distances, the id mapping):

- ``faiss``: ``index.search(prepared, k)`` with ``index.nprobe`` set to the model's
  nprobe; ``prepared`` is the float32 query array, already zero-padded for IVFPQ where
  gpuknn pads, made before any timing;
- ``gpuknn``: ``model.kneighbors(queries, k)`` on the float32 queries as a user has them;
- ``IVFSearch``: ``model.index.search(prepared, k)``, the index layer alone.

Timing (:func:`gpuknn.benchmark.measure.interleaved`): every round times each engine
once, in a fresh random order, after a garbage collection and a short pause that lets the
previous engine's thread pools go idle; the batch rounds come first, then the single-row
rounds. A batch sample is one call on :data:`BATCH` queries (wall and process CPU time,
:func:`gpuknn.benchmark.timed.wall_and_cpu`); a single-row sample is the median time of
one-row calls over :data:`SINGLE_ROWS` different rows. Ratios and differences are taken
within a round (the engines timed seconds apart) and summarised by their median and
quartiles over rounds, so a machine that slows down mid-run cancels out.

On a shared machine those wall-clock ratios carry a few percent of noise. The work gpuknn
adds is also measured without faiss (:func:`added_work`): faiss's index is replaced by a
replay of its own results, so what remains is gpuknn's code alone, timed to the
microsecond.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.benchmark.ivf_replay import K, added_work, same_results
from gpuknn.benchmark.measure import interleaved, summary
from gpuknn.benchmark.timed import wall_and_cpu

BATCH = 4096
SINGLE_ROWS = 256
ENGINES = ("faiss", "gpuknn", "IVFSearch")
INDEX_TYPES = ("faiss.IVFFlat", "faiss.IVFPQ")
# (dataset, base rows) for a full run and for --quick.
FULL = (("sift-like", 1_000_000), ("covtype-like", 500_000))
QUICK = (("sift-like", 200_000), ("covtype-like", 100_000))


def load(dataset: str, n_base: int, n_queries: int) -> tuple[np.ndarray, np.ndarray | None,
                                                              np.ndarray]:
    """Base rows, their labels (None for sift-like) and queries, all float32.

    Parameters
    ----------
    dataset : {"sift-like", "covtype-like"}
        :func:`gpuknn.datasets.synthetic.sift_like` (128-d) or ``covtype_like`` (54-d).
    n_base, n_queries : int
        The queries are further rows of the same generator, not in the base.
    """
    from gpuknn.datasets import synthetic  # noqa: PLC0415

    if dataset == "sift-like":
        X, y = synthetic.sift_like(n_base + n_queries), None
    elif dataset == "covtype-like":
        X, y = synthetic.covtype_like(n_base + n_queries)
        X, y = X.astype(np.float32), y[:n_base]
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    return np.ascontiguousarray(X[:n_base]), y, np.ascontiguousarray(X[n_base:])


def fit(X: np.ndarray, y: np.ndarray | None, index_type: str, **hyperparameters: Any) -> Any:
    """A CPU :class:`gpuknn.KNNModel` indexing all of ``X`` with ``index_type``."""
    from gpuknn import KNN  # noqa: PLC0415

    return KNN(k=K, sample_size=len(X), index_type=index_type, device="cpu",
               predictor_type="classifier", **hyperparameters).fit(X, y).fitted_model


def _per_row(search: Callable[[np.ndarray], Any], rows: np.ndarray) -> float:
    """Median time of one-row calls, one per row of ``rows`` (robust to a preempted call)."""
    times = np.empty(len(rows))
    for i in range(len(rows)):
        row = rows[i:i + 1]
        began = time.perf_counter()
        search(row)
        times[i] = time.perf_counter() - began
    return float(np.median(times))


def compare(model: Any, queries: np.ndarray, *, rounds: int = 15, settle_s: float = 0.05,
            batch: int = BATCH, single_rows: int = SINGLE_ROWS, k: int = K,
            seed: int = 0) -> dict[str, Any]:
    """Time faiss, ``model.kneighbors`` and ``model.index.search`` on the same faiss index.

    Parameters
    ----------
    model : KNNModel
        A fitted ``faiss.IVFFlat`` or ``faiss.IVFPQ`` model on the CPU.
    queries : ndarray of shape (n_queries, feature_dim), float32
        At least ``batch`` rows.
    rounds : int
        Rounds of interleaved samples (each engine once per round, random order).
    settle_s : float
        Pause before every timed call.
    batch, single_rows, k : int
        Queries per batch call, one-row calls per single-row sample (their median is the
        sample), neighbours.
    seed : int
        Seed of the engine order.

    Returns
    -------
    dict
        ``batch_ms`` and ``single_us`` (per engine: median, q1, q3, spread, samples),
        ``batch_ratio`` and ``ivfsearch_ratio`` (faiss time over gpuknn's, i.e.
        gpuknn's throughput as a share of faiss's, per round), ``batch_cpu_ratio``
        (the same with process CPU time: insensitive to threads waiting for a core that
        another process holds), ``single_overhead_us``
        (gpuknn's one-row time minus faiss's, per round), ``added_work``
        (:func:`added_work`), the index settings and :func:`same_results`.
    """
    index = model.index.index
    nprobe = model.index.nprobe
    queries = np.ascontiguousarray(queries[:batch], dtype=np.float32)
    prepared = model.preparation.apply(queries, xp=np)
    rows = queries[:single_rows]
    prepared_rows = prepared[:single_rows]
    batch_calls: dict[str, Callable[[], Any]] = {
        "faiss": lambda: index.search(prepared, k),
        "gpuknn": lambda: model.kneighbors(queries, k),
        "IVFSearch": lambda: model.index.search(prepared, k),
    }
    single_calls: dict[str, Callable[[], float]] = {
        "faiss": lambda: _per_row(lambda row: index.search(row, k), prepared_rows),
        "gpuknn": lambda: _per_row(lambda row: model.kneighbors(row, k), rows),
        "IVFSearch": lambda: _per_row(lambda row: model.index.search(row, k), prepared_rows),
    }
    before = index.nprobe
    index.nprobe = nprobe  # gpuknn passes its own SearchParametersIVF; raw faiss uses this
    try:
        for name in ENGINES:  # warm-up, untimed
            batch_calls[name]()
            single_calls[name]()
        batches = interleaved({name: (lambda call=batch_calls[name]: wall_and_cpu(call))
                               for name in ENGINES}, rounds, [seed, 0], settle_s=settle_s)
        single_s = interleaved(single_calls, rounds, [seed, 1], settle_s=settle_s)
        batch_s = {name: [wall for wall, _ in batches[name]] for name in ENGINES}
        batch_cpu_s = {name: [cpu for _, cpu in batches[name]] for name in ENGINES}
        checked = same_results(model, queries, k)
        added = added_work(model, queries, k=k)
    finally:
        index.nprobe = before
    hp = model.hyperparameters
    return {
        "n_base": int(model.n_indexed), "feature_dim": int(model.feature_dim),
        "index_dim": int(model.preparation.index_dim), "index_type": hp.index_type,
        "metric": hp.index_metric, "nlist": int(index.nlist), "nprobe": int(nprobe),
        "pq_m": model.preparation.pq_m, "k": k, "batch": len(queries),
        "single_rows": len(rows), "rounds": rounds,
        "batch_ms": {name: summary(np.asarray(batch_s[name]) * 1e3) for name in ENGINES},
        "single_us": {name: summary(np.asarray(single_s[name]) * 1e6) for name in ENGINES},
        "batch_ratio": _ratio(batch_s["faiss"], batch_s["gpuknn"]),
        "ivfsearch_ratio": _ratio(batch_s["faiss"], batch_s["IVFSearch"]),
        "batch_cpu_ratio": _ratio(batch_cpu_s["faiss"], batch_cpu_s["gpuknn"]),
        "single_overhead_us": summary([(mine - theirs) * 1e6 for mine, theirs
                                       in zip(single_s["gpuknn"], single_s["faiss"],
                                              strict=True)]),
        "added_work": added,
        **checked,
    }


def _ratio(theirs: Sequence[float], mine: Sequence[float]) -> dict[str, float]:
    """Round by round, a peer's time over gpuknn's: gpuknn's throughput as a share."""
    return summary([t / m for t, m in zip(theirs, mine, strict=True)])


def run(cases: Sequence[tuple[str, int]] = FULL, index_types: Sequence[str] = INDEX_TYPES, *,
        rounds: int = 15, settle_s: float = 0.05, log: Callable[[str], None] = print
        ) -> dict[str, Any]:
    """:func:`compare` for every dataset and index type; one model in memory at a time.

    Parameters
    ----------
    cases : sequence of (dataset, n_base)
        Datasets of :func:`load`, with their base rows.
    index_types : sequence of str
        Each is fitted with gpuknn's defaults (nlists ``auto``, nprobe 5, default pq_m).
    rounds, settle_s
        As in :func:`compare`.
    log : callable
        Progress lines.

    Returns
    -------
    dict
        ``environment`` and ``results``, one :func:`compare` dict per case (with
        ``dataset`` and ``build_s`` added).
    """
    from gpuknn.benchmark.machine import environment  # noqa: PLC0415

    results = []
    for dataset, n_base in cases:
        X, y, queries = load(dataset, n_base, BATCH)
        for index_type in index_types:
            began = time.perf_counter()
            model = fit(X, y, index_type)
            build_s = time.perf_counter() - began
            log(f"{dataset} {n_base} {index_type}: built in {build_s:.1f} s; timing")
            result = compare(model, queries, rounds=rounds, settle_s=settle_s)
            results.append({"dataset": dataset, "build_s": build_s, **result})
            log(markdown_row(results[-1]))
            del model
            gc.collect()
    return {"environment": environment(), "results": results}


HEADER = ("| dataset | index | base | nlist / nprobe / pq_m | faiss ms (4096) | "
          "gpuknn ms (4096) | gpuknn ÷ faiss [q1, q3] | IVFSearch ÷ faiss [q1, q3] | "
          "CPU time: gpuknn ÷ faiss [q1, q3] | "
          "1 row faiss µs | 1 row gpuknn µs | 1-row overhead µs [q1, q3] | "
          "added work µs, 4096 / 1 row | identical |\n"
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def markdown_row(result: dict[str, Any]) -> str:
    """One table row for a :func:`compare` result."""
    batch, single = result["batch_ms"], result["single_us"]
    ratio, layer, extra = (result["batch_ratio"], result["ivfsearch_ratio"],
                           result["single_overhead_us"])
    added, cpu = result["added_work"], result["batch_cpu_ratio"]
    return (f"| {result['dataset']} | {result['index_type']} | "
            f"{result['n_base']:,} x {result['feature_dim']} | "
            f"{result['nlist']} / {result['nprobe']} / {result['pq_m'] or '-'} | "
            f"{batch['faiss']['median']:.1f} | {batch['gpuknn']['median']:.1f} | "
            f"{ratio['median']:.3f}x [{ratio['q1']:.3f}, {ratio['q3']:.3f}] | "
            f"{layer['median']:.3f}x [{layer['q1']:.3f}, {layer['q3']:.3f}] | "
            f"{cpu['median']:.3f}x [{cpu['q1']:.3f}, {cpu['q3']:.3f}] | "
            f"{single['faiss']['median']:.1f} | {single['gpuknn']['median']:.1f} | "
            f"{extra['median']:+.1f} [{extra['q1']:+.1f}, {extra['q3']:+.1f}] | "
            f"{added['kneighbors_batch_us']:.0f} / {added['kneighbors_row_us']:.1f} | "
            f"{'yes' if result['identical'] else 'NO'}"
            f"{' (' + str(result['short_rows']) + ' short rows)' if result['short_rows'] else ''}"
            " |")


def markdown(report: dict[str, Any]) -> str:
    """The Markdown report: the table, then how it was measured."""
    env = report["environment"]
    rows = "\n".join(markdown_row(result) for result in report["results"])
    first = report["results"][0] if report["results"] else {}
    return (f"# gpuknn IVF search overhead over raw faiss (same faiss index)\n\n"
            f"{env['date_utc']}; {env['cpu']}, {env['cores']} cores; "
            f"faiss {env['versions'].get('faiss', '?')}, "
            f"numpy {env['versions'].get('numpy', '?')}.\n\n{HEADER}\n{rows}\n\n"
            f"`gpuknn ÷ faiss` is gpuknn's batch throughput (`KNNModel.kneighbors`, "
            f"{first.get('batch', BATCH)} queries, k={first.get('k', K)}) as a share of raw "
            f"faiss's on the same index object and nprobe: the median over "
            f"{first.get('rounds', '?')} interleaved rounds of the per-round time ratio, "
            f"with its quartiles. `IVFSearch` is gpuknn's index layer alone. `CPU time`: "
            f"the same ratio with process CPU time, which a core taken by another "
            f"process does not inflate. One-row "
            f"times are medians over {first.get('single_rows', SINGLE_ROWS)} single-query "
            f"calls; the overhead is gpuknn's minus faiss's within a round (median and "
            f"quartiles over rounds). `added work`: the time of `kneighbors` with faiss's "
            f"search replaced by a replay of its results, less the replay's (best of 7), "
            f"i.e. gpuknn's own code around faiss. `identical`: "
            f"kneighbors returned faiss's ids (mapped to training rows) and distances "
            f"(square-rooted for L2) bit for bit. faiss gets float32 queries already "
            f"padded for IVFPQ; gpuknn gets the float32 rows.\n")


def main(argv: Sequence[str] | None = None, *, out: Path | None = None) -> dict[str, Any]:
    """Command line: run, print the Markdown table, write ``.json`` and ``.md`` files.

    Parameters
    ----------
    argv : sequence of str, optional
        ``--quick`` (sift-like 200,000 and covtype-like 100,000 rows, 5 rounds),
        ``--rounds N``, ``--settle S``, ``--sift N``, ``--covtype N`` (0 skips a
        dataset), ``--index-type`` (repeatable), ``--out PATH`` (the JSON file; the
        Markdown goes next to it).
    out : Path, optional
        Default for ``--out``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, 5 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (15)")
    parser.add_argument("--settle", type=float, default=0.05, help="pause before each call, s")
    parser.add_argument("--sift", type=int, default=None, help="sift-like base rows")
    parser.add_argument("--covtype", type=int, default=None, help="covtype-like base rows")
    parser.add_argument("--index-type", action="append", choices=INDEX_TYPES, default=None)
    parser.add_argument("--out", type=Path, default=out, help="JSON file to write")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.sift is not None:
        sizes["sift-like"] = args.sift
    if args.covtype is not None:
        sizes["covtype-like"] = args.covtype
    cases = [(name, n) for name, n in sizes.items() if n > 0]
    rounds = args.rounds or (5 if args.quick else 15)
    report = run(cases, args.index_type or INDEX_TYPES, rounds=rounds, settle_s=args.settle)
    report["arguments"] = {"cases": cases, "rounds": rounds, "settle_s": args.settle,
                           "quick": args.quick}
    text = markdown(report)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return report


if __name__ == "__main__":
    main(out=Path("ivf_overhead.json"))
