"""Benchmark outputs: JSON lines, a Markdown table and PNG plots, with the environment."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Any

from gpuknn import _backend
from gpuknn._backend import usable_cores
from gpuknn._version import __version__


def environment() -> dict[str, Any]:
    """CPU, cores, BLAS (threadpoolctl: library, version, core type), GPU, versions."""
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo()
                if line.startswith("model name")), platform.processor())
    versions = {"gpuknn": __version__, "python": sys.version.split()[0]}
    for name in ("numpy", "faiss", "sklearn", "hnswlib", "cupy"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    gpu = None
    if _backend.has_gpu():
        cp = _backend.array_module("gpu")
        gpu = {"name": _backend.device_name(cp),
               "driver": cp.cuda.runtime.driverGetVersion()}
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "cpu": cpu, "cores": usable_cores(), "platform": platform.platform(), "gpu": gpu,
            "blas": [{key: pool.get(key) for key in ("internal_api", "version",
                                                     "architecture", "num_threads")}
                     for pool in threadpool_info()],
            "versions": versions}


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


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
    """A table, one row per engine setting, with gpuknn's throughput over each peer's."""
    own = {row["index"]: row["queries_per_s"] for row in results if row["engine"] == "gpuknn"}
    exact_qps = own.get("faiss.Flat")
    head = (f"# `gpuknn bench`: {dataset['name']} ({dataset['n_base']:,} x {dataset['dim']}, "
            f"{dataset['n_queries']:,} queries, k={results[0]['k'] if results else '?'})\n\n"
            f"{env['date_utc']}; {env['cpu']}, {env['cores']} cores"
            f"{'; ' + env['gpu']['name'] if env['gpu'] else ''}.\n\n")
    rows = ["| engine | index | build s | queries/s | gpuknn ÷ this | recall@k | "
            "accuracy | p50 / p99 ms, 1 | p50 / p99 ms, 64 | p50 / p99 ms, 4096 | "
            "peak host MiB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results:
        mine = own.get(row["index"], exact_qps)
        ratio = f"{mine / row['queries_per_s']:.2f}x" if mine and row["engine"] != "gpuknn" else ""
        lat = [f"{row['latency'][b]['p50_ms']:.2f} / {row['latency'][b]['p99_ms']:.2f}"
               for b in ("1", "64", "4096")]
        accuracy = f"{row['accuracy']:.4f}" if "accuracy" in row else ""
        rows.append(f"| {row['engine']} | {row['index']} | {row['build_s']:.2f} | "
                    f"{row['queries_per_s']:,.0f} | {ratio} | {row['recall']:.4f} | {accuracy} | "
                    f"{' | '.join(lat)} | {row['peak_host_mib_added']:.0f} |")
    notes = ("\n\n`gpuknn ÷ this` compares gpuknn's throughput with the same index type (the "
             "exact one for scikit-learn and hnswlib). Recall is against exact search; "
             "accuracy is the majority vote of the k neighbours' labels. Peak host memory is "
             "the resident memory the engine added while building and searching.\n")
    return head + "\n".join(rows) + notes


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
        axes.scatter(row["recall"], row["queries_per_s"], s=60, label=_label(row))
    axes.set(xlabel="recall@k", ylabel="queries / s (log)", yscale="log",
             title=f"Throughput vs recall, {title}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    throughput = out / "throughput_vs_recall.png"
    figure.savefig(throughput, dpi=110, bbox_inches="tight")
    pyplot.close(figure)
    figure, axes = pyplot.subplots(figsize=(7, 5))
    for row in results:
        sizes = [int(b) for b in row["latency"]]
        axes.plot(sizes, [row["latency"][str(b)]["p50_ms"] for b in sizes], marker="o",
                  label=_label(row))
    axes.set(xlabel="queries per call (log)", ylabel="p50 latency, ms (log)", xscale="log",
             yscale="log", title=f"Latency vs batch size, {title}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    latency = out / "latency_vs_batch.png"
    figure.savefig(latency, dpi=110, bbox_inches="tight")
    pyplot.close(figure)
    return [throughput, latency]


def _label(row: dict[str, Any]) -> str:
    return f"{row['engine']} {row['index'].removeprefix('faiss.')} ({row['device']})"
