"""Benchmark outputs: JSON lines, a Markdown table and PNG plots, with the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpuknn.benchmark.machine import environment
from gpuknn.benchmark.measure import SAMPLE_SECONDS, WIDE_SPREAD


def write(results: list[dict[str, Any]], dataset: dict[str, Any], out: Path) -> list[Path]:
    """``results.jsonl``, ``results.md`` and the plots in ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    lines = [json.dumps({"dataset": dataset, **row, "environment": env}) for row in results]
    written = [out / "results.jsonl", out / "results.md"]
    written[0].write_text("\n".join(lines) + "\n")
    written[1].write_text(markdown(results, dataset, env))
    return written + plots(results, dataset, out)


def markdown(results: list[dict[str, Any]], dataset: dict[str, Any], env: dict) -> str:
    """A table, one row per engine setting: throughput (median and interquartile range over
    interleaved rounds), gpuknn's throughput over each peer's, recall, accuracy, latency,
    memory, and, when the rows carry ``memory`` (``gpuknn bench --memory``), what the built
    engine holds and the peak of its build over the raw vectors' bytes."""
    sizes = sorted({int(size) for row in results for size in row["latency"]})
    memory = any("memory" in row for row in results)
    head = (f"# `gpuknn bench`: {dataset['name']} ({dataset['n_base']:,} x {dataset['dim']}, "
            f"{dataset['n_queries']:,} queries, k={results[0]['k'] if results else '?'})\n\n"
            f"{env['date_utc']}; {env['cpu']}, {env['cores']} cores"
            f"{'; ' + env['gpu']['name'] if env['gpu'] else ''}.\n\n")
    latency_heads = " | ".join(f"p50 / p99 ms, {size:,} {'query' if size == 1 else 'queries'}"
                               for size in sizes)
    memory_heads = " model ÷ raw | build peak ÷ raw |" if memory else ""
    rows = [f"| engine | index | build s | queries/s (IQR) | gpuknn ÷ this (IQR) | recall@k | "
            f"accuracy | {latency_heads} | peak host MiB |{memory_heads}",
            "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(sizes) + "---:|"
            + "---:|---:|" * memory]
    wide = False
    for row in results:
        throughput, ratio = _throughput_cell(row), _ratio_cell(row)
        wide = wide or "(wide)" in throughput + ratio
        lat = [f"{row['latency'][str(size)]['p50_ms']:.2f} / "
               f"{row['latency'][str(size)]['p99_ms']:.2f}" for size in sizes]
        accuracy = f"{row['accuracy']:.4f}" if "accuracy" in row else ""
        rows.append(f"| {row['engine']} | {row['index']} | {row['build_s']:.2f} | "
                    f"{throughput} | {ratio} | {row['recall']:.4f} | {accuracy} | "
                    f"{' | '.join(lat)} | {row['peak_host_mib_added']:.0f} |"
                    f"{_memory_cells(row) if memory else ''}")
    return head + "\n".join(rows) + _notes(results, wide) + (_MEMORY_NOTE if memory else "")


def _memory_cells(row: dict[str, Any]) -> str:
    """`` held | peak |`` as ratios to the raw vectors (blank for a row without them)."""
    stats = row.get("memory")
    if stats is None:
        return " | |"
    return f" {stats['held_ratio']:.2f}x | {stats['peak_ratio']:.2f}x |"


_MEMORY_NOTE = (
    "\n`model ÷ raw` is the resident memory the engine added during its build and still "
    "holds after it (garbage collected, the index alive), over the raw base vectors' bytes "
    "(`X.nbytes`, float32); `build peak ÷ raw` is the highest resident memory during the "
    "build over the same bytes, sampled every 5 ms from /proc. The engines are built one "
    "after the other in one process: the first build of a library also pays for loading "
    "it (a few MiB of thread pools and code), and memory an earlier build freed and the "
    "allocator kept can serve a later one, so read these ratios on large data sets; "
    "`python bench/memory.py` measures each engine in a fresh process.\n")


def _throughput_cell(row: dict[str, Any]) -> str:
    stats = row["throughput"]
    return (f"{stats['median']:,.0f} ({stats['q1']:,.0f}-{stats['q3']:,.0f})"
            f"{_wide(stats)}")


def _ratio_cell(row: dict[str, Any]) -> str:
    stats = row.get("gpuknn_ratio")
    if stats is None:
        return ""
    return f"{stats['median']:.2f}x ({stats['q1']:.2f}-{stats['q3']:.2f}){_wide(stats)}"


def _wide(stats: dict[str, float]) -> str:
    return " (wide)" if stats["spread"] > WIDE_SPREAD else ""


def _notes(results: list[dict[str, Any]], wide: bool) -> str:
    rounds = min((row["throughput"]["samples"] for row in results), default=0)
    text = (f"\n\nThroughput is the median over {rounds} or more interleaved rounds (every "
            "engine timed once per round, in random order, each sample at least "
            f"{SAMPLE_SECONDS * 1000:.0f} ms of searching), with the interquartile range. "
            "`gpuknn ÷ this` is the median, over rounds, of gpuknn's throughput divided by this "
            "engine's in the same round, for the same index type (the exact one for "
            "scikit-learn and hnswlib); above 1, gpuknn is faster. Recall is against exact "
            "search; accuracy is the majority vote of the k neighbours' labels. Latency is "
            "one call with that many queries (the largest size is capped at the query "
            "set). Peak host memory is the resident memory the engine added while building "
            "and searching once, in MiB.\n")
    if wide:
        text += (f"\n**(wide)**: the interquartile range is more than "
                 f"{WIDE_SPREAD:.0%} of the median: the machine was busy or its speed drifted "
                 "during the run. Rerun it on an idle machine, or with a larger `--min-time`.\n")
    return text


def plots(results: list[dict[str, Any]], dataset: dict[str, Any], out: Path) -> list[Path]:
    """Throughput against recall, and latency against batch size (PNG; needs matplotlib)."""
    try:
        import matplotlib  # noqa: PLC0415 - optional: the bench extra

        matplotlib.use("Agg")
        from matplotlib import pyplot  # noqa: PLC0415
    except ImportError:
        return []
    title = f"{dataset['name']}: {dataset['n_base']:,} x {dataset['dim']}"
    figure, axes = pyplot.subplots(figsize=(7, 5))
    for row in results:
        colour, marker = _style(row)
        axes.scatter(row["recall"], row["queries_per_s"], s=70, color=colour, marker=marker,
                     label=_label(row), edgecolors="black", linewidths=0.5)
    axes.set(xlabel="recall@k", ylabel="queries / s, median (log)", yscale="log",
             title=f"Throughput vs recall, {title}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    throughput = out / "throughput_vs_recall.png"
    figure.savefig(throughput, dpi=110, bbox_inches="tight")
    pyplot.close(figure)
    figure, axes = pyplot.subplots(figsize=(7, 5))
    for row in results:
        colour, marker = _style(row)
        sizes = sorted(int(b) for b in row["latency"])
        axes.plot(sizes, [row["latency"][str(b)]["p50_ms"] for b in sizes], marker=marker,
                  color=colour, linestyle="-" if row["engine"] == "gpuknn" else "--",
                  label=_label(row))
    axes.set(xlabel="queries per call (log)", ylabel="p50 latency, ms (log)", xscale="log",
             yscale="log", title=f"Latency vs batch size, {title}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    latency = out / "latency_vs_batch.png"
    figure.savefig(latency, dpi=110, bbox_inches="tight")
    pyplot.close(figure)
    return [throughput, latency]


# One colour per index type, so gpuknn and faiss on the same index pair up; one marker
# per engine.
_COLOURS = {"faiss.Flat": "tab:blue", "faiss.IVFFlat": "tab:orange",
            "faiss.IVFPQ": "tab:green", "brute": "tab:purple", "HNSW": "tab:red"}
_MARKERS = {"gpuknn": "o", "faiss": "s", "sklearn": "^", "hnswlib": "D"}


def _style(row: dict[str, Any]) -> tuple[str, str]:
    return _COLOURS.get(row["index"], "tab:gray"), _MARKERS.get(row["engine"], "x")


def _label(row: dict[str, Any]) -> str:
    return f"{row['engine']} {row['index'].removeprefix('faiss.')} ({row['device']})"
