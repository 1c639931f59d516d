"""The images, built and run: ``docker/smoke.sh`` on the CPU image, and the official SageMaker
SDK's local mode (its own ``KNN`` estimator, ``deploy``, ``Transformer``) against it, with
one training instance and with two (multi-host training on Ray, in two containers).

Marked ``container``. They need a container engine (podman or Docker; set
``GPUKNN_CONTAINER_ENGINE`` to choose) and, for the SDK, a Docker API socket
(``DOCKER_HOST``, or Docker's own) with docker-compose. Without them they skip and say
why. On the project's CI machines, which reach no registry, ``.ci/run`` sets podman up
with ``../shared/containers/setup.sh`` and ``socket.sh`` first.

The GPU image downloads about 1.5 GB of CUDA wheels: its smoke test runs only with
``GPUKNN_CONTAINER_GPU_IMAGE=1`` (without a GPU it checks everything that runs on the CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
CPU_TAG = "gpuknn:cpu"
BUILD_TIMEOUT = 1200


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=60,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def engine() -> str:
    """podman or docker: the one named by GPUKNN_CONTAINER_ENGINE, else the first that runs."""
    wanted = os.environ.get("GPUKNN_CONTAINER_ENGINE")
    for name in [wanted] if wanted else ["podman", "docker"]:
        if shutil.which(name) and _works([name, "info"]):
            return name
    pytest.skip("no container engine answers (`podman info` / `docker info`): install "
                "Docker or podman; the project's CI machines set podman up with "
                "../shared/containers/setup.sh")


@pytest.fixture(scope="module")
def cpu_image(engine) -> str:
    """The CPU image, built from docker/Dockerfile.cpu; its reference as clients name it."""
    build = subprocess.run([engine, "build", "-f", "docker/Dockerfile.cpu", "-t", CPU_TAG, "."],
                           cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                           check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    probe = subprocess.run([engine, "run", "--rm", "--entrypoint", "python", CPU_TAG, "-c",
                            "pass"], capture_output=True, text=True, timeout=120, check=False)
    if probe.returncode != 0:  # the engine builds but cannot start a container here
        pytest.skip(f"{engine} cannot run containers on this machine: "
                    f"{probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else '?'}"
                    " (on the project's CI machines, ../shared/containers/setup.sh prints "
                    "the settings podman needs)")
    return f"localhost/{CPU_TAG}" if engine == "podman" else CPU_TAG


def smoke(engine: str, dockerfile: str, tag: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "docker/smoke.sh", engine, dockerfile, tag], cwd=ROOT,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)


def test_smoke_script_passes_on_the_cpu_image(engine, cpu_image):
    result = smoke(engine, "docker/Dockerfile.cpu", CPU_TAG)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for content_type in ("text/csv", "application/json", "application/jsonlines",
                         "application/x-recordio-protobuf"):
        assert f"smoke: {content_type}: 40 predictions equal the Python API" in result.stdout
    assert "stopped with exit code 0" in result.stdout


@pytest.mark.skipif(os.environ.get("GPUKNN_CONTAINER_GPU_IMAGE") != "1",
                    reason="the GPU image downloads about 1.5 GB of CUDA wheels; set "
                           "GPUKNN_CONTAINER_GPU_IMAGE=1 to build and smoke it")
def test_smoke_script_passes_on_the_gpu_image(engine):
    """Without a GPU: CuPy and faiss-gpu import, quickstart says why it runs on the CPU, and
    the whole contract (train, serve, SIGTERM) works with the device on auto."""
    result = smoke(engine, "docker/Dockerfile.gpu", "gpuknn:gpu")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    imports = subprocess.run([engine, "run", "--rm", "--entrypoint", "python", "gpuknn:gpu", "-c",
                              "import cupy, faiss; print(cupy.__version__, faiss.__version__)"],
                             capture_output=True, text=True, timeout=300, check=False)
    assert imports.returncode == 0, imports.stderr[-3000:]
    quickstart = subprocess.run([engine, "run", "--rm", "gpuknn:gpu"], capture_output=True,
                                text=True, timeout=300, check=False)
    assert quickstart.returncode == 0, quickstart.stdout[-3000:] + quickstart.stderr[-3000:]
    assert "no GPU found (" in quickstart.stdout and "): running on the CPU" in quickstart.stdout
    assert "test accuracy: 0.9565" in quickstart.stdout


@pytest.fixture(scope="module")
def docker_api(engine) -> None:
    """What the SDK's local mode drives: the docker CLI and docker-compose on an API socket."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not Path("/var/run/docker.sock").exists():
        pytest.skip("no Docker API socket (DOCKER_HOST unset, no /var/run/docker.sock); with "
                    "podman: ../shared/containers/socket.sh start, or `podman system service`")
    if shutil.which("docker") is None:
        pytest.skip("the SageMaker SDK's local mode runs the `docker` CLI, which is missing")
    compose_v2 = _works(["docker", "compose", "version"])
    if not compose_v2 and shutil.which("docker-compose") is None:
        pytest.skip("the SageMaker SDK's local mode needs docker compose (v2) or docker-compose")
    if not _works(["docker", "version"]):
        pytest.skip(f"the docker CLI cannot reach the API socket ({host or 'default'})")


def sdk_local(image: str, work: Path, instances: int) -> dict:
    """Run tests/_sdk_local.py; its report (the last line it prints)."""
    pytest.importorskip("sagemaker", reason="the SageMaker SDK is in the 'interop' extra")
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "_sdk_local.py"), image,
                             str(work), str(instances)], capture_output=True, text=True,
                            timeout=900, check=False,
                            env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sagemaker_sdk_local_mode_trains_serves_and_transforms(cpu_image, docker_api, tmp_path):
    report = sdk_local(cpu_image, tmp_path, 1)
    ((host, outcome),) = report["hosts"].items()
    assert outcome["exit_code"] == 0 and outcome["failure"] is None, (host, outcome)
    assert report["predict_rows"] == 2000 and report["transform_rows"] == 200
    assert report["endpoint_equals_python_api"], report
    assert report["transform_equals_python_api"], report
    assert report["endpoint_accuracy"] > 0.93, report  # k=5 on letter: 0.944 here
    print(json.dumps(report))


def test_sagemaker_sdk_local_mode_trains_on_two_instances(cpu_image, docker_api, tmp_path):
    """instance_count=2: two containers on one compose network, named as SageMaker names
    them (algo-1-<suffix>, algo-2-<suffix>), find each other by the network's DNS; the
    leader's Ray cluster samples each host's block of the 4 FullyReplicated RecordIO files.
    Each host's exit code and output/failure are checked (docker-compose v1 would not say)."""
    report = sdk_local(cpu_image, tmp_path, 2)
    hosts = report["hosts"]
    leader, follower = hosts
    suffix = leader.split("-")[2]
    assert [leader, follower] == [f"algo-1-{suffix}", f"algo-2-{suffix}"], hosts
    for host, outcome in hosts.items():
        assert outcome["status"] == "exited" and outcome["exit_code"] == 0, (host, outcome)
        assert outcome["failure"] is None, (host, outcome)
    leader_log = Path(hosts[leader]["log"]).read_text()
    follower_log = Path(hosts[follower]["log"]).read_text()
    assert "All 2 hosts joined the Ray cluster at " in leader_log, leader_log
    assert f"{leader}: 8000 rows (file blocks), ids 0..7999" in leader_log, leader_log
    assert f"{follower}: 8000 rows (file blocks), ids 8000..15999" in leader_log, leader_log
    assert f"Host {follower} joins the leader {leader} at " in follower_log, follower_log
    assert f"The leader {leader} finished the job" in follower_log, follower_log
    # The model is the leader's (local mode mounts one model/ into both containers).
    assert "Model written to /opt/ml/model" in leader_log
    assert "Model written to" not in follower_log
    assert report["model_files"] == ["model_algo-1", "model_algo-1.flat.npz", "model_algo-1.ids",
                                     "model_algo-1.json", "model_algo-1.labels"], report
    assert report["rows_seen"] == report["n_indexed"] == 16000, report
    assert report["ids_are_row_numbers"] and report["equals_one_process_fit"], report
    assert report["predict_rows"] == 2000 and report["endpoint_equals_python_api"], report
    assert report["endpoint_accuracy"] > 0.93, report
    print(json.dumps(report))
