"""The report of ``bench/train_covtype.py``: the jobs summarised, the goals judged, and
the Markdown page.

:func:`summarise` gives the best, median and worst of each value over the File-mode jobs
that succeeded; :func:`verdicts` judges the two goals (the whole job under a time, the
training pass at least a rate) in the best and in every job; :func:`markdown` writes
``train_covtype.md`` from the JSON report alone, so that a saved report can be rendered
again.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

PHASE_LABELS = {"startup_s": "start-up (Popen to first log line)",
                "read_sample_s": "reading + sampling",
                "index_build_s": "index build", "model_write_s": "model write",
                "test_scoring_s": "test scoring", "exit_s": "exit (last log line to exit)"}
SUMMARY_KEYS = ("wall_s", "throughput_metric", "read_records_per_s", "startup_s",
                "read_sample_s", "index_build_s", "fit_s", "model_write_s", "test_scoring_s",
                "job_in_python_s", "exit_s", "cpu_s", "cores_used", "max_rss_mib")
CONTENDED_SHARE = 0.15  # other processes' CPU time over a job's wall time that flags it


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best, median and worst of the File-mode repetitions that exited with 0.

    Parameters
    ----------
    runs : list of dict
        Parsed jobs (:func:`gpuknn.benchmark.train_jobs.parse_job`).

    Returns
    -------
    dict
        ``{key: {"best", "median", "worst"}}`` for each value the jobs have (the highest
        rate or the lowest time is best) and the sorted distinct ``test_accuracy``; empty
        when every job failed.
    """
    good = [r for r in runs if r["exit_code"] == 0]
    if not good:
        return {}
    summary: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in good if r.get(key) is not None]
        if values:
            higher_is_better = "per_s" in key or key == "throughput_metric"
            summary[key] = {"best": (max if higher_is_better else min)(values),
                            "median": statistics.median(values),
                            "worst": (min if higher_is_better else max)(values)}
    summary["test_accuracy"] = sorted({r["test_accuracy"] for r in good})
    return summary


def verdicts(summary: dict[str, Any], n_runs: int, targets: dict[str, float],
             ) -> dict[str, Any]:
    """Each target against the best and the worst File-mode repetition.

    Parameters
    ----------
    summary : dict
        :func:`summarise`'s result.
    n_runs : int
        File-mode jobs run.
    targets : dict
        ``job_seconds_below`` and ``train_records_per_s_at_least``.

    Returns
    -------
    dict
        ``job_below_20_s`` and ``train_pass_at_least_1M_records_per_s``, each with the best
        and worst value and whether the target is met in the best and in all jobs; empty
        when every job failed.
    """
    if not summary:
        return {}
    job = summary["wall_s"]
    rate = summary["throughput_metric"]
    limit, floor = targets["job_seconds_below"], targets["train_records_per_s_at_least"]
    return {
        "job_below_20_s": {"best_s": job["best"], "worst_s": job["worst"],
                           "met_in_best": job["best"] < limit,
                           "met_in_all": job["worst"] < limit, "repetitions": n_runs},
        "train_pass_at_least_1M_records_per_s": {
            "best": rate["best"], "worst": rate["worst"], "met_in_best": rate["best"] >= floor,
            "met_in_all": rate["worst"] >= floor, "repetitions": n_runs},
    }


def markdown(report: dict[str, Any]) -> str:
    """The Markdown page of a report (:mod:`gpuknn.benchmark.train_covtype`'s JSON).

    Parameters
    ----------
    report : dict
        The whole report, as written to ``train_covtype.json``.

    Returns
    -------
    str
        The header, then (unless every File-mode job failed) the headline against
        SageMaker, the targets, every job, the phases, the scoring breakdown and profile
        when measured, and the environment.
    """
    lines = _header_lines(report)
    if not report["summary"]:
        lines += ["**Every File-mode job failed**; see `file_runs[].log_tail` in the JSON.", ""]
        return "\n".join(lines)
    lines += _headline_lines(report)
    lines += _target_lines(report["targets"])
    lines += _job_lines(report)
    lines += _phase_lines(report["summary"])
    lines += _analysis_lines(report)
    lines += _environment_lines(report)
    return "\n".join(lines)


def _header_lines(report: dict[str, Any]) -> list[str]:
    env, data = report["environment"], report["data"]
    cpu = env["cpu"]
    return [
        "# gpuknn train on a covtype-shaped set vs SageMaker k-NN's log",
        "",
        f"{env['date_utc']}, {cpu['model']}, {cpu['usable_cpus']} usable of "
        f"{cpu['logical_cpus']} logical CPUs, {env['memory_gib']} GiB; Python "
        f"{env['python']}, gpuknn {env['versions']['gpuknn']}, numpy "
        f"{env['versions']['numpy']}, faiss {env['versions']['faiss']}; training device: "
        f"{env['training_device']}.",
        "",
        f"gpuknn measured: `{env['training_gpuknn_file']}` (training process); "
        f"{_source_line(env['gpuknn_source'])}"
        + ("" if env.get("gpuknn_source_end", env["gpuknn_source"]) == env["gpuknn_source"]
           else " **The source changed during the run** (see `gpuknn_source_end`)."),
        "",
        f"Data: {data['train_rows']:,} train + {data['test_rows']:,} test rows x "
        f"{data['features']} ({data['dtype']}), RecordIO {data['train_bytes']:,} + "
        f"{data['test_bytes']:,} bytes, seed {data['seed']} (generated in "
        f"{data['generate_s']} s, written in {data['write_recordio_s']} s, not timed). "
        f"Hyperparameters (strings, as the SDK writes them): "
        f"`{json.dumps(report['hyperparameters'], sort_keys=True)}`.",
        "",
    ]


def _headline_lines(report: dict[str, Any]) -> list[str]:
    cpu, summary, sm = report["environment"]["cpu"], report["summary"], report["sagemaker"]
    wall, rate, read = summary["wall_s"], summary["throughput_metric"], \
        summary.get("read_records_per_s", {})
    low, high = sm["throughput_records_per_s"]
    billed = sm["billed_seconds"]
    accuracy = ", ".join(f"{a:.4f}" for a in summary["test_accuracy"])
    return [
        f"## Headline ({len(report['file_runs'])} File-mode jobs: best, median in brackets)",
        "",
        f"| | gpuknn, this box ({cpu['usable_cpus']} cores) | SageMaker, {sm['instance']} "
        "| gpuknn vs SageMaker |",
        "|---|---:|---:|---|",
        f"| Whole job, wall (s) | {_s(wall['best'])} ({_s(wall['median'])}) | "
        f"{billed['2018']} (2018) / {billed['2021']} (2021) billed | "
        f"{billed['2018'] / wall['best']:.1f}x / {billed['2021'] / wall['best']:.1f}x shorter "
        "(indicative: billed time includes instance start-up) |",
        f"| Train pass, records/s (`#throughput_metric`) | {_k(rate['best'])} "
        f"({_k(rate['median'])}) | {_k(low)}-{_k(high)} | "
        f"{rate['best'] / high:.2f}x of 536k, {rate['best'] / low:.2f}x of 385k "
        f"(median {rate['median'] / high:.2f}x, {rate['median'] / low:.2f}x) |",
        f"| Reading + sampling only, records/s | {_k(read.get('best'))} "
        f"({_k(read.get('median'))}) | | {_s((read.get('best') or 0) / high)}x of 536k, "
        f"{_s((read.get('best') or 0) / low)}x of 385k |",
        f"| Test accuracy (k=10) | {accuracy} (synthetic set) | {sm['test_accuracy']} "
        "(real covtype) | not comparable: different data |",
        "",
        _reference_line(report.get("reference_accuracy", {}))
        + f"majority class alone {report['data']['majority_class_test_accuracy']}.",
        "",
    ]


def _reference_line(reference: dict[str, Any]) -> str:
    if "accuracy" not in reference:
        return ("Reference accuracy on the synthetic set: not measured in this run "
                "(--no-reference); an earlier run measured 0.9018 with faiss IndexFlatL2 on a "
                "random 200,000-row sample, k=10; ")
    return (f"Reference accuracy on the synthetic set: {reference['accuracy']} "
            f"({reference.get('engine', '')}, random {reference.get('sample_size', '')}-row "
            f"sample, k={reference.get('k', '')}); ")


def _target_lines(verdict: dict[str, Any]) -> list[str]:
    job, pass_ = verdict["job_below_20_s"], verdict["train_pass_at_least_1M_records_per_s"]
    return [
        "## Targets",
        "",
        "| Target | Best | Worst | Met |",
        "|---|---:|---:|---|",
        f"| Whole job, test scoring included, < 20 s | {_s(job['best_s'])} s | "
        f"{_s(job['worst_s'])} s | {_met(job['met_in_best'])} in the best, "
        f"{_met(job['met_in_all'])} in all {job['repetitions']} |",
        f"| Training pass >= 1M records/s | {_k(pass_['best'])} | {_k(pass_['worst'])} | "
        f"{_met(pass_['met_in_best'])} in the best, {_met(pass_['met_in_all'])} in all "
        f"{pass_['repetitions']} |",
        "",
    ]


def _job_lines(report: dict[str, Any]) -> list[str]:
    """The table of every job, its notes, the contended jobs and the Pipe writer."""
    pipe = report.get("pipe_run")
    lines = [
        "## Every job (seconds unless stated)",
        "",
        "| Job | Wall | Start-up | Read + sample | Index build | Model write | Test scoring "
        "| Exit | Job in Python | `#throughput_metric` rec/s | Read + sample rec/s | "
        "Accuracy | CPU s | Cores | Peak RSS MiB | Load before |",
        "|---|" + "---:|" * 15,
    ]
    contended = []
    for run in [*report["file_runs"], *([pipe] if pipe else [])]:
        flag = ""
        if _contended(run):
            flag = " (contended)"
            contended.append(f"{run['mode']} #{run['repetition']}")
        lines.append(_job_row(run, flag))
    lines += [
        "",
        "Start-up is `Popen` to the first log line (interpreter, imports, configuration); "
        "exit is the last log line to the process's end; both from the log's millisecond "
        "timestamps. The other phases are the `in X s` values of the log (10 ms "
        "resolution). `#throughput_metric` is records read / the training pass (reading "
        "and sampling; the index build is logged apart), as gpuknn prints it. Cores = CPU "
        "time / wall.",
        "",
    ]
    if contended:
        lines += [f"**Contended:** during {', '.join(contended)} other processes used more "
                  "than 15 % of a core (/proc/stat): rerun on a quiet machine.", ""]
    if pipe:
        writer = report.get("pipe_writer", {})
        lines += [f"Pipe mode: FIFOs `train_0`, `test_0` fed by a separate writer process "
                  f"(1 MiB chunks); writer report: `{json.dumps(writer)[:400]}`.", ""]
    return lines


def _contended(run: dict[str, Any]) -> bool:
    """Whether other processes used the CPU during a File-mode job.

    The Pipe job's writer process is part of its setup, so it is never flagged.
    """
    others = run.get("others_cpu_s")
    return (run["mode"] != "Pipe" and others is not None
            and others > CONTENDED_SHARE * run["wall_s"])


def _job_row(run: dict[str, Any], flag: str) -> str:
    return (f"| {run['mode']} #{run['repetition']}{flag} | {_s(run['wall_s'])} | "
            f"{_s(run.get('startup_s'))} | {_s(run.get('read_sample_s'))} | "
            f"{_s(run.get('index_build_s'))} | {_s(run.get('model_write_s'))} | "
            f"{_s(run.get('test_scoring_s'))} | {_s(run.get('exit_s'))} | "
            f"{_s(run.get('job_in_python_s'))} | {_k(run.get('throughput_metric'))} | "
            f"{_k(run.get('read_records_per_s'))} | {_s(run.get('test_accuracy'), 4)} | "
            f"{_s(run['cpu_s'], 1)} | {_s(run['cores_used'])} | {run['max_rss_mib']} | "
            f"{run['loadavg_before'][0]} |")


def _phase_lines(summary: dict[str, Any]) -> list[str]:
    wall = summary["wall_s"]
    median = {key: summary[key]["median"] for key in PHASE_LABELS if key in summary}
    total = sum(median.values())
    lines = ["## Phases (median of the File-mode jobs)", "",
             "| Phase | Seconds | Share of the job |", "|---|---:|---:|"]
    for key, label in PHASE_LABELS.items():
        if key in median:
            lines.append(f"| {label} | {median[key]:.2f} | {median[key] / wall['median']:.0%} |")
    lines += [f"| other (whole job - the phase medians above) | {wall['median'] - total:.2f} | "
              f"{(wall['median'] - total) / wall['median']:.0%} |",
              f"| whole job | {wall['median']:.2f} | 100% |", ""]
    return lines


def _analysis_lines(report: dict[str, Any]) -> list[str]:
    """The scoring breakdown and the cProfile tables."""
    lines: list[str] = []
    breakdown = report.get("scoring_breakdown")
    if breakdown:
        lines += _breakdown_lines(breakdown)
    profile = report.get("profile")
    if profile and profile.get("top_cumulative"):
        lines += _profile_lines(profile)
    return lines


def _breakdown_lines(breakdown: dict[str, Any]) -> list[str]:
    lines = [f"## Where test scoring goes (in this process, first {breakdown['queries']:,} "
             f"test rows against a random {breakdown['sample_size']:,}-row sample, "
             f"k={breakdown['k']}, {breakdown['workers']} threads of "
             f"{breakdown['query_chunk']}-query chunks, {breakdown['tile_columns']:,}-column "
             "tiles; best of 3 interleaved rounds)", "",
             "| Variant | Best s | Median s | Scaled to the test channel (s) "
             "| Wall ns per score |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {v['variant']} | {v['seconds']} | {v['median_s']} | "
              f"{v['whole_test_channel_s']} | {v['ns_per_score']} |"
              for v in breakdown["variants"]]
    lines += ["", "A score is one (query, base row) pair. Fraction of the base that a "
              "1-D projection bound (|<q - x, u>| <= |q - x|, u the top principal axis, "
              "queries sorted by projection in chunks of 256, radius = the chunk's largest "
              f"k-th distance) leaves to search: {breakdown['projection_band_fraction']}.",
              ""]
    return lines


def _profile_lines(profile: dict[str, Any]) -> list[str]:
    lines = [f"## cProfile of one File-mode job ({profile['wall_s']} s under the "
             "profiler)", "", "| Function | Calls | Own s | Cumulative s |",
             "|---|---:|---:|---:|"]
    lines += [_profile_row(entry) for entry in profile["top_cumulative"][:12]]
    lines += ["", "| gpuknn function (by cumulative time) | Calls | Own s | Cumulative s |",
              "|---|---:|---:|---:|"]
    lines += [_profile_row(entry) for entry in profile["top_gpuknn"][:25]]
    lines += ["", "| Function (by own time) | Calls | Own s |", "|---|---:|---:|"]
    lines += [f"| `{entry['function']}` | {entry['calls']} | {entry['own_s']} |"
              for entry in profile["top_own"][:15]]
    lines += ["", "cProfile sees only the main thread: the search's worker threads show "
              "up as the main thread waiting (`_thread.lock.acquire` under "
              "`exact.py:search`); the breakdown above splits that time.", ""]
    return lines


def _profile_row(entry: dict[str, Any]) -> str:
    return (f"| `{entry['function']}` | {entry['calls']} | {entry['own_s']} | "
            f"{entry['cumulative_s']} |")


def _environment_lines(report: dict[str, Any]) -> list[str]:
    env = report["environment"]
    cpu = env["cpu"]
    lines = ["## Environment", "",
             f"- Platform {env['platform']}, host {env['hostname']}; SIMD "
             f"{', '.join(cpu.get('simd_flags', cpu.get('simd', [])))}; "  # 'simd' in old JSON
             f"thread variables {env['thread_env'] or 'none'}.",
             "- Thread pools of the training process (numpy, faiss):"]
    lines += [f"  - {lib['internal_api']} {lib['version']}, {lib['num_threads']} threads, "
              f"{lib['architecture']}, `{Path(str(lib['filepath'])).name}`"
              for lib in env["training_threadpools"]]
    lines += ["", f"SageMaker figures: {report['sagemaker']['source']}.", ""]
    return lines


def _source_line(state: dict[str, Any]) -> str:
    if "head" not in state:
        return f"source state unknown ({state.get('git')})."
    if state["matches_head"]:
        return f"its `.py` files are those of commit `{state['head'][:10]}`."
    return (f"differs from commit `{state['head'][:10]}` in "
            f"{', '.join(state['files_differing_from_head'])}.")


def _k(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1000:,.0f}k"


def _s(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _met(flag: bool) -> str:
    return "**met**" if flag else "**not met**"
