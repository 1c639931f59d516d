"""The report of the data-layer read benchmark (:mod:`gpuknn.benchmark.io_compare`): a row
per timed reader, the ratios between readers, the issue's targets and the Markdown.

It needs only the readers' times and sizes (any object with ``key``, ``label``, ``scope``,
``nbytes``, ``n_records``, ``times`` and ``cpu_times``) and the JSON report.
"""

from __future__ import annotations

from typing import Any

from gpuknn.benchmark import timed

# The issue's targets: gpuknn read >= 30x the SDK's throughput and <= 5x the copy floor's
# time for RecordIO, >= 10x numpy.loadtxt's throughput for CSV.
TARGETS = {"vs_sdk": 30.0, "x_copy_floor": 5.0, "vs_loadtxt": 10.0}


def row(workload: str, op: Any) -> dict[str, Any]:
    """One reader's row: sizes, every time, best and median, MB/s, records/s and cores."""
    stats = timed.best_median_cores(op.times, op.cpu_times)
    best, median = stats["best_s"], stats["median_s"]
    return {"workload": workload, "key": op.key, "label": op.label, "scope": op.scope,
            "bytes": op.nbytes, "records": op.n_records, "times_s": op.times,
            "cpu_times_s": op.cpu_times, "best_s": best, "median_s": median,
            "mb_per_s_best": op.nbytes / best / 1e6,
            "records_per_s_best": op.n_records / best,
            "mb_per_s_median": op.nbytes / median / 1e6,
            "cores_used_best": stats["cores_used_best"]}


def speed_ratio(a: Any, b: Any) -> dict[str, float]:
    """a's throughput over b's (bytes/s), of best times and median of per-round ratios."""
    return timed.time_ratio(b.times, a.times, scale=a.nbytes / b.nbytes)


def time_ratio(a: Any, b: Any) -> dict[str, float]:
    """a's time over b's, of best times and median of per-round ratios."""
    return timed.time_ratio(a.times, b.times)


def ratios(kind: str, ops: dict[str, Any]) -> dict[str, Any]:
    """gpuknn against the floors and its peers, for a ``"recordio"`` or ``"csv"`` workload.

    Parameters
    ----------
    kind : str
        The workload's kind.
    ops : dict
        Its timed readers by key; the SDK's may be absent.
    """
    out: dict[str, Any] = {}
    if kind == "recordio":
        for key in ("gpuknn.read", "gpuknn.iter_batches"):
            name = key.split(".")[1]
            out[f"{name}_x_copy_floor"] = time_ratio(ops[key], ops["floor.copy"])
            out[f"{name}_x_read_bytes_floor"] = time_ratio(ops[key], ops["floor.read_bytes"])
            if "sdk.read_records" in ops:
                out[f"{name}_vs_sdk"] = speed_ratio(ops[key], ops["sdk.read_records"])
        if "sdk.read_records" in ops:
            out["read_prefix_vs_sdk_same_bytes"] = speed_ratio(ops["gpuknn.read_prefix"],
                                                               ops["sdk.read_records"])
    else:
        out["read_vs_loadtxt"] = speed_ratio(ops["gpuknn.read"], ops["numpy.loadtxt"])
        out["read_vs_pandas"] = speed_ratio(ops["gpuknn.read"], ops["pandas.read_csv"])
        out["pandas_vs_loadtxt"] = speed_ratio(ops["pandas.read_csv"], ops["numpy.loadtxt"])
        out["read_x_read_bytes_floor"] = time_ratio(ops["gpuknn.read"], ops["floor.read_bytes"])
    return out


def targets(workloads: list[dict[str, Any]], missing: str | None = None) -> list[dict[str, Any]]:
    """Each workload's ratio against the issue's targets: met, not met or not measured.

    Parameters
    ----------
    workloads : list of dict
        The report's workload entries (``name``, ``kind``, ``ratios``).
    missing : str, optional
        Why the SDK is missing: the note of a target that was not measured.
    """
    rows = []
    for w in workloads:
        wanted = ([("gpuknn read ≥ 30x SDK throughput", "read_vs_sdk", TARGETS["vs_sdk"], True),
                   ("gpuknn read ≤ 5x the copy floor's time", "read_x_copy_floor",
                    TARGETS["x_copy_floor"], False)]
                  if w["kind"] == "recordio" else
                  [("gpuknn CSV read ≥ 10x numpy.loadtxt throughput", "read_vs_loadtxt",
                    TARGETS["vs_loadtxt"], True)])
        for text, key, bound, at_least in wanted:
            value = w["ratios"].get(key)
            if value is None:
                rows.append({"workload": w["name"], "target": text, "value": None,
                             "met": None, "note": missing})
                continue
            best, paired = value["of_best"], value["median_paired"]
            met = best >= bound if at_least else best <= bound
            rows.append({"workload": w["name"], "target": text, "value": best,
                         "median_paired": paired, "met": met})
    return rows


def ratio_text(value: dict[str, float] | None) -> str:
    """``best (median paired)`` to one decimal, or ``-``."""
    if value is None:
        return "-"
    return f"{value['of_best']:.1f} ({value['median_paired']:.1f})"


def markdown(report: dict[str, Any]) -> str:
    """The whole report: the run, the SDK and writer notes, the targets and every workload."""
    env = report["environment"]
    v = env["versions"]
    missing = None if env["sdk"] == "present" else env["sdk"]
    lines = [
        "# gpuknn data layer: read throughput",
        "",
        f"Run {env['date_utc']} on `{env['hostname']}` ({env['cpu']['model']}, "
        f"{env['cpu']['usable_cpus']} usable CPUs) with `{env['python_executable']}`: "
        f"Python {env['python']}, gpuknn {v['gpuknn']}, numpy {v['numpy']}, pandas "
        f"{v['pandas']}, protobuf {v['protobuf']} ({env['protobuf_implementation']} backend), "
        f"sagemaker {v['sagemaker'] or 'not installed'}.",
        "",
        f"{report['repeats']} interleaved rounds (random order, {report['settle_s']} s pause "
        "before each call) after one untimed warm-up; all files are in the page cache. "
        "MB/s and records/s come from the **best** time; the median time is beside it. "
        "Ratios read \"best (median over rounds of the within-round ratio)\". "
        "`gpuknn ÷ this` is gpuknn `read`'s throughput over this row's (above 1, gpuknn is "
        "faster). `x copy` is this row's time over the time of one `bytearray` copy of the "
        "whole file's bytes (the memory-bandwidth floor). `cores` is process CPU time over "
        "wall time in the best round (pandas >= 3.1 splits a CSV file path of 5 MB or more "
        "across threads).",
        "",
    ]
    if missing:
        lines += [f"**SDK rows skipped: {missing}.** Run with a Python that has the "
                  "SageMaker SDK v2 to measure the gpuknn/SDK ratios.", ""]
    else:
        lines += [f"**The SDK is timed on the first {report['sdk_records']:,} records of each "
                  "RecordIO file** (a prefix file cut at a record boundary), gpuknn on the "
                  "whole file and on that prefix; throughputs are compared per byte.", ""]
    lines += [writer_line(report["writer_check"]), ""]
    lines += ["## Targets", "", "| Workload | Target | Measured | Met |", "|---|---|---:|---|"]
    for t in report["targets"]:
        measured = ("not measured" if t["value"] is None else
                    f"{t['value']:.1f}x ({t['median_paired']:.1f}x)")
        met = "n/a" if t["met"] is None else ("met" if t["met"] else "**not met**")
        lines.append(f"| {t['workload']} | {t['target']} | {measured} | {met} |")
    lines.append("")
    for w in report["workloads"]:
        lines += workload_lines(w, [r for r in report["rows"] if r["workload"] == w["name"]])
    return "\n".join(lines) + "\n"


def writer_line(writer: dict[str, Any]) -> str:
    """The writer check in one sentence."""
    if "skipped" in writer:
        return f"Writer: check skipped ({writer['skipped']})."
    return ("Writer: gpuknn `write_recordio` output is "
            + ("byte-identical" if writer["byte_identical"] else "**NOT byte-identical**")
            + " to the SDK's `write_numpy_to_dense_tensor` on "
            + ", ".join(writer["cases"]) + ".")


def workload_lines(w: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """One workload's heading, table, ratios, checks, load averages and profile."""
    by_key = {r["key"]: r for r in rows}
    g = by_key["gpuknn.read"]
    copy = by_key.get("floor.copy")
    lines = [f"## {w['name']}", "",
             f"{w['description']}; {w['bytes'] / 1e6:,.1f} MB, {w['records']:,} records; "
             f"written in {w['write_seconds']:.1f} s.", "",
             "| Engine / operation | scope | MB | best s | median s | MB/s | records/s "
             "| cores | gpuknn ÷ this | x copy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["key"] == "gpuknn.read":
            vs = "1.0"
        else:
            vs = f"{(g['bytes'] / g['best_s']) / (r['bytes'] / r['best_s']):.1f}"
        x_copy = "-" if copy is None or r["bytes"] != copy["bytes"] else \
            f"{r['best_s'] / copy['best_s']:.2f}"
        lines.append(f"| {r['label']} | {r['scope']} | {r['bytes'] / 1e6:,.1f} | "
                     f"{r['best_s']:.4f} | {r['median_s']:.4f} | {r['mb_per_s_best']:,.1f} | "
                     f"{r['records_per_s_best']:,.0f} | {r['cores_used_best']:.2f} | {vs} | "
                     f"{x_copy} |")
    ratio_lines = [f"`{k}` {ratio_text(val)}" for k, val in w["ratios"].items()]
    checks = "; ".join(f"{k}: {val}" for k, val in w["checks"].items())
    lines += ["", "Ratios: " + ", ".join(ratio_lines) + ".", "", f"Checks: {checks}.", "",
              f"Load average (1, 5, 15 min) before / after timing: {w['loadavg_before']} / "
              f"{w['loadavg_after']}.", ""]
    prof = w["profile_read"]
    lines += [f"cProfile of one gpuknn `read` (total {prof[0]['total_s']:.3f} s under the "
              "profiler), top functions by own time: "
              + "; ".join(f"`{e['function']}` {e['own_s']:.3f} s ({100 * e['own_share']:.0f}%)"
                          for e in prof[1:7]) + ".", ""]
    return lines
