"""The pure parts of the training benchmark (``bench/train_covtype.py``): reading a job's
log, the summary, the verdicts and the Markdown page, on fabricated jobs (nothing runs)."""

from __future__ import annotations

import datetime
import json

from gpuknn.benchmark import machine, train_jobs, train_report

TARGETS = {"job_seconds_below": 20.0, "train_records_per_s_at_least": 1_000_000}
SAGEMAKER = {"instance": "ml.m5.2xlarge (8 vCPU, 32 GiB)",
             "throughput_records_per_s": [385_000, 536_000],
             "billed_seconds": {"2018": 130, "2021": 191}, "test_accuracy": 0.9221,
             "source": "the sample's notebook"}
START = datetime.datetime(2026, 1, 2, 3, 4, 5)
LOG = """\
2026-01-02 03:04:06,000 INFO devices: the CPU (2 cores)
2026-01-02 03:04:06,500 INFO sampled 200000 of 500000 rows in 0.25 s
2026-01-02 03:04:06,600 INFO built faiss.Flat (L2) over 200000 x 54 vectors on cpu in 0.10 s
2026-01-02 03:04:06,700 INFO Read 500000 records in 0.40 s; sample of 200000 rows x 54 features
#throughput_metric: host=algo-1, train throughput=1250000.0 records/second
2026-01-02 03:04:06,800 INFO Model written to /tmp/x/model in 0.05 s
2026-01-02 03:04:09,800 INFO Scored 58000 test records in 3.00 s
#quality_metric: host=algo-1, test accuracy <score>=0.9
2026-01-02 03:04:10,000 INFO Job finished in 4.00 s
"""


def job(output: str = LOG, exit_code: int = 0, wall_s: float = 5.5) -> train_jobs.Job:
    started = START.timestamp()
    return train_jobs.Job(mode="File", repetition=1, wall_s=wall_s, exit_code=exit_code,
                          cpu_s=8.25, max_rss_mib=700.4, started_epoch=started,
                          ended_epoch=started + wall_s, output=output,
                          loadavg_before=[0.5, 0.4, 0.3], others_cpu_s=0.123)


def test_parse_job_reads_the_metrics_phases_and_timestamps():
    run = train_jobs.parse_job(job())
    assert run["throughput_metric"] == 1_250_000.0
    assert run["test_accuracy"] == 0.9
    assert (run["read_sample_s"], run["index_build_s"], run["fit_s"]) == (0.25, 0.10, 0.40)
    assert (run["model_write_s"], run["test_scoring_s"], run["job_in_python_s"]) == (
        0.05, 3.00, 4.00)
    assert (run["records_read"], run["sample_rows"]) == (500_000, 200_000)
    assert run["read_records_per_s"] == 2_000_000.0
    assert run["startup_s"] == 1.0  # 03:04:05 to the first log line at 03:04:06,000
    assert run["exit_s"] == 0.5  # the last log line at 03:04:10,000 to the end at 10,500
    assert (run["cores_used"], run["max_rss_mib"], run["others_cpu_s"]) == (1.5, 700, 0.12)
    assert "log_tail" not in run


def test_parse_job_of_a_failed_job_keeps_the_log_tail():
    output = "Traceback (most recent call last):\nValueError: bad channel\n"
    run = train_jobs.parse_job(job(output, exit_code=2))
    assert run["exit_code"] == 2
    assert run["throughput_metric"] is None and run["test_accuracy"] is None
    assert "startup_s" not in run and "read_sample_s" not in run
    assert run["log_tail"] == output


def test_write_config_writes_what_sagemaker_writes(tmp_path):
    train_jobs.write_config(tmp_path, "Pipe", {"k": "10"})
    config = tmp_path / "input" / "config"
    assert json.loads((config / "hyperparameters.json").read_text()) == {"k": "10"}
    channels = json.loads((config / "inputdataconfig.json").read_text())
    assert set(channels) == {"train", "test"}
    assert channels["train"]["TrainingInputMode"] == "Pipe"
    assert channels["test"]["ContentType"] == "application/x-recordio-protobuf"
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["algo-1"]


def runs() -> list[dict]:
    good = [dict(train_jobs.parse_job(job(wall_s=wall)), repetition=i,
                 throughput_metric=rate)
            for i, (wall, rate) in enumerate([(6.0, 1.8e6), (7.0, 1.5e6), (25.0, 0.9e6)], 1)]
    failed = dict(train_jobs.parse_job(job("boom\n", exit_code=1, wall_s=1.0)), repetition=4)
    return [*good, failed]


def test_summarise_takes_best_median_worst_of_the_jobs_that_succeeded():
    summary = train_report.summarise(runs())
    assert summary["wall_s"] == {"best": 6.0, "median": 7.0, "worst": 25.0}
    assert summary["throughput_metric"] == {"best": 1.8e6, "median": 1.5e6, "worst": 0.9e6}
    assert summary["test_accuracy"] == [0.9]
    assert train_report.summarise(runs()[3:]) == {}


def test_verdicts_judge_the_best_and_every_job():
    verdict = train_report.verdicts(train_report.summarise(runs()), 4, TARGETS)
    job_time = verdict["job_below_20_s"]
    assert (job_time["best_s"], job_time["worst_s"]) == (6.0, 25.0)
    assert job_time["met_in_best"] and not job_time["met_in_all"]
    rate = verdict["train_pass_at_least_1M_records_per_s"]
    assert rate["met_in_best"] and not rate["met_in_all"] and rate["repetitions"] == 4
    assert train_report.verdicts({}, 4, TARGETS) == {}


def report(file_runs: list[dict]) -> dict:
    summary = train_report.summarise(file_runs)
    return {
        "hyperparameters": {"k": "10", "sample_size": "200000"},
        "data": {"train_rows": 500_000, "test_rows": 58_000, "features": 54,
                 "dtype": "float64", "train_bytes": 242_000_000, "test_bytes": 28_072_000,
                 "seed": 1, "generate_s": 1.0, "write_recordio_s": 2.0,
                 "majority_class_test_accuracy": 0.49},
        "sagemaker": SAGEMAKER, "file_runs": file_runs, "summary": summary,
        "targets": train_report.verdicts(summary, len(file_runs), TARGETS),
        "environment": {
            "date_utc": "2026-01-02T03:04:05+00:00", "hostname": "box", "platform": "Linux",
            "python": "3.12.0", "memory_gib": 8.0, "thread_env": {},
            "cpu": {"model": "Some CPU", "usable_cpus": 2, "logical_cpus": 4,
                    "simd_flags": ["avx2"]},
            "versions": {"gpuknn": "1.0", "numpy": "2.0", "faiss": "1.9"},
            "training_device": "cpu", "training_gpuknn_file": "/x/gpuknn/__init__.py",
            "gpuknn_source": {"gpuknn_path": "/x/gpuknn", "head": "abcdef0123456789",
                              "matches_head": True, "files_differing_from_head": []},
            "training_threadpools": [{"internal_api": "openblas", "version": "0.3",
                                      "num_threads": 2, "architecture": "Haswell",
                                      "filepath": "/lib/libopenblas.so"}]},
    }


def test_markdown_has_every_section_and_flags_contended_jobs():
    file_runs = runs()
    file_runs[1]["others_cpu_s"] = 0.5 * file_runs[1]["wall_s"]
    page = train_report.markdown(report(file_runs))
    headings = [line for line in page.splitlines() if line.startswith("## ")]
    assert headings == ["## Headline (4 File-mode jobs: best, median in brackets)",
                        "## Targets", "## Every job (seconds unless stated)",
                        "## Phases (median of the File-mode jobs)", "## Environment"]
    assert "| Whole job, wall (s) | 6.00 (7.00) | 130 (2018) / 191 (2021) billed |" in page
    assert "**met** in the best, **not met** in all 4 |" in page
    assert "| File #2 (contended) | 7.00 |" in page
    assert "**Contended:** during File #2 other processes" in page
    assert "those of commit `abcdef0123`" in page
    assert "not measured in this run (--no-reference)" in page
    assert "| whole job | 7.00 | 100% |" in page
    assert "  - openblas 0.3, 2 threads, Haswell, `libopenblas.so`" in page


def test_markdown_of_a_run_where_every_job_failed_points_at_the_logs():
    page = train_report.markdown(report(runs()[3:]))
    assert page.splitlines()[0] == "# gpuknn train on a covtype-shaped set vs SageMaker k-NN's log"
    assert "**Every File-mode job failed**" in page
    assert "## Targets" not in page


def test_source_state_outside_a_repository_says_git_is_unavailable(tmp_path):
    state = machine.source_state(tmp_path)
    assert state["gpuknn_path"].endswith("gpuknn")
    assert "head" not in state and state["git"].startswith("unavailable")
