"""The ``gpuknn train`` jobs of ``bench/train_covtype.py``: lay out an ml root, run a job
to its end, and read its log.

:func:`prepare` generates the covtype-shaped set and writes the File-mode and Pipe-mode ml
roots (RecordIO channels and the three files SageMaker puts in ``input/config``);
:func:`run_job` runs one ``gpuknn train`` subprocess, timed from ``Popen`` to its exit
with its CPU time and peak RSS from ``os.wait4``; :func:`run_pipe_job` feeds a Pipe-mode
job's FIFOs from a writer process; :func:`profile_job` runs one under cProfile; and
:func:`parse_job` reads the metric lines with SageMaker's own regular expressions and the
phases from the ``logger.info`` lines of the job.
"""

from __future__ import annotations

import datetime
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.benchmark.timed import load_average
from gpuknn.datasets.synthetic import N_CLASSES, SEED, covtype_like
from gpuknn.io import write_recordio

HYPERPARAMETERS = {"feature_dim": "54", "k": "10", "predictor_type": "classifier",
                   "sample_size": "200000"}  # as the SDK writes them: every value a string
RECORDIO = "application/x-recordio-protobuf"

# SageMaker's metric definitions for k-NN
THROUGHPUT_RE = re.compile(r"#throughput_metric: host=\S+, train throughput=(\S+) records/second")
QUALITY_RE = re.compile(r"#quality_metric: host=\S+, test accuracy <score>=(\S+)")
LOG_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) (.*)$")
PHASES = {  # phase: the log message that ends it, with its "in X s" value
    "read_sample_s": re.compile(r"^sampled (\d+) of (\d+) rows in (\S+) s"),
    "index_build_s": re.compile(r"^built .* vectors on .* in (\S+) s"),
    "fit_s": re.compile(r"^Read (\d+) records in (\S+) s"),
    "model_write_s": re.compile(r"^Model written to .* in (\S+) s"),
    "test_scoring_s": re.compile(r"^Scored (\d+) test records in (\S+) s"),
    "job_in_python_s": re.compile(r"^Job finished in (\S+) s"),
}

PIPE_WRITER = r"""
import json, sys, time
pairs = list(zip(sys.argv[1::2], sys.argv[2::2]))
out = []
for source, fifo in pairs:
    opened = None
    with open(fifo, "wb") as sink, open(source, "rb") as data:
        opened = time.time()
        n = 0
        while True:
            block = data.read(1 << 20)
            if not block:
                break
            sink.write(block)
            n += len(block)
    out.append({"fifo": fifo, "bytes": n, "opened": opened, "closed": time.time()})
print(json.dumps(out))
"""


def write_config(root: Path, mode: str, hyperparameters: dict[str, str]) -> None:
    """Write the three files SageMaker puts into ``input/config`` before ``train``.

    Parameters
    ----------
    root : Path
        The ml root.
    mode : str
        ``"File"`` or ``"Pipe"``, for both channels.
    hyperparameters : dict of str to str
        ``hyperparameters.json``, every value a string.
    """
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    channel = {"ContentType": RECORDIO, "TrainingInputMode": mode,
               "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
    (config / "inputdataconfig.json").write_text(json.dumps({"train": channel,
                                                             "test": channel}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))


def prepare(directory: Path, n_train: int, n_test: int, sample_size: int,
            hyperparameters: dict[str, str] | None = None) -> dict[str, Any]:
    """Generate the set and lay out the File-mode and Pipe-mode ml roots (not timed).

    Parameters
    ----------
    directory : Path
        An empty folder; ``file/`` and ``pipe/`` are made in it.
    n_train, n_test : int
        Rows of the train and test channels (the first and the last rows of one draw).
    sample_size : int
        The ``sample_size`` hyperparameter.
    hyperparameters : dict of str to str, optional
        The other hyperparameters (default :data:`HYPERPARAMETERS`).

    Returns
    -------
    dict
        The roots, the channel files, the arrays ``X`` and ``y``, the row counts, the
        hyperparameters and a ``summary`` of the data for the report.
    """
    started = time.perf_counter()
    X, y = covtype_like(n_train + n_test)
    generated = time.perf_counter() - started
    hyperparameters = dict(hyperparameters or HYPERPARAMETERS, sample_size=str(sample_size))
    root = directory / "file"
    train = root / "input" / "data" / "train" / "train.pbr"
    test = root / "input" / "data" / "test" / "test.pbr"
    train.parent.mkdir(parents=True)
    test.parent.mkdir(parents=True)
    started = time.perf_counter()
    write_recordio(train, X[:n_train], labels=y[:n_train])
    write_recordio(test, X[n_train:], labels=y[n_train:])
    written = time.perf_counter() - started
    os.sync()  # no write-back of the fresh files competing with the first timed job
    write_config(root, "File", hyperparameters)
    pipe = directory / "pipe"
    (pipe / "input" / "data").mkdir(parents=True)
    write_config(pipe, "Pipe", hyperparameters)
    shares = np.bincount(y.astype(int), minlength=N_CLASSES) / len(y)
    return {
        "file_root": root, "pipe_root": pipe, "train_file": train, "test_file": test,
        "X": X, "y": y, "n_train": n_train, "n_test": n_test,
        "hyperparameters": hyperparameters,
        "summary": {
            "train_rows": n_train, "test_rows": n_test, "features": X.shape[1],
            "dtype": "float64 features, float64 labels 0-6",
            "train_bytes": train.stat().st_size, "test_bytes": test.stat().st_size,
            "class_shares": [round(float(s), 4) for s in shares],
            "majority_class_test_accuracy": round(float(
                np.mean(y[n_train:] == np.argmax(shares))), 4),
            "generate_s": round(generated, 2), "write_recordio_s": round(written, 2),
            "seed": SEED,
        },
    }


@dataclass
class Job:
    """One finished ``gpuknn train`` process."""

    mode: str
    repetition: int
    wall_s: float
    exit_code: int
    cpu_s: float
    max_rss_mib: float
    started_epoch: float
    ended_epoch: float
    output: str
    loadavg_before: list[float]
    others_cpu_s: float | None = None  # CPU time of every other process during the job


def gpuknn_command() -> list[str]:
    """The ``gpuknn`` console script of this environment, else ``python -m gpuknn.cli``."""
    script = Path(sys.executable).parent / "gpuknn"
    if script.exists():
        return [str(script)]
    found = shutil.which("gpuknn")
    return [found] if found else [sys.executable, "-m", "gpuknn.cli"]


def run_job(command: list[str], root: Path, mode: str, repetition: int,
            log: Path, *, timeout: float = 600.0) -> Job:
    """Run one training job to its end; wall time from ``Popen`` to exit.

    ``model/`` and ``output/`` of ``root`` are removed first; the job's output goes to
    ``log``; a job still running after ``timeout`` seconds is killed.
    """
    for name in ("model", "output"):
        shutil.rmtree(root / name, ignore_errors=True)
    load = load_average()
    busy_before = machine_busy_s()
    with open(log, "wb") as sink:
        started_epoch = time.time()
        started = time.perf_counter()
        process = subprocess.Popen([*command, "train", "--ml-root", str(root)],
                                   stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        status, usage = _wait(process, started + timeout)
        wall = time.perf_counter() - started
        ended_epoch = time.time()
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    busy_after = machine_busy_s()
    others = None if busy_before is None or busy_after is None else \
        max(0.0, busy_after - busy_before - cpu)
    return Job(mode=mode, repetition=repetition, wall_s=wall, exit_code=process.returncode,
               cpu_s=cpu, max_rss_mib=usage.ru_maxrss / 1024,
               started_epoch=started_epoch, ended_epoch=ended_epoch,
               output=log.read_text(errors="replace"), loadavg_before=load,
               others_cpu_s=others)


def _wait(process: subprocess.Popen, deadline: float) -> tuple[int, Any]:
    """Poll ``os.wait4`` every 2 ms until the process ends (killed at ``deadline``)."""
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            return status, usage
        if time.perf_counter() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            return status, usage
        time.sleep(0.002)


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_pipe_job(command: list[str], data: dict[str, Any], log: Path) -> tuple[Job, Any]:
    """A Pipe-mode job: FIFOs ``train_0`` and ``test_0`` fed by a writer process.

    Returns the job and the writer's report (bytes and times per FIFO, or its error).
    """
    root = data["pipe_root"]
    fifos = [root / "input" / "data" / f"{name}_0" for name in ("train", "test")]
    for fifo in fifos:
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    writer = subprocess.Popen(
        [sys.executable, "-c", PIPE_WRITER, str(data["train_file"]), str(fifos[0]),
         str(data["test_file"]), str(fifos[1])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        job = run_job(command, root, "Pipe", 1, log)
        out, err = writer.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        writer.kill()  # the job stopped before opening a FIFO
        out, err = writer.communicate()
    report = json.loads(out) if writer.returncode == 0 and out.strip() else {"error": err}
    return job, report


def profile_job(data: dict[str, Any], out: Path, log: Path) -> dict[str, Any]:
    """One File-mode job under ``python -m cProfile``; top functions by time.

    The statistics go to ``out`` with the suffix ``.prof``; the summary holds the top
    functions by cumulative time, by own time, and gpuknn's own by cumulative time.
    """
    root = data["file_root"]
    stats_file = out.with_suffix(".prof")
    command = [sys.executable, "-m", "cProfile", "-o", str(stats_file), "-m", "gpuknn.cli"]
    job = run_job(command, root, "File (cProfile)", 1, log)
    summary: dict[str, Any] = {"wall_s": round(job.wall_s, 3), "exit_code": job.exit_code}
    if not stats_file.exists():
        return summary
    stats = pstats.Stats(str(stats_file))
    entries = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        entries.append({"function": f"{_short(filename)}:{line}({name})", "calls": calls,
                        "own_s": round(own, 3), "cumulative_s": round(cumulative, 3)})
    summary["total_s"] = round(stats.total_tt, 3)
    summary["top_cumulative"] = sorted(entries, key=lambda e: -e["cumulative_s"])[:25]
    summary["top_own"] = sorted(entries, key=lambda e: -e["own_s"])[:20]
    summary["top_gpuknn"] = sorted((e for e in entries if e["function"].startswith("gpuknn/")),
                                   key=lambda e: -e["cumulative_s"])[:30]
    summary["stats_file"] = str(stats_file)
    return summary


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/gpuknn/"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return tail if marker == "site-packages/" else f"gpuknn/{tail}"
    return filename if filename.startswith("~") else Path(filename).name


def _epoch(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_job(job: Job) -> dict[str, Any]:
    """Metrics (SageMaker's regexes), phases and timing of one job.

    Parameters
    ----------
    job : Job
        A finished job and its output.

    Returns
    -------
    dict
        Wall and CPU time, cores used, peak RSS, the ``#throughput_metric`` and test
        accuracy, each phase's ``in X s`` value, start-up and exit from the log's
        timestamps, records read per second of reading + sampling, and the log's tail
        when the job failed.
    """
    result: dict[str, Any] = {
        "mode": job.mode, "repetition": job.repetition, "exit_code": job.exit_code,
        "wall_s": round(job.wall_s, 3), "cpu_s": round(job.cpu_s, 2),
        "cores_used": round(job.cpu_s / job.wall_s, 2), "max_rss_mib": round(job.max_rss_mib),
        "loadavg_before": job.loadavg_before,
        "others_cpu_s": None if job.others_cpu_s is None else round(job.others_cpu_s, 2),
    }
    throughput = THROUGHPUT_RE.findall(job.output)
    quality = QUALITY_RE.findall(job.output)
    result["throughput_metric"] = float(throughput[-1]) if throughput else None
    result["test_accuracy"] = float(quality[-1]) if quality else None
    stamps = _read_phases(job.output, result)
    if stamps:  # log stamps have 1 ms resolution; the "in X s" values 10 ms
        result["startup_s"] = round(max(stamps[0] - job.started_epoch, 0.0), 3)
        result["exit_s"] = round(max(job.ended_epoch - stamps[-1], 0.0), 3)
    if result.get("records_read") and result.get("read_sample_s"):
        result["read_records_per_s"] = result["records_read"] / result["read_sample_s"]
    if job.exit_code != 0:
        result["log_tail"] = job.output[-3000:]
    return result


def _read_phases(output: str, result: dict[str, Any]) -> list[float]:
    """Put each phase's ``in X s`` value into ``result``; return the log lines' times."""
    stamps = []
    for line in output.splitlines():
        match = LOG_RE.match(line)
        if not match:
            continue
        stamp, _, message = match.groups()
        stamps.append(_epoch(stamp))
        for phase, pattern in PHASES.items():
            found = pattern.match(message)
            if found:
                result[phase] = float(found.groups()[-1])
                if phase == "read_sample_s":
                    result["records_read"] = int(found.group(2))
                    result["sample_rows"] = int(found.group(1))
    return stamps
