"""End-to-end ``gpuknn train`` on a covtype-shaped set, against SageMaker's own log: the
driver behind ``bench/train_covtype.py``.

Its parts: :mod:`~gpuknn.benchmark.train_jobs` (the ml roots, the jobs and their logs),
:mod:`~gpuknn.benchmark.train_scoring` (reference accuracy and the scoring breakdown) and
:mod:`~gpuknn.benchmark.train_report` (summary, verdicts, Markdown). This module runs them
in order (:func:`run`, :func:`measure`) and records the environment (:func:`environment`).

The workload is the AWS covtype k-NN sample (``k_nearest_neighbors_covtype``): UCI
Covertype, 522,910 train / 58,102 test rows x 54 float64 features, 7 classes, written
as RecordIO-protobuf; ``k=10``, ``sample_size=200000``, ``faiss.Flat``, L2. SageMaker's
container printed a training-pass throughput of 385k-536k records/s on one
ml.m5.2xlarge (8 vCPU); the job was billed 130 s (2018) and 191 s (2021), instance
start-up included; test accuracy 0.9221.

The data (generated here from a fixed seed, nothing is downloaded)
------------------------------------------------------------------
:func:`~gpuknn.datasets.synthetic.covtype_like` draws 558,000 rows, split into the first
500,000 (train) and the last 58,000 (test), like the sample's 90/10 split of one table:

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

From each job's output the benchmark reads the metric lines with SageMaker's own
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
Outputs (written by the script): ``<out>/train_covtype.json`` and
``<out>/train_covtype.md`` (``train_covtype-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuknn._version import __version__
from gpuknn.benchmark.machine import machine, source_state
from gpuknn.benchmark.timed import load_average
from gpuknn.benchmark.train_jobs import (
    gpuknn_command,
    parse_job,
    prepare,
    profile_job,
    run_job,
    run_pipe_job,
)
from gpuknn.benchmark.train_report import summarise, verdicts
from gpuknn.benchmark.train_scoring import reference_accuracy, scoring_breakdown
from gpuknn.datasets import synthetic

# The covtype job's sizes (train rows, test rows, sample size): the benchmark's and a
# quick smoke test's; the GPU check trains the same job.
FULL_SIZES = (500_000, 58_000, 200_000)
QUICK_SIZES = (50_000, 5_800, 20_000)

# What the training process sees: run in a fresh interpreter, as the job is.
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


@dataclass(frozen=True)
class Plan:
    """What one run measures: the workload, the peer, the goals and the options.

    Attributes
    ----------
    n_train, n_test, sample_size : int
        Rows of the two channels and the ``sample_size`` hyperparameter.
    workload : str
        The report's one-line name of the workload.
    sagemaker : dict
        The peer: SageMaker's figures from its log, as the report shows them.
    targets : dict
        ``job_seconds_below`` and ``train_records_per_s_at_least``.
    repeats : int
        File-mode jobs.
    pipe, profile, reference : bool
        Whether to run the Pipe-mode job, a job under cProfile, the faiss reference.
    breakdown_queries : int
        Test rows of the scoring breakdown (0 skips it).
    keep : bool
        Keep the ml roots and logs.
    """

    n_train: int
    n_test: int
    sample_size: int
    workload: str
    sagemaker: dict[str, Any]
    targets: dict[str, float]
    repeats: int = 3
    pipe: bool = True
    profile: bool = False
    reference: bool = True
    breakdown_queries: int = 4096
    keep: bool = False


def environment(repo: Path | None = None) -> dict[str, Any]:
    """The machine record plus versions, source state and the training process's pools.

    Parameters
    ----------
    repo : Path, optional
        The checkout to compare the measured gpuknn with
        (:func:`gpuknn.benchmark.machine.source_state`).

    Returns
    -------
    dict
        :func:`gpuknn.benchmark.machine.machine`'s record, then ``versions``,
        ``training_device``, ``training_gpuknn_file``, ``gpuknn_source``,
        ``training_threadpools`` and ``probe_error``.
    """
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                           check=False)
    try:
        training = json.loads(probe.stdout)
    except json.JSONDecodeError:
        training = {"error": probe.stderr[-2000:]}
    return {
        **machine(),
        "versions": {"gpuknn": __version__, **{
            key: training.get(key) for key in ("numpy", "scipy", "faiss", "threadpoolctl")}},
        "training_device": training.get("device"),
        "training_gpuknn_file": training.get("gpuknn_file"),
        "gpuknn_source": source_state(repo),
        "training_threadpools": [
            {key: lib.get(key) for key in ("internal_api", "version", "num_threads",
                                           "architecture", "threading_layer", "filepath")}
            for lib in training.get("threadpool_info", [])],
        "probe_error": training.get("error"),
    }


def run(plan: Plan, repo: Path | None = None) -> dict[str, Any]:
    """The whole benchmark in a temporary folder: the report the script writes.

    Parameters
    ----------
    plan : Plan
        What to measure.
    repo : Path, optional
        The checkout the environment record compares the measured gpuknn with.

    Returns
    -------
    dict
        :func:`measure`'s report with its ``environment`` (plus the load average and
        source state at the end).
    """
    env = environment(repo)
    directory = Path(tempfile.mkdtemp(prefix="gpuknn-covtype-"))
    try:
        print(f"generating {plan.n_train:,} + {plan.n_test:,} rows into {directory} ...",
              flush=True)
        data = prepare(directory, plan.n_train, plan.n_test, plan.sample_size)
        print(f"  {data['summary']}", flush=True)
        report = measure(plan, data, directory)
        report["environment"] = env
        report["environment"]["loadavg_end"] = load_average()
        report["environment"]["gpuknn_source_end"] = source_state(repo)
        return report
    finally:
        if plan.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def measure(plan: Plan, data: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Every job, then the reference accuracy and the scoring breakdown.

    Parameters
    ----------
    plan : Plan
        What to measure.
    data : dict
        :func:`gpuknn.benchmark.train_jobs.prepare`'s result.
    directory : Path
        Where the logs and the profile go.

    Returns
    -------
    dict
        The report without its environment.
    """
    command = gpuknn_command()
    runs = []
    for repetition in range(1, plan.repeats + 1):
        job = run_job(command, data["file_root"], "File", repetition,
                      directory / f"file-{repetition}.log")
        runs.append(parse_job(job))
        print(f"File #{repetition}: {_brief(runs[-1])}", flush=True)
    report: dict[str, Any] = {
        "workload": plan.workload,
        "command": [*command, "train", "--ml-root", "<root>"],
        "hyperparameters": data["hyperparameters"], "data": data["summary"],
        "generator": _generator(),
        "sagemaker": plan.sagemaker, "targets": {}, "file_runs": runs,
    }
    if plan.pipe:
        job, writer = run_pipe_job(command, data, directory / "pipe.log")
        report["pipe_run"] = parse_job(job)
        report["pipe_writer"] = writer
        print(f"Pipe #1: {_brief(report['pipe_run'])}", flush=True)
    if plan.profile:
        report["profile"] = profile_job(data, directory / "job", directory / "prof.log")
        print(f"cProfile: {report['profile'].get('wall_s')} s", flush=True)
    _in_process(plan, data, report)
    report["summary"] = summarise(runs)
    report["targets"] = verdicts(report["summary"], len(runs), plan.targets)
    return report


def _in_process(plan: Plan, data: dict[str, Any], report: dict[str, Any]) -> None:
    """The faiss reference accuracy and the scoring breakdown, into ``report``."""
    sample = int(data["hyperparameters"]["sample_size"])
    if plan.reference:
        report["reference_accuracy"] = reference_accuracy(data, sample)
        print(f"reference: {report['reference_accuracy']}", flush=True)
    if plan.breakdown_queries > 0:
        report["scoring_breakdown"] = scoring_breakdown(
            data, sample, min(plan.breakdown_queries, data["n_test"]))
        print(f"breakdown: {report['scoring_breakdown']}", flush=True)


def _generator() -> dict[str, Any]:
    """The settings of :func:`gpuknn.datasets.synthetic.covtype_like`, for the report."""
    return {"class_shares": synthetic.CLASS_SHARES.tolist(),
            "class_means": synthetic.CLASS_MEANS.tolist(),
            "columns": synthetic.COLUMNS,
            "patch_spread": synthetic.PATCH_SPREAD.tolist(),
            "row_spread": synthetic.ROW_SPREAD, "patches": synthetic.N_PATCHES,
            "keep_wilderness": synthetic.KEEP_WILDERNESS,
            "keep_soil": synthetic.KEEP_SOIL}


def _brief(run: dict[str, Any]) -> str:
    rate = run.get("throughput_metric")
    return (f"exit {run['exit_code']}, wall {run['wall_s']:.2f} s, throughput "
            f"{'n/a' if rate is None else f'{rate / 1000:,.0f}k'}/s, accuracy "
            f"{run.get('test_accuracy')}, read+sample {run.get('read_sample_s')} s, build "
            f"{run.get('index_build_s')} s, write {run.get('model_write_s')} s, test "
            f"{run.get('test_scoring_s')} s")
