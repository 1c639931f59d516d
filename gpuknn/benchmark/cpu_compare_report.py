"""The Markdown report of the CPU comparison (:mod:`gpuknn.benchmark.cpu_compare`): one table
per workload with its checks, then the environment; it reads only the JSON report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpuknn.benchmark.cpu_compare import STATISTIC, TIE_RTOL


def markdown(report: dict[str, Any]) -> str:
    """The whole report: the method, a table per workload and the environment.

    Parameters
    ----------
    report : dict
        What :func:`gpuknn.benchmark.cpu_compare.run` returns (or its JSON, read back).
    """
    env = report["environment"]
    lines = [
        "# gpuknn CPU comparison: exact search and prediction",
        "",
        f"Run {env['date_utc']} on `{env['hostname']}`; {report['repeats']} interleaved "
        f"repetitions (each in a random order, {report['settle_s']} s pause before every "
        f"call) after one warm-up; times are the **{STATISTIC}** (smallest) of the "
        "repetitions. `x GEMM` is the best time as a multiple of the best time of a bare "
        "numpy float32 `Q @ X.T` of the same shape. `gpuknn ÷ this` is gpuknn's speed over "
        "this row's, for the same operation (above 1, gpuknn is faster): first the ratio of "
        "the best times, then, in brackets, the median over repetitions of the ratio within "
        "one repetition. `cores` is process CPU time over wall time in the best repetition.",
        "",
    ]
    for w in report["workloads"]:
        lines += workload_table(w, [r for r in report["rows"] if r["workload"] == w["name"]])
    lines += environment_lines(env)
    return "\n".join(lines) + "\n"


def workload_table(w: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """One workload's heading, description, table of rows and paragraph of checks."""
    gk = {r["operation"]: r for r in rows if r["engine"] == "gpuknn"}
    lines = [f"## {w['name']}", "", w["description"] + ".", "",
             "| Engine / operation | best s | median s | queries/s | x GEMM | cores "
             "| gpuknn ÷ this |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "-"
        if r["operation"] in gk and r["engine"] != "gpuknn":
            both = gk[r["operation"]]["speed_ratio_vs"][f"{r['engine']}:{r['operation']}"]
            ratio = f"{both['of_best']:.2f} ({both['median_paired']:.2f})"
        label = r["label"]
        if "gflops_best" in r:
            label += f" ({r['gflops_best']:.0f} GFLOP/s)"
        lines.append(f"| {label} | {r['best_s']:.4f} | {r['median_s']:.4f} | "
                     f"{r['qps_best']:,.0f} | {r['x_gemm_floor']:.2f} | "
                     f"{r['cores_used_best']:.2f} | {ratio} |")
    return [*lines, "", checks_paragraph(w), ""]


def checks_paragraph(w: dict[str, Any]) -> str:
    """Agreement with faiss, accuracy, fit times and load averages of one workload."""
    c = w["checks"]
    return (f"Checks on {c['untied_rows']:,} of {c['rows']:,} rows without a tie at the "
            f"k-th faiss distance (relative gap > {TIE_RTOL:g}): gpuknn's neighbour sets equal "
            f"faiss's on {_pct(c['gpuknn_vs_faiss_index_sets_untied'])} (same order: "
            f"{_pct(c['gpuknn_vs_faiss_index_order_untied'])}), predictions equal faiss + vote "
            f"on {_pct(c['gpuknn_vs_faiss_predict_untied'])} (all rows: "
            f"{_pct(c['gpuknn_vs_faiss_predict_all'])}); sklearn's sets "
            f"{_pct(c['sklearn_vs_faiss_index_sets_untied'])}, predictions "
            f"{_pct(c['sklearn_vs_faiss_predict_untied'])} (all rows: "
            f"{_pct(c['sklearn_vs_faiss_predict_all'])}). Max relative difference of squared "
            f"distances, gpuknn vs faiss: {_sci(c['gpuknn_sq_distance_max_rel_diff'])}. "
            "Accuracy: " + ", ".join(f"{e} {a:.4f}" for e, a in c["accuracy"].items())
            + ". Fit (one-off, not interleaved): "
            + ", ".join(f"{e} {s:.3f} s" for e, s in w["fit_seconds"].items())
            + ". Load average (1, 5, 15 min) before / after: "
            + f"{_load(w['loadavg_before'])} / {_load(w['loadavg_after'])}.")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def _load(values: list[float] | None) -> str:
    return "n/a" if values is None else ", ".join(f"{v:.2f}" for v in values)


def environment_lines(env: dict[str, Any]) -> list[str]:
    """The environment section: CPU, platform, versions, faiss's build and thread pools."""
    cpu = env["cpu"]
    started = ("started before faiss was imported"
               if env["sklearn_openmp_started_before_faiss_import"] else
               "**not** started before faiss was imported (faiss was loaded already)")
    lines = ["## Environment", "",
             f"- CPU: {cpu['model']}; {cpu['logical_cpus']} logical CPUs "
             f"({cpu['usable_cpus']} usable, {cpu['physical_cores']} physical cores); "
             f"flags: {', '.join(cpu['simd_flags'])}",
             f"- {env['platform']}, Python {env['python']}",
             "- " + ", ".join(f"{n} {v}" for n, v in env["versions"].items()),
             f"- faiss compile options: `{env['faiss_compile_options'].strip()}`; "
             f"OpenMP max threads {env['faiss_omp_max_threads']}; scikit-learn's OpenMP "
             f"{started} (see `gpuknn.benchmark.cpu_compare.load_faiss`)",
             f"- thread variables: {env['thread_env'] or 'none set'}",
             "", "| Library | API | version | architecture | threads | threading | file |",
             "|---|---|---|---|---:|---|---|"]
    for lib in env["threadpool_info"]:
        lines.append(f"| {lib.get('prefix')} | {lib.get('internal_api')} | "
                     f"{lib.get('version')} | {lib.get('architecture', '-')} | "
                     f"{lib.get('num_threads')} | {lib.get('threading_layer', '-')} | "
                     f"{Path(lib.get('filepath', '')).name} |")
    return lines
