"""End-to-end ``gpuknn train`` on a covtype-shaped set, against SageMaker's own log.

Run from the project root with the project's virtual environment::

    python bench/train_covtype.py                # full: 3 File-mode jobs + 1 Pipe-mode job
    python bench/train_covtype.py --quick        # 50,000 / 5,800 rows, sample 20,000
    python bench/train_covtype.py --profile      # also one job under cProfile
    python bench/train_covtype.py --from-json bench/results/train_covtype.json  # redo .md

The workload is the AWS covtype k-NN sample (``k_nearest_neighbors_covtype``): UCI
Covertype, 522,910 train / 58,102 test rows x 54 float64 features, 7 classes, written
as RecordIO-protobuf; ``k=10``, ``sample_size=200000``, ``faiss.Flat``, L2. SageMaker's
container printed a training-pass throughput of 385k-536k records/s on one
ml.m5.2xlarge (8 vCPU); the job was billed 130 s (2018) and 191 s (2021), instance
start-up included; test accuracy 0.9221.

The data (generated here from a fixed seed, nothing is downloaded)
------------------------------------------------------------------
:func:`covtype_like` draws 558,000 rows, split into the first 500,000 (train) and the
last 58,000 (test), like the sample's 90/10 split of one table:

* **Classes** 0-6 (float64 labels) with covtype's class shares, about 36.5 / 48.8 /
  6.2 / 0.5 / 1.6 / 3.0 / 3.5 %.
* **Patches.** Covertype rows are 30 m cells of a few forests: neighbouring cells share
  elevation, distances to roads and fire points, wilderness area and soil. The
  generator mimics that with 2,000 *patches* split among the classes by their shares
  (at least 10 each). Each patch has a class, a centre for the 10 quantitative columns
  drawn as ``CLASS_MEANS[class] + PATCH_SPREAD * N(0, 1)``, one wilderness area drawn
  from its class's distribution over the 4 areas and one dominant soil type drawn
  from its class's distribution over the 40 types (both distributions Dirichlet
  draws, per class, from the same seed).
* **Rows.** A row picks a patch (patches weighted so that classes keep their shares),
  takes its class as label, the patch centre plus ``ROW_SPREAD`` (3 %) of each
  column's UCI range times ``N(0, 1)``, rounded to integers and clipped to the UCI
  range; its wilderness area is the patch's with probability 0.9, else a fresh draw
  from the class's distribution; its soil type likewise with probability 0.8. The
  two categorical columns are one-hot (4 + 40 columns of 0/1), as in the UCI file.
* ``CLASS_MEANS`` are hand-picked to resemble covtype's (elevation separates the
  classes most; classes 2, 3 and 5 sit low and near roads) but are not the real
  data's statistics. With these settings an independent faiss ``IndexFlatL2`` on a
  random 200,000-row sample, majority vote of 10, scores about 0.90 on the test rows
  (the majority class alone: 0.49): neither trivial nor chance, near the 0.92 that
  SageMaker reached on the real data. The figure is checked in every run
  (``reference_accuracy``) when faiss is installed.

Features are float64 and labels float64, written by :func:`gpuknn.io.write_recordio`
(the same bytes as the SDK's ``write_numpy_to_dense_tensor``): 484 bytes per record,
as in the sample's 253,088,440-byte train channel.

The job
-------
A temporary ml root holds ``input/data/train/train.pbr``, ``input/data/test/test.pbr``
and ``input/config/``: ``hyperparameters.json`` as the SDK writes it (every value a
string: feature_dim 54, k 10, predictor_type classifier, sample_size 200000),
``inputdataconfig.json`` (both channels ``application/x-recordio-protobuf``, File mode)
and ``resourceconfig.json`` (one host, ``algo-1``). Generation and writing are not
timed. Then:

* ``--repeats`` (3) File-mode jobs: ``gpuknn train --ml-root ROOT`` as a subprocess
  (``model/`` and ``output/`` removed before each), timed from ``Popen`` to the
  process's exit, with its CPU time and peak RSS from ``os.wait4``;
* one Pipe-mode job (unless ``--no-pipe``): a second ml root whose
  ``inputdataconfig.json`` says ``Pipe`` and whose ``input/data/train_0`` and
  ``test_0`` are FIFOs, fed one after the other by a separate writer process copying
  the two files in 1 MiB chunks (as SageMaker streams S3 objects into the FIFOs);
* with ``--profile``, one more File-mode job under ``python -m cProfile -o``; the top
  functions by cumulative and by own time go into the outputs (cProfile sees only the
  main thread, so the search's worker threads appear as lock waits);
* the faiss reference accuracy above (unless ``--no-reference``);
* a scoring breakdown in this process (``--breakdown-queries``, 4,096 test rows; 0
  skips it): gpuknn's ``ExactSearch.search`` against a random 200,000-row sample, and
  its tile loop cut after the GEMM, the ``‖x‖²`` add, the group minima and
  ``select_k``, plus the GEMM with ``‖x‖²`` folded in as a 55th column, each on every
  core as the search runs; and the fraction of the base that a 1-D projection bound
  (top principal axis) would leave to search, a property of the data.

From each job's output the script reads the metric lines with SageMaker's own
regular expressions (``#throughput_metric: host=\\S+, train throughput=(\\S+)
records/second`` and ``#quality_metric: host=\\S+, test accuracy <score>=(\\S+)``)
and the phases from the ``logger.info`` lines of ``gpuknn/train.py``,
``gpuknn/estimator.py`` and ``gpuknn/model/build.py``: reading + sampling (``sampled ...
in X s``), index build (``built ... in X s``), model write (``Model written ... in X
s``), test scoring (``Scored ... in X s``) and the job inside Python (``Job finished
in X s``). Start-up (``Popen`` to the first log line: interpreter, imports,
configuration) and exit (last log line to the process's end) come from the log's
millisecond timestamps.

Records/s are given two ways: the container's figure as printed (records read /
``KNN.fit`` time, which includes the index build, as gpuknn prints it) and records
read / the reading + sampling time alone.

Caveats: the files are in the page cache (written just before); SageMaker File mode
also copies the channel to local disk before the container starts, so neither side
times S3. The billed SageMaker time includes instance provisioning and the image pull:
the whole-job ratio against it is indicative only. The synthetic set has covtype's
shape and size, not its values: the accuracies are not comparable.

Outputs: ``<out>/train_covtype.json`` and ``<out>/train_covtype.md``
(``train_covtype-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine  # bench/_machine.py, beside this script

import gpuknn
from gpuknn.datasets import synthetic
from gpuknn.datasets.synthetic import N_CLASSES, SEED, covtype_like
from gpuknn.io import write_recordio

TRAIN_ROWS, TEST_ROWS, SAMPLE_SIZE = 500_000, 58_000, 200_000
QUICK_ROWS = (50_000, 5_800, 20_000)

HYPERPARAMETERS = {"feature_dim": "54", "k": "10", "predictor_type": "classifier",
                   "sample_size": "200000"}
RECORDIO = "application/x-recordio-protobuf"

SAGEMAKER = {
    "instance": "ml.m5.2xlarge (8 vCPU, 32 GiB)",
    "dataset": "UCI Covertype, 522,910 train / 58,102 test x 54 float64, 7 classes",
    "throughput_records_per_s": [385_000, 536_000],
    "billed_seconds": {"2018": 130, "2021": 191},
    "test_accuracy": 0.9221,
    "source": "aws/amazon-sagemaker-examples k_nearest_neighbors_covtype (2018, 2021 runs);"
              " /work/shared/reference/sagemaker-knn.md section 7",
}
TARGETS = {"job_seconds_below": 20.0, "train_records_per_s_at_least": 1_000_000}

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
PHASE_LABELS = {"startup_s": "start-up (Popen to first log line)",
                "read_sample_s": "reading + sampling",
                "index_build_s": "index build", "model_write_s": "model write",
                "test_scoring_s": "test scoring", "exit_s": "exit (last log line to exit)"}

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


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------
def write_config(root: Path, mode: str, hyperparameters: dict[str, str]) -> None:
    """The three files SageMaker writes into ``input/config`` before ``train``."""
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
            ) -> dict[str, Any]:
    """Generate the set and lay out the File-mode and Pipe-mode ml roots."""
    started = time.perf_counter()
    X, y = covtype_like(n_train + n_test)
    generated = time.perf_counter() - started
    hyperparameters = dict(HYPERPARAMETERS, sample_size=str(sample_size))
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


# ----------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------
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
            log: Path, timeout: float = 600.0) -> Job:
    """Run one training job to its end; wall time from ``Popen`` to exit."""
    for name in ("model", "output"):
        shutil.rmtree(root / name, ignore_errors=True)
    load = [round(x, 2) for x in os.getloadavg()]
    busy_before = machine_busy_s()
    with open(log, "wb") as sink:
        started_epoch = time.time()
        started = time.perf_counter()
        process = subprocess.Popen([*command, "train", "--ml-root", str(root)],
                                   stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.002)
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


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_pipe_job(command: list[str], data: dict[str, Any], log: Path) -> tuple[Job, Any]:
    """A Pipe-mode job: FIFOs ``train_0`` and ``test_0`` fed by a writer process."""
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
    """One File-mode job under ``python -m cProfile``; top functions by time."""
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


# ----------------------------------------------------------------------------------------
# Parsing a job's output
# ----------------------------------------------------------------------------------------
def _epoch(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_job(job: Job) -> dict[str, Any]:
    """Metrics (SageMaker's regexes), phases and timing of one job."""
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
    stamps = []
    for line in job.output.splitlines():
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
    if stamps:  # log stamps have 1 ms resolution; the "in X s" values 10 ms
        result["startup_s"] = round(max(stamps[0] - job.started_epoch, 0.0), 3)
        result["exit_s"] = round(max(job.ended_epoch - stamps[-1], 0.0), 3)
    if result.get("records_read") and result.get("read_sample_s"):
        result["read_records_per_s"] = result["records_read"] / result["read_sample_s"]
    if job.exit_code != 0:
        result["log_tail"] = job.output[-3000:]
    return result


# ----------------------------------------------------------------------------------------
# Reference accuracy (independent of gpuknn)
# ----------------------------------------------------------------------------------------
def reference_accuracy(data: dict[str, Any], sample_size: int, k: int = 10) -> dict[str, Any]:
    """faiss ``IndexFlatL2`` on a random sample, majority vote (ties to the smaller label)."""
    try:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import faiss
    except ImportError:
        return {"skipped": "faiss is not installed"}
    started = time.perf_counter()
    n_train = data["n_train"]
    X, y = data["X"], data["y"]
    rows = np.random.default_rng([SEED, 1]).choice(n_train, sample_size, replace=False)
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(np.ascontiguousarray(X[rows], dtype=np.float32))
    _, neighbours = index.search(np.ascontiguousarray(X[n_train:], dtype=np.float32), k)
    labels = y[rows][neighbours].astype(np.int64)
    counts = np.zeros((len(labels), N_CLASSES), dtype=np.int64)
    np.add.at(counts, (np.arange(len(labels))[:, None], labels), 1)
    accuracy = float(np.mean(counts.argmax(axis=1) == y[n_train:]))
    return {"accuracy": round(accuracy, 4), "engine": f"faiss {faiss.__version__} IndexFlatL2",
            "sample_size": sample_size, "k": k, "seconds": round(time.perf_counter() - started, 1)}


# ----------------------------------------------------------------------------------------
# Where test scoring goes (cProfile only sees the main thread)
# ----------------------------------------------------------------------------------------
def scoring_breakdown(data: dict[str, Any], sample_size: int, n_queries: int,
                      k: int = 10, repeats: int = 3) -> dict[str, Any]:
    """Time gpuknn's exact search and its parts on the first test rows, in this process.

    Same structure as :class:`gpuknn.search.exact.ExactSearch` on a CPU: 256-query chunks, one
    per core, single-threaded BLAS, 16 MB score tiles. Each variant is timed
    ``repeats`` times in interleaved rounds (best kept) and scaled to the whole test
    channel.
    """
    from gpuknn import _backend
    from gpuknn.search import exact

    n_train = data["n_train"]
    X = data["X"]
    rows = np.random.default_rng([SEED, 1]).choice(n_train, sample_size, replace=False)
    base = np.ascontiguousarray(X[rows], dtype=np.float32)
    queries = np.ascontiguousarray(X[n_train:n_train + n_queries], dtype=np.float32)
    search = exact.ExactSearch(base, "L2")
    workers = _backend.usable_cores()
    variants = {
        "gpuknn ExactSearch.search (as in the job)": lambda: search.search(queries, k),
        "GEMM only (the same tiles)": lambda: _tiles(search, queries, k, "gemm"),
        "GEMM + ‖x‖² add": lambda: _tiles(search, queries, k, "norms"),
        "GEMM + ‖x‖² add + group minima (select_k's first pass)":
            lambda: _tiles(search, queries, k, "minima"),
        "GEMM + ‖x‖² add + select_k (no final merge)":
            lambda: _tiles(search, queries, k, "select"),
        "GEMM with ‖x‖² folded in (K=55, base stored d-major)":
            lambda: _tiles(search, queries, k, "folded"),
    }
    scale = (len(data["y"]) - n_train) / len(queries)
    times: dict[str, list[float]] = {name: [] for name in variants}
    shuffle = np.random.default_rng([SEED, 2])
    for _ in range(repeats):  # interleaved rounds: a slow minute hits every variant
        for name in shuffle.permutation(list(variants)):
            time.sleep(0.2)  # let the BLAS threads of the previous call go idle
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
    results = []
    for name, seconds in times.items():
        best = min(seconds)
        results.append({"variant": name, "seconds": round(best, 3),
                        "median_s": round(statistics.median(seconds), 3),
                        "whole_test_channel_s": round(best * scale, 1),
                        "ns_per_score": round(best * 1e9 / (len(queries) * sample_size), 3)})
    distances, _ = search.search(queries, k)
    return {"queries": len(queries), "sample_size": sample_size, "k": k, "workers": workers,
            "query_chunk": exact.QUERY_CHUNK,
            "tile_columns": search._block_width(exact.QUERY_CHUNK), "variants": results,
            "projection_band_fraction": projection_band(base, queries, distances[:, -1],
                                                        exact.QUERY_CHUNK)}


def _tiles(search: Any, queries: np.ndarray, k: int, part: str) -> None:
    """The tile loop of ``ExactSearch._candidates``, cut after ``part``, on every core."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from gpuknn import _backend
    from gpuknn.search import exact, topk

    chunk = exact.QUERY_CHUNK
    width = search._block_width(chunk)
    norms = search.base.sq_norms
    folded = (np.ascontiguousarray(np.vstack([search.base.scaled(slice(None)).T,
                                              norms[None, :]]))
              if part == "folded" else None)

    def run(start: int) -> None:
        q = queries[start:start + chunk]
        if folded is not None:
            q = np.hstack([q, np.ones((len(q), 1), np.float32)])
        buffer = np.empty((len(q), width), np.float32)
        for begin in range(0, search.ntotal, width):
            end = min(begin + width, search.ntotal)
            out = buffer[:, :end - begin]
            if folded is not None:
                np.matmul(q, folded[:, begin:end], out=out)
                continue
            np.matmul(q, search.base.scaled(slice(begin, end)).T, out=out)
            if part == "norms":
                out += norms[begin:end]
            elif part == "minima":
                out += norms[begin:end]
                group = topk._group_size(end - begin, k)
                n_groups = (end - begin) // group
                out[:, :group * n_groups].reshape(len(q), group, n_groups).min(axis=1)
            elif part == "select":
                out += norms[begin:end]
                topk.select_k(out, k)

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(_backend.usable_cores()) as pool:
        list(pool.map(run, range(0, len(queries), chunk)))


def projection_band(base: np.ndarray, queries: np.ndarray, kth: np.ndarray,
                    chunk: int) -> float:
    """Mean fraction of the base a 1-D projection bound leaves to search (a data property).

    ``|<q - x, u>| <= |q - x|`` for a unit ``u`` (here the top principal axis): with the
    queries sorted by projection and cut into chunks, only base rows whose projection lies
    within the chunk's range widened by its largest k-th distance can be neighbours.
    """
    centred = base[:: max(1, len(base) // 20_000)] - base.mean(axis=0)
    axis = np.linalg.eigh(np.cov(centred.T))[1][:, -1].astype(np.float32)
    projected = np.sort(base @ axis)
    query_projection = queries @ axis
    order = np.argsort(query_projection)
    kth = np.asarray(kth, dtype=np.float64)
    fractions = []
    for start in range(0, len(queries), chunk):
        part = order[start:start + chunk]
        radius = kth[part].max()
        low = np.searchsorted(projected, query_projection[part].min() - radius)
        high = np.searchsorted(projected, query_projection[part].max() + radius, "right")
        fractions.append((high - low) / len(base))
    return round(float(np.mean(fractions)), 3)


# ----------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------
PROBE = r"""
import json, os
import numpy, scipy, threadpoolctl
from gpuknn import _backend
from gpuknn.search.faiss_index import require_faiss
faiss = require_faiss()
from gpuknn.search.exact import ExactSearch
ExactSearch(numpy.ones((4, 2), dtype=numpy.float32), "L2").search(
    numpy.ones((1, 2), dtype=numpy.float32), 1)
import gpuknn
print(json.dumps({"gpuknn_file": gpuknn.__file__,
                  "numpy": numpy.__version__, "scipy": scipy.__version__,
                  "faiss": faiss.__version__, "threadpoolctl": threadpoolctl.__version__,
                  "device": _backend.resolve_device("auto"),
                  "threadpool_info": threadpoolctl.threadpool_info()}))
"""


def source_state() -> dict[str, Any]:
    """Which gpuknn was measured: its path and how its files compare with the repo's HEAD.

    Git blob ids of the imported package's ``.py`` files against ``git ls-tree HEAD
    gpuknn`` of the repository holding this script (run from a ``git archive HEAD``
    copy on ``PYTHONPATH`` to measure the committed code while the checkout is edited).
    """
    package = Path(gpuknn.__file__).parent
    repo = Path(__file__).resolve().parent.parent
    state: dict[str, Any] = {"gpuknn_path": str(package)}
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        tree = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "HEAD", "gpuknn"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        state["git"] = f"unavailable ({err})"
        return state
    committed = {}
    for line in tree.splitlines():
        meta, _, path = line.partition("\t")
        if path.endswith(".py"):
            committed[path.removeprefix("gpuknn/")] = meta.split()[2]
    found = {}
    for file in sorted(package.rglob("*.py")):
        content = file.read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        found[file.relative_to(package).as_posix()] = blob
    differing = sorted(name for name in set(committed) | set(found)
                       if committed.get(name) != found.get(name))
    state.update({"repo": str(repo), "head": head, "matches_head": not differing,
                  "files_differing_from_head": differing})
    return state


def environment() -> dict[str, Any]:
    """CPU, cores, versions and the training process's thread pools."""
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                           check=False)
    try:
        training = json.loads(probe.stdout)
    except json.JSONDecodeError:
        training = {"error": probe.stderr[-2000:]}
    return {
        **machine(),
        "versions": {"gpuknn": gpuknn.__version__, **{
            key: training.get(key) for key in ("numpy", "scipy", "faiss", "threadpoolctl")}},
        "training_device": training.get("device"),
        "training_gpuknn_file": training.get("gpuknn_file"),
        "gpuknn_source": source_state(),
        "training_threadpools": [
            {key: lib.get(key) for key in ("internal_api", "version", "num_threads",
                                           "architecture", "threading_layer", "filepath")}
            for lib in training.get("threadpool_info", [])],
        "probe_error": training.get("error"),
    }


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best, median and worst of the File-mode repetitions."""
    good = [r for r in runs if r["exit_code"] == 0]
    if not good:
        return {}
    keys = ["wall_s", "throughput_metric", "read_records_per_s", "startup_s", "read_sample_s",
            "index_build_s", "fit_s", "model_write_s", "test_scoring_s", "job_in_python_s",
            "exit_s", "cpu_s", "cores_used", "max_rss_mib"]
    summary = {}
    for key in keys:
        values = [r[key] for r in good if r.get(key) is not None]
        if values:
            summary[key] = {"best": (max if "per_s" in key or key == "throughput_metric"
                                     else min)(values),
                            "median": statistics.median(values),
                            "worst": (min if "per_s" in key or key == "throughput_metric"
                                      else max)(values)}
    summary["test_accuracy"] = sorted({r["test_accuracy"] for r in good})
    return summary


def verdicts(summary: dict[str, Any], n_runs: int) -> dict[str, Any]:
    """Each target against the best and the worst File-mode repetition."""
    if not summary:
        return {}
    job = summary["wall_s"]
    rate = summary["throughput_metric"]
    limit, floor = TARGETS["job_seconds_below"], TARGETS["train_records_per_s_at_least"]
    return {
        "job_below_20_s": {"best_s": job["best"], "worst_s": job["worst"],
                           "met_in_best": job["best"] < limit,
                           "met_in_all": job["worst"] < limit, "repetitions": n_runs},
        "train_pass_at_least_1M_records_per_s": {
            "best": rate["best"], "worst": rate["worst"], "met_in_best": rate["best"] >= floor,
            "met_in_all": rate["worst"] >= floor, "repetitions": n_runs},
    }


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


def _analysis_lines(report: dict[str, Any]) -> list[str]:
    """The scoring breakdown and the cProfile tables."""
    lines: list[str] = []
    breakdown = report.get("scoring_breakdown")
    if breakdown:
        lines += [f"## Where test scoring goes (in this process, first {breakdown['queries']:,} "
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
    profile = report.get("profile")
    if profile and profile.get("top_cumulative"):
        lines += [f"## cProfile of one File-mode job ({profile['wall_s']} s under the "
                  "profiler)", "", "| Function | Calls | Own s | Cumulative s |",
                  "|---|---:|---:|---:|"]
        for entry in profile["top_cumulative"][:12]:
            lines.append(f"| `{entry['function']}` | {entry['calls']} | {entry['own_s']} | "
                         f"{entry['cumulative_s']} |")
        lines += ["", "| gpuknn function (by cumulative time) | Calls | Own s | Cumulative s |",
                  "|---|---:|---:|---:|"]
        for entry in profile["top_gpuknn"][:25]:
            lines.append(f"| `{entry['function']}` | {entry['calls']} | {entry['own_s']} | "
                         f"{entry['cumulative_s']} |")
        lines += ["", "| Function (by own time) | Calls | Own s |", "|---|---:|---:|"]
        for entry in profile["top_own"][:15]:
            lines.append(f"| `{entry['function']}` | {entry['calls']} | {entry['own_s']} |")
        lines += ["", "cProfile sees only the main thread: the search's worker threads show "
                  "up as the main thread waiting (`_thread.lock.acquire` under "
                  "`exact.py:search`); the breakdown above splits that time.", ""]
    return lines


def markdown(report: dict[str, Any]) -> str:
    env, data, summary = report["environment"], report["data"], report["summary"]
    runs, pipe = report["file_runs"], report.get("pipe_run")
    cpu = env["cpu"]
    sm = SAGEMAKER
    lines = [
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
    if not summary:
        lines += ["**Every File-mode job failed**; see `file_runs[].log_tail` in the JSON.", ""]
        return "\n".join(lines)
    wall, rate, read = summary["wall_s"], summary["throughput_metric"], \
        summary.get("read_records_per_s", {})
    low, high = sm["throughput_records_per_s"]
    billed = sm["billed_seconds"]
    reference = report.get("reference_accuracy", {})
    accuracy = ", ".join(f"{a:.4f}" for a in summary["test_accuracy"])
    lines += [
        f"## Headline ({len(runs)} File-mode jobs: best, median in brackets)",
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
        (f"Reference accuracy on the synthetic set: {reference['accuracy']} "
         f"({reference.get('engine', '')}, random {reference.get('sample_size', '')}-row "
         f"sample, k={reference.get('k', '')}); "
         if "accuracy" in reference else
         "Reference accuracy on the synthetic set: not measured in this run (--no-reference); "
         "an earlier run measured 0.9018 with faiss IndexFlatL2 on a random 200,000-row "
         "sample, k=10; ")
        + f"majority class alone {data['majority_class_test_accuracy']}.",
        "",
        "## Targets",
        "",
        "| Target | Best | Worst | Met |",
        "|---|---:|---:|---|",
    ]
    verdict = report["targets"]
    job, pass_ = verdict["job_below_20_s"], verdict["train_pass_at_least_1M_records_per_s"]
    lines += [
        f"| Whole job, test scoring included, < 20 s | {_s(job['best_s'])} s | "
        f"{_s(job['worst_s'])} s | {_met(job['met_in_best'])} in the best, "
        f"{_met(job['met_in_all'])} in all {job['repetitions']} |",
        f"| Training pass >= 1M records/s | {_k(pass_['best'])} | {_k(pass_['worst'])} | "
        f"{_met(pass_['met_in_best'])} in the best, {_met(pass_['met_in_all'])} in all "
        f"{pass_['repetitions']} |",
        "",
        "## Every job (seconds unless stated)",
        "",
        "| Job | Wall | Start-up | Read + sample | Index build | Model write | Test scoring "
        "| Exit | Job in Python | `#throughput_metric` rec/s | Read + sample rec/s | "
        "Accuracy | CPU s | Cores | Peak RSS MiB | Load before |",
        "|---|" + "---:|" * 15,
    ]
    contended = []
    for run in [*runs, *([pipe] if pipe else [])]:
        flag = ""
        others = run.get("others_cpu_s")
        # The Pipe job's writer process is part of its setup, so it is never flagged.
        if run["mode"] != "Pipe" and others is not None and others > 0.15 * run["wall_s"]:
            flag = " (contended)"
            contended.append(f"{run['mode']} #{run['repetition']}")
        lines.append(
            f"| {run['mode']} #{run['repetition']}{flag} | {_s(run['wall_s'])} | "
            f"{_s(run.get('startup_s'))} | {_s(run.get('read_sample_s'))} | "
            f"{_s(run.get('index_build_s'))} | {_s(run.get('model_write_s'))} | "
            f"{_s(run.get('test_scoring_s'))} | {_s(run.get('exit_s'))} | "
            f"{_s(run.get('job_in_python_s'))} | {_k(run.get('throughput_metric'))} | "
            f"{_k(run.get('read_records_per_s'))} | {_s(run.get('test_accuracy'), 4)} | "
            f"{_s(run['cpu_s'], 1)} | {_s(run['cores_used'])} | {run['max_rss_mib']} | "
            f"{run['loadavg_before'][0]} |")
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
    median = {key: summary[key]["median"] for key in PHASE_LABELS if key in summary}
    total = sum(median.values())
    lines += ["## Phases (median of the File-mode jobs)", "",
              "| Phase | Seconds | Share of the job |", "|---|---:|---:|"]
    for key, label in PHASE_LABELS.items():
        if key in median:
            lines.append(f"| {label} | {median[key]:.2f} | {median[key] / wall['median']:.0%} |")
    lines += [f"| other (whole job - the phase medians above) | {wall['median'] - total:.2f} | "
              f"{(wall['median'] - total) / wall['median']:.0%} |",
              f"| whole job | {wall['median']:.2f} | 100% |", ""]
    lines += _analysis_lines(report)
    lines += ["## Environment", "",
              f"- Platform {env['platform']}, host {env['hostname']}; SIMD "
              f"{', '.join(cpu.get('simd_flags', cpu.get('simd', [])))}; "  # 'simd' in old JSON
              f"thread variables {env['thread_env'] or 'none'}.",
              "- Thread pools of the training process (numpy, faiss):"]
    lines += [f"  - {lib['internal_api']} {lib['version']}, {lib['num_threads']} threads, "
              f"{lib['architecture']}, `{Path(str(lib['filepath'])).name}`"
              for lib in env["training_threadpools"]]
    lines += ["", f"SageMaker figures: {sm['source']}.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="50,000 / 5,800 rows, sample_size 20,000 (a smoke test)")
    parser.add_argument("--repeats", type=int, default=3, help="File-mode jobs (default 3)")
    parser.add_argument("--no-pipe", action="store_true", help="skip the Pipe-mode job")
    parser.add_argument("--profile", action="store_true",
                        help="also run one File-mode job under cProfile")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the faiss reference accuracy")
    parser.add_argument("--breakdown-queries", type=int, default=None,
                        help="test rows for the in-process scoring breakdown (default 4096, "
                             "512 with --quick; 0 skips it)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--keep", action="store_true", help="keep the ml roots and logs")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only rewrite the Markdown next to this saved JSON report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        args.from_json.with_suffix(".md").write_text(markdown(report))
        print(f"wrote {args.from_json.with_suffix('.md')}")
        return 0
    n_train, n_test, sample = QUICK_ROWS if args.quick else (TRAIN_ROWS, TEST_ROWS,
                                                             SAMPLE_SIZE)
    stem = "train_covtype-quick" if args.quick else "train_covtype"
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    directory = Path(tempfile.mkdtemp(prefix="gpuknn-covtype-"))
    try:
        print(f"generating {n_train:,} + {n_test:,} rows into {directory} ...", flush=True)
        data = prepare(directory, n_train, n_test, sample)
        print(f"  {data['summary']}", flush=True)
        report = measure(args, data, directory)
        report["environment"] = env
        report["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        report["environment"]["gpuknn_source_end"] = source_state()
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / f"{stem}.md").write_text(markdown(report))
        print(f"wrote {args.out / stem}.json and .md", flush=True)
        print(json.dumps(report["targets"], indent=2), flush=True)
        return 0 if all(r["exit_code"] == 0 for r in report["file_runs"]) else 1
    finally:
        if args.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def measure(args: argparse.Namespace, data: dict[str, Any], directory: Path,
            ) -> dict[str, Any]:
    """Every job, then the reference accuracy and the scoring breakdown."""
    command = gpuknn_command()
    runs = []
    for repetition in range(1, args.repeats + 1):
        job = run_job(command, data["file_root"], "File", repetition,
                      directory / f"file-{repetition}.log")
        runs.append(parse_job(job))
        print(f"File #{repetition}: {_brief(runs[-1])}", flush=True)
    report: dict[str, Any] = {
        "workload": "quick smoke test (not the benchmark)" if args.quick else
                    "covtype-shaped synthetic, k=10, sample_size 200000, faiss.Flat, L2",
        "command": [*command, "train", "--ml-root", "<root>"],
        "hyperparameters": data["hyperparameters"], "data": data["summary"],
        "generator": {"class_shares": synthetic.CLASS_SHARES.tolist(),
                      "class_means": synthetic.CLASS_MEANS.tolist(),
                      "columns": synthetic.COLUMNS,
                      "patch_spread": synthetic.PATCH_SPREAD.tolist(),
                      "row_spread": synthetic.ROW_SPREAD, "patches": synthetic.N_PATCHES,
                      "keep_wilderness": synthetic.KEEP_WILDERNESS,
                      "keep_soil": synthetic.KEEP_SOIL},
        "sagemaker": SAGEMAKER, "targets": {}, "file_runs": runs,
    }
    if not args.no_pipe:
        job, writer = run_pipe_job(command, data, directory / "pipe.log")
        report["pipe_run"] = parse_job(job)
        report["pipe_writer"] = writer
        print(f"Pipe #1: {_brief(report['pipe_run'])}", flush=True)
    if args.profile:
        report["profile"] = profile_job(data, directory / "job", directory / "prof.log")
        print(f"cProfile: {report['profile'].get('wall_s')} s", flush=True)
    sample = int(data["hyperparameters"]["sample_size"])
    if not args.no_reference:
        report["reference_accuracy"] = reference_accuracy(data, sample)
        print(f"reference: {report['reference_accuracy']}", flush=True)
    queries = args.breakdown_queries
    if queries is None:
        queries = 512 if args.quick else 4096
    if queries > 0:
        report["scoring_breakdown"] = scoring_breakdown(data, sample,
                                                        min(queries, data["n_test"]))
        print(f"breakdown: {report['scoring_breakdown']}", flush=True)
    report["summary"] = summarise(runs)
    report["targets"] = verdicts(report["summary"], len(runs))
    return report


def _brief(run: dict[str, Any]) -> str:
    return (f"exit {run['exit_code']}, wall {run['wall_s']:.2f} s, throughput "
            f"{_k(run.get('throughput_metric'))}/s, accuracy {run.get('test_accuracy')}, "
            f"read+sample {run.get('read_sample_s')} s, build {run.get('index_build_s')} s, "
            f"write {run.get('model_write_s')} s, test {run.get('test_scoring_s')} s")


if __name__ == "__main__":
    sys.exit(main())
