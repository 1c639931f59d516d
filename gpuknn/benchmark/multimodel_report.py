"""The multi-model benchmark's report as Markdown (``bench/multimodel.py``).

:func:`markdown` turns the report of :func:`gpuknn.benchmark.multimodel.run` into two
tables: each measurement against its peer and goal
(:data:`~gpuknn.benchmark.multimodel.GOALS`), then the many-models runs in detail.
"""

from __future__ import annotations

from typing import Any

from gpuknn.benchmark.multimodel import GOALS


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: the machine, the ratios and goals, the many-models runs."""
    host = report["machine"]
    cpu = host["cpu"]
    lines = ["# Multi-model serving", "",
             f"{cpu.get('model')}, {cpu.get('usable_cpus')} usable cores, Python "
             f"{host['python']}, {host['date_utc']}", "",
             "| measurement | gpuknn multi-model | peer | ratio, median (IQR) | goal |",
             "|---|---:|---:|---:|---:|",
             *_load_rows(report["load"], report["sizes"]["big"]),
             *_invoke_rows(report["invoke"]),
             *_resident_rows(report["many"]),
             "", "| models | workers | load all | load each, p50 | accounted / files | "
             "accounted / resident | invoke a random one, p50 | single-model server, p50 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|",
             *_many_rows(report["many"])]
    return "\n".join(lines) + "\n"


def _load_rows(load: dict[str, Any], rows: int) -> list[str]:
    ratio, cold = load["ratio"], load["cold_ratio"]
    return [f"| load {rows:,} x 128 Flat ({load['model_bytes'] / 2**20:.0f} MiB) | "
            f"{load['server_s']['median']:.3f} s | KNNModel.load "
            f"{load['load_s']['median']:.3f} s | {ratio['median']:.2f}x "
            f"({ratio['q1']:.2f}-{ratio['q3']:.2f}) | <= {GOALS['load']}x |",
            f"| cold start: load and a first 1-row request | "
            f"{load['server_cold_s']['median']:.3f} s | load and a first query "
            f"{load['load_cold_s']['median']:.3f} s | {cold['median']:.2f}x "
            f"({cold['q1']:.2f}-{cold['q3']:.2f}) | |"]


def _invoke_rows(invoke: dict[str, Any]) -> list[str]:
    lines = []
    for size in ("1", "581"):
        row = invoke[size]
        lines.append(f"| invoke, {size} row(s), p50 | {row['multi_p50_s']['median'] * 1e3:.2f} ms"
                     f" | single-model server {row['single_p50_s']['median'] * 1e3:.2f} ms | "
                     f"{row['ratio']['median']:.3f}x ({row['ratio']['q1']:.3f}-"
                     f"{row['ratio']['q3']:.3f}) | <= {GOALS['invoke_p50']}x |")
    return lines


def _resident_rows(runs: list[dict[str, Any]]) -> list[str]:
    return [f"| {many['models']:,} models, {many['workers']} worker(s): resident "
            f"(PSS added) | {many['added_pss_bytes'] / 2**20:.0f} MiB | their files "
            f"{many['files_bytes'] / 2**20:.0f} MiB | {many['resident_ratio']:.2f}x | "
            f"<= {GOALS['resident']}x |" for many in runs]


def _many_rows(runs: list[dict[str, Any]]) -> list[str]:
    return [f"| {many['models']:,} | {many['workers']} | {many['load_all_s']:.1f} s | "
            f"{many['load_each_s']['median'] * 1e3:.1f} ms | "
            f"{many['accounted_ratio']:.2f}x | {many['accounted_over_resident']:.2f}x | "
            f"{many['invoke_random_s']['median'] * 1e3:.2f} ms | "
            f"{many['invoke_single_s']['median'] * 1e3:.2f} ms |" for many in runs]
