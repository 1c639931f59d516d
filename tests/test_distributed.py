"""gpuknn on Ray: ``KNN.fit([shard, ...])`` and multi-host ``gpuknn train``, for real.

The Python API runs on a local Ray cluster (2 CPUs) that this module starts and stops.
Each multi-host job is two real ``gpuknn train`` processes, ``algo-1`` and ``algo-2``,
with their own ml roots and a two-host ``resourceconfig.json``: the leader starts a Ray
head on 127.0.0.1 and the other host joins it from 127.0.0.2 (``$GPUKNN_HOST_ADDRESSES``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_train import blobs, channel, data_dir, environment, write_job

from gpuknn import KNN, KNNModel
from gpuknn.model import layout

ray = pytest.importorskip("ray", reason="the distributed tests need Ray: pip install "
                                        "'gpuknn[ray]'")
pytestmark = pytest.mark.slow

HOSTS = ("algo-1", "algo-2")
CSV = "text/csv"
HP = {"k": "5", "predictor_type": "classifier", "sample_size": "600", "feature_dim": "6",
      "seed": "11"}
JOB_TIMEOUT = 150


@pytest.fixture(scope="module")
def local_cluster():
    """A local Ray cluster for the Python API tests (its own, not the jobs' clusters)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.column_stack([y, X]), delimiter=",", fmt="%.6g")


def read_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The rows exactly as gpuknn reads them back (values printed with %.6g)."""
    table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    return table[:, 1:], table[:, 0]


def shard_files(base: Path, counts: tuple[int, ...], seed: int = 0) -> list[Path]:
    files = []
    for index, count in enumerate(counts):
        X, y = blobs(count, 6, seed=seed + index)
        files.append(base / f"part-{index:02d}.csv")
        write_csv(files[-1], X, y)
    return files


def assert_same_model(a: KNNModel, b: KNNModel) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.rows_seen == b.rows_seen
    queries = blobs(50, 6, seed=99)[0]
    np.testing.assert_array_equal(a.kneighbors(queries)[1], b.kneighbors(queries)[1])
    np.testing.assert_array_equal(a.predict(queries), b.predict(queries))


# ---------------------------------------------------------------- the Python API


def test_fit_on_shards_holding_everything_equals_the_in_process_fit(tmp_path, local_cluster):
    """With sample_size above the rows, every row is kept: ids number the shards' rows
    in shard order, exactly as one process reading the shards one after another."""
    first = shard_files(tmp_path / "a", (300,), seed=1)
    second = shard_files(tmp_path / "b", (40, 20), seed=2)
    hp = {**HP, "sample_size": "1000"}
    on_ray = KNN(device="cpu", **hp).fit([tmp_path / "a", tmp_path / "b"], content_type=CSV)
    rows = [read_rows(path) for path in first + second]
    X = np.concatenate([r[0] for r in rows])
    y = np.concatenate([r[1] for r in rows])
    in_process = KNN(device="cpu", **hp).fit(X, y)
    assert on_ray.model.rows_seen == 360
    assert_same_model(on_ray.model, in_process.model)


def test_fit_on_unequal_shards_is_a_seeded_sample_of_both(tmp_path, local_cluster):
    shard_files(tmp_path / "big", (2000,), seed=1)
    shard_files(tmp_path / "small", (200,), seed=2)
    shards = [str(tmp_path / "big"), str(tmp_path / "small")]
    a = KNN(device="cpu", **HP).fit(shards, content_type=CSV).model
    b = KNN(device="cpu", **HP).fit(shards, content_type=CSV).model
    c = KNN(device="cpu", **{**HP, "seed": "12"}).fit(shards, content_type=CSV).model
    np.testing.assert_array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, c.ids)
    assert a.n_indexed == 600 and a.rows_seen == 2200
    from_small = int(np.sum(a.ids >= 2000))
    assert 25 <= from_small <= 90, from_small  # hypergeometric mean 54.5, sd 6.9


def test_a_bad_shard_names_its_file(tmp_path, local_cluster):
    shard_files(tmp_path / "good", (100,))
    bad = tmp_path / "bad" / "broken.csv"
    bad.parent.mkdir()
    bad.write_text("1,2,3,4,5,6,7\n1,2,3\n")
    with pytest.raises(Exception) as caught:
        KNN(device="cpu", **HP).fit([tmp_path / "good", tmp_path / "bad"], content_type=CSV)
    assert type(caught.value).__name__ == "DataError"
    assert "broken.csv" in str(caught.value) and "line 2" in str(caught.value)


# ---------------------------------------------------------------- gpuknn train on two hosts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job_environment(port: int, timeout_s: float = 60) -> dict[str, str]:
    return {**environment(), "GPUKNN_HOST_ADDRESSES": "algo-1=127.0.0.1,algo-2=127.0.0.2",
            "GPUKNN_RAY_PORT": str(port), "GPUKNN_HOST_TIMEOUT_S": str(timeout_s),
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3"}


def host_root(base: Path, host: str, distribution: str, hosts=HOSTS, test: bool = False,
              mode: str = "File") -> Path:
    root = base / host
    channels = {"train": {**channel(CSV, mode), "S3DistributionType": distribution}}
    if test:
        channels["test"] = channel(CSV)
    write_job(root, HP, channels, hosts=hosts)
    (root / "input" / "config" / "resourceconfig.json").write_text(json.dumps(
        {"current_host": host, "hosts": list(hosts), "network_interface_name": "eth0"}))
    return root


def start_host(root: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(root / "train.log", "w")  # the child writes it; closed at exit
    return subprocess.Popen([sys.executable, "-m", "gpuknn.cli", "train", "--ml-root",
                             str(root)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=root)


def finish(processes: list[subprocess.Popen], timeout: float = JOB_TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            codes.append(process.wait())
    return codes


def run_job(roots: list[Path], env: dict[str, str]) -> list[int]:
    return finish([start_host(root, env) for root in roots])


def log_of(root: Path) -> str:
    return (root / "train.log").read_text()


def failure_of(root: Path) -> str:
    path = root / "output" / "failure"
    return path.read_text() if path.exists() else ""


def assert_follower_left_no_model(root: Path) -> None:
    assert (root / "model").is_dir() and not any((root / "model").iterdir())


def test_two_hosts_sharded_build_the_python_apis_model(tmp_path):
    roots = [host_root(tmp_path, host, "ShardedByS3Key", test=(host == "algo-1"))
             for host in HOSTS]
    shard_files(data_dir(roots[0]), (1500, 500), seed=1)
    shard_files(data_dir(roots[1]), (200,), seed=5)
    shard_files(data_dir(roots[0], "test"), (300,), seed=8)

    codes = run_job(roots, job_environment(free_port()))

    assert codes == [0, 0], log_of(roots[0]) + log_of(roots[1])
    assert not failure_of(roots[0]) and not failure_of(roots[1])
    assert_follower_left_no_model(roots[1])
    leader_log = log_of(roots[0])
    assert "#quality_metric: host=algo-1, test accuracy <score>=" in leader_log
    assert "algo-2: 200 rows (own files), ids 2000..2199" in leader_log
    model = KNNModel.load(roots[0] / "model", device="cpu")
    api = KNN(device="cpu", **HP).fit([data_dir(roots[0]), data_dir(roots[1])],
                                      content_type=CSV, ray_address="local").model
    assert model.rows_seen == 2200
    assert_same_model(model, api)


def test_two_hosts_replicated_take_file_blocks(tmp_path):
    """FullyReplicated: both hosts see the same 4 files; algo-1 reads the first two,
    algo-2 the last two, and the model is the Python API's over those two halves."""
    roots = [host_root(tmp_path, host, "FullyReplicated") for host in HOSTS]
    for root in roots:
        files = shard_files(data_dir(root), (700, 300, 250, 350), seed=3)
    halves = [tmp_path / "first-half", tmp_path / "second-half"]
    for half, names in zip(halves, (files[:2], files[2:]), strict=True):
        half.mkdir()
        for file in names:
            (half / file.name).write_bytes(file.read_bytes())

    codes = run_job(roots, job_environment(free_port()))

    assert codes == [0, 0], log_of(roots[0]) + log_of(roots[1])
    assert_follower_left_no_model(roots[1])
    assert "algo-2: 600 rows (file blocks), ids 1000..1599" in log_of(roots[0])
    model = KNNModel.load(roots[0] / "model", device="cpu")
    api = KNN(device="cpu", **HP).fit(halves, content_type=CSV, ray_address="local").model
    assert_same_model(model, api)


def test_replicated_single_file_takes_row_stripes_with_single_host_ids(tmp_path):
    roots = [host_root(tmp_path, host, "FullyReplicated") for host in HOSTS]
    for root in roots:
        (file,) = shard_files(data_dir(root), (450,), seed=4)
    codes = run_job(roots, job_environment(free_port()))
    assert codes == [0, 0], log_of(roots[0]) + log_of(roots[1])
    model = KNNModel.load(roots[0] / "model", device="cpu")
    X, y = read_rows(file)
    single = KNN(device="cpu", **HP).fit(X, y).model  # sample_size 600 > 450: every row
    assert_same_model(model, single)
    assert "keeping rows i with i % 2 == 1" in log_of(roots[0])


def test_a_corrupt_file_on_one_host_fails_every_host_with_its_error(tmp_path):
    roots = [host_root(tmp_path, host, "ShardedByS3Key") for host in HOSTS]
    shard_files(data_dir(roots[0]), (500,))
    shard_files(data_dir(roots[1]), (300,))
    (data_dir(roots[1]) / "zz-broken.csv").write_text("0,1,2,3,4,5,6\n0,1,2,x,4,5,6\n")

    codes = run_job(roots, job_environment(free_port()))

    assert codes == [1, 1]
    for root in roots:
        failure = failure_of(root)
        assert "algo-2" in failure and "zz-broken.csv" in failure and "line 2" in failure, \
            failure
        assert not (root / "model" / layout.METADATA).exists()
        assert "Traceback" not in failure


def test_a_host_killed_while_sampling_fails_the_leader_within_the_timeout(tmp_path):
    """algo-2 reads a named pipe (Pipe mode) that never ends, so it is surely sampling when
    the test kills its whole process group: its train process and its Ray node."""
    roots, (leader, follower), stop = start_with_a_pipe_on_algo_2(tmp_path)
    time.sleep(1.0)
    killed_at = time.monotonic()
    os.killpg(follower.pid, signal.SIGKILL)

    (code,) = finish([leader], timeout=90)
    follower.wait()
    stop.set()

    assert code == 1, log_of(roots[0])
    assert time.monotonic() - killed_at < 60
    failure = failure_of(roots[0])
    assert "algo-2 was lost while sampling its part" in failure, failure
    assert not (roots[0] / "model" / layout.METADATA).exists()


def start_with_a_pipe_on_algo_2(base: Path, shared_model: bool = False):
    """A two-host job whose algo-2 reads a named pipe (Pipe mode) that a thread feeds a row
    at a time and never ends: algo-2 is surely still sampling. Returns once algo-1 has
    sampled its part: the roots, the two processes, and the event that stops the feed.
    ``shared_model`` puts a model file in algo-2's model/, as if it were the leader's."""
    roots = [host_root(base, "algo-1", "ShardedByS3Key"),
             host_root(base, "algo-2", "ShardedByS3Key", mode="Pipe")]
    shard_files(data_dir(roots[0]), (300,))
    pipe = roots[1] / "input" / "data" / "train_0"
    pipe.parent.mkdir(parents=True)
    os.mkfifo(pipe)
    if shared_model:
        (roots[1] / "model").mkdir()
        (roots[1] / "model" / layout.METADATA).write_text("{}")
    env = job_environment(free_port(), timeout_s=30)
    processes = start_host(roots[0], env), start_host(roots[1], env)
    stop = threading.Event()
    threading.Thread(target=_trickle, args=(pipe, stop), daemon=True).start()
    _wait_for(lambda: "algo-1 finished sampling its part" in log_of(roots[0]), 90)
    return roots, processes, stop


def _trickle(pipe: Path, stop: threading.Event) -> None:
    """Write a CSV row now and then, until told to stop or nobody reads any more.

    Not until the follower dies: closing the pipe would end algo-2's data, and its Ray
    worker (a process of its own session, which the kill does not reach) could still send
    a complete sample before it noticed that its node was gone.
    """
    try:
        with open(pipe, "w") as handle:
            while not stop.is_set():
                handle.write("1,0,0,0,0,0,0\n")
                handle.flush()
                time.sleep(0.2)
    except BrokenPipeError:
        pass


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_host_without_its_leader_gives_up_and_says_what_it_waited_for(tmp_path):
    root = host_root(tmp_path, "algo-2", "ShardedByS3Key")
    shard_files(data_dir(root), (50,))
    port = free_port()
    started = time.monotonic()
    (code,) = run_job([root], job_environment(port, timeout_s=3))
    assert code == 1
    assert time.monotonic() - started < 30
    assert (f"waited 3 s ($GPUKNN_HOST_TIMEOUT_S) for the leader algo-1 to start its Ray "
            f"head at 127.0.0.1:{port}") in failure_of(root)


def test_a_leader_without_its_hosts_gives_up_and_names_them(tmp_path):
    root = host_root(tmp_path, "algo-1", "ShardedByS3Key")
    shard_files(data_dir(root), (50,))
    (code,) = run_job([root], job_environment(free_port(), timeout_s=8))
    assert code == 1
    assert "for host(s) algo-2 to join the Ray cluster" in failure_of(root), log_of(root)


def test_sigterm_to_the_leader_stops_every_host_cleanly(tmp_path):
    """SageMaker stops a job with SIGTERM. Ray replaces the handler when the leader connects,
    and a handler cannot raise inside Ray's wait: the leader must still stop within seconds,
    say so in output/failure, and tell the other host, which keeps its (shared) model/."""
    roots, (leader, follower), stop = start_with_a_pipe_on_algo_2(tmp_path, shared_model=True)
    stopped_at = time.monotonic()
    leader.send_signal(signal.SIGTERM)

    codes = finish([leader, follower], timeout=90)
    stop.set()

    assert codes == [143, 1], log_of(roots[0]) + log_of(roots[1])
    assert time.monotonic() - stopped_at < 45
    assert "Training was stopped (SIGTERM)" in failure_of(roots[0])
    assert "the leader algo-1 was stopped (SIGTERM)" in failure_of(roots[1])
    assert (roots[1] / "model" / layout.METADATA).exists()
