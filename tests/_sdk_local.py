"""The official SageMaker Python SDK v2, in local mode, against gpuknn's image.

    python tests/_sdk_local.py IMAGE WORKDIR [INSTANCES]   (DOCKER_HOST set, docker-compose
                                                            on PATH; INSTANCES 1 or 2)

Run by ``tests/test_container.py`` as a subprocess: it prints one JSON line at the end
with what it measured. Steps:

1. the SDK's ``write_numpy_to_dense_tensor`` writes the letter set as RecordIO files
   (one training file for one instance; four for two, so that each host reads a block of
   two files of the ``FullyReplicated`` channel);
2. the SDK's own ``sagemaker.KNN`` estimator, its image pointed at gpuknn's, trains on
   them (``file://`` inputs) with ``instance_count`` containers on one compose network
   (named ``algo-1-<suffix>``, ``algo-2-<suffix>`` as SageMaker does); each host's exit
   code, ``output/failure`` and log are kept here before the SDK deletes them, because
   docker-compose v1 does not report a failed container (the SDK would deploy an empty
   model) and the SDK merges the hosts' ``output/`` into one archive;
3. ``deploy(instance_type="local")``, then ``KNNPredictor.predict`` on test rows;
4. with one instance, the SDK's local batch transform (``Transformer``) on a CSV file.

What local mode needs here, and why:

- ``LocalSession`` looks up (or creates) a default bucket in S3: one is set, so no AWS
  call is made; telemetry is opted out in the SDK config for the same reason;
- local mode takes ``FullyReplicated`` channels only (``RecordSet`` defaults to
  ``ShardedByS3Key``);
- the SDK publishes the serving port on every interface: it is rewritten to 127.0.0.1;
- the SDK's local transform reads ``BatchStrategy`` from ``GET /execution-parameters``
  as an API value ("MultiRecord"), while SageMaker documents the container's answer as
  "MULTI_RECORD" (gpuknn answers as documented): the strategy is given explicitly;
- local mode leaves its exited containers behind: they are removed at the end;
- with several instances, local mode mounts one ``model/`` directory into every container
  (SageMaker gives each host its own): only the leader writes a model there, and the
  archive holds it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tarfile
import time

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

import numpy as np
import sagemaker
from sagemaker import image_uris
from sagemaker.amazon.amazon_estimator import RecordSet
from sagemaker.amazon.common import write_numpy_to_dense_tensor
from sagemaker.local import LocalSession
from sagemaker.local.image import _SageMakerContainer

from gpuknn import KNN, KNNModel
from gpuknn.datasets import load_letter

ROLE = "arn:aws:iam::111111111111:role/gpuknn-local"
TEST_ROWS = slice(1000, 3000)
BATCH_ROWS = slice(3000, 3200)


# A host that waits for the others gives up after this (gpuknn's default: 300 s).
HOST_TIMEOUT_S = "120"


def main(image: str, work: pathlib.Path, instances: int = 1) -> dict:
    _point_knn_at(image)
    _adapt_compose()
    _keep_hosts(work / "hosts")
    session = _session(_free_port())
    X, y, Q, y_q = load_letter()
    files = 1 if instances == 1 else 2 * instances
    sets = [_record_set(work, "train", X, y, files),
            _record_set(work, "test", Q[:1000], y_q[:1000])]
    knn = sagemaker.KNN(role=ROLE, instance_count=instances, instance_type="local", k=5,
                        sample_size=len(X), predictor_type="classifier", feature_dim=16,
                        sagemaker_session=session, output_path=f"file://{work}/output",
                        environment={"GPUKNN_HOST_TIMEOUT_S": HOST_TIMEOUT_S})
    report = {"image": image, "instances": instances, "train_files": files}
    began = time.monotonic()
    knn.fit(sets, logs=False)
    report["fit_s"] = time.monotonic() - began
    report["hosts"] = _host_outcomes(work / "hosts")
    model_path = _check_outcome(work, report["hosts"])
    with tarfile.open(model_path) as archive:
        report["model_files"] = sorted(archive.getnames())
    model = KNNModel.load(model_path, device="cpu")
    report.update(rows_seen=model.rows_seen, n_indexed=model.n_indexed,
                  ids_are_row_numbers=bool(np.array_equal(np.sort(model.ids),
                                                          np.arange(len(X)))))
    reference = model.predict(Q)
    if instances > 1:  # every row is kept: the hosts' model is the one-process model
        single = KNN(device="cpu", k=5, predictor_type="classifier", sample_size=len(X),
                     feature_dim=16).fit(X, y).model
        report["equals_one_process_fit"] = bool(
            np.array_equal(single.predict(Q), reference)
            and np.array_equal(single.kneighbors(Q[:500])[1], model.kneighbors(Q[:500])[1]))
    report.update(_endpoint(knn, Q, y_q, reference))
    if instances == 1:
        report.update(_transform(knn, work, Q, reference))
    return report


def _point_knn_at(image: str) -> None:
    """The KNN estimator and model resolve their image through image_uris.retrieve("knn")."""
    real = image_uris.retrieve

    def retrieve(framework, *args, **kwargs):
        return image if framework == "knn" else real(framework, *args, **kwargs)

    image_uris.retrieve = retrieve


def _adapt_compose() -> None:
    """The SDK's compose service, published on 127.0.0.1 only."""
    real = _SageMakerContainer._create_docker_host

    def create(self, *args, **kwargs):
        host = real(self, *args, **kwargs)
        if "ports" in host:
            host["ports"] = [f"127.0.0.1:{mapping}" for mapping in host["ports"]]
        return host

    _SageMakerContainer._create_docker_host = create


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _session(port: int) -> LocalSession:
    config = {"SchemaVersion": "1.0",
              "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
    session = LocalSession(default_bucket="gpuknn-local", sagemaker_config=config)
    session._default_bucket = "gpuknn-local"  # set: no S3 call to find or create it
    session.config = {"local": {"local_code": True, "serving_port": port}}
    return session


def _keep_hosts(keep: pathlib.Path) -> None:
    """Keep each training host's exit code, ``output/`` and log.

    The SDK gathers the hosts' ``output/`` into one archive (a file of one host replaces
    the same file of another) and then deletes each host's directory; its containers stay
    until ``remove_containers``. This runs when the compose command has ended, before both.
    """
    real = _SageMakerContainer.retrieve_artifacts

    def retrieve(self, compose_data, output_data_config, job_name):
        for host in self.hosts:
            folder = keep / host
            folder.mkdir(parents=True, exist_ok=True)
            output = pathlib.Path(self.container_root) / host / "output"
            if output.is_dir():
                shutil.copytree(output, folder / "output")
            container = compose_data["services"][host]["container_name"]
            state = subprocess.run(["docker", "inspect", "--format",
                                    "{{.State.Status}} {{.State.ExitCode}}", container],
                                   capture_output=True, text=True, check=False)
            (folder / "state").write_text(state.stdout.strip() or f"? ({state.stderr.strip()})")
            logs = subprocess.run(["docker", "logs", container], capture_output=True,
                                  text=True, check=False)
            (folder / "log").write_text(logs.stdout + logs.stderr)
        return real(self, compose_data, output_data_config, job_name)

    _SageMakerContainer.retrieve_artifacts = retrieve


def _host_outcomes(keep: pathlib.Path) -> dict:
    """host: its container's state and exit code, its ``output/failure`` (or None), and
    the file of its log, in host order (``algo-1-...`` first)."""
    outcomes = {}
    for folder in sorted(keep.iterdir(), key=lambda path: int(path.name.split("-")[1])):
        status, _, code = (folder / "state").read_text().partition(" ")
        failure = folder / "output" / "failure"
        outcomes[folder.name] = {
            "status": status, "exit_code": int(code) if code.strip().isdigit() else None,
            "failure": failure.read_text() if failure.exists() else None,
            "log": str(folder / "log")}
    return outcomes


def _record_set(work: pathlib.Path, channel: str, X: np.ndarray, y: np.ndarray,
                files: int = 1) -> RecordSet:
    """``files`` RecordIO files of consecutive rows (part-0.pbr, part-1.pbr, ...)."""
    folder = work / channel
    folder.mkdir(parents=True, exist_ok=True)
    for index, rows in enumerate(np.array_split(np.arange(len(X)), files)):
        with open(folder / f"part-{index}.pbr", "wb") as handle:
            write_numpy_to_dense_tensor(handle, X[rows].astype(np.float32),
                                        y[rows].astype(np.float32))
    return RecordSet(f"file://{folder}", num_records=len(X), feature_dim=X.shape[1],
                     s3_data_type="S3Prefix", channel=channel, distribution="FullyReplicated")


def _check_outcome(work: pathlib.Path, hosts: dict) -> pathlib.Path:
    """The trained model's archive. A failed job raises with each host's exit code and
    ``output/failure``: no endpoint is deployed on an empty model."""
    failed = {host: outcome for host, outcome in hosts.items()
              if outcome["exit_code"] != 0 or outcome["failure"] is not None}
    if failed:
        raise SystemExit("the training job failed: " + "; ".join(
            f"{host} ended {o['status']} with exit code {o['exit_code']}, output/failure: "
            f"{o['failure']!r} (log: {o['log']})" for host, o in failed.items()))
    output = work / "output"
    if (output / "output.tar.gz").exists():
        with tarfile.open(output / "output.tar.gz") as archive:
            if "failure" in archive.getnames():
                reason = archive.extractfile("failure").read().decode()
                raise SystemExit(f"the training container failed: {reason}")
    model = output / "model.tar.gz"
    with tarfile.open(model) as archive:
        names = archive.getnames()
    if "model_algo-1.json" not in names:
        raise SystemExit(f"the training job wrote no model: {model} holds {names}")
    return model


def _endpoint(knn, Q: np.ndarray, y_q: np.ndarray, reference: np.ndarray) -> dict:
    began = time.monotonic()
    predictor = knn.deploy(initial_instance_count=1, instance_type="local")
    deployed = time.monotonic() - began
    try:
        began = time.monotonic()
        records = predictor.predict(Q[TEST_ROWS].astype(np.float32))
        seconds = time.monotonic() - began
    finally:
        predictor.delete_endpoint()
    got = np.array([record.label["predicted_label"].float32_tensor.values[0]
                    for record in records], dtype=np.float32)
    return {"deploy_s": deployed, "predict_s": seconds, "predict_rows": len(got),
            "endpoint_accuracy": float(np.mean(got == y_q[TEST_ROWS])),
            "endpoint_equals_python_api": bool(np.array_equal(got, reference[TEST_ROWS]))}


def _transform(knn, work: pathlib.Path, Q: np.ndarray, reference: np.ndarray) -> dict:
    batch = work / "batch"
    batch.mkdir(exist_ok=True)
    np.savetxt(batch / "queries.csv", Q[BATCH_ROWS], fmt="%.9g", delimiter=",")
    transformer = knn.transformer(1, "local", strategy="MultiRecord",
                                  output_path=f"file://{work}/transform",
                                  accept="application/jsonlines")
    began = time.monotonic()
    transformer.transform(f"file://{batch}", content_type="text/csv", split_type="Line",
                          wait=False, logs=False)
    transformer.wait(logs=False)  # logs=True would read CloudWatch
    seconds = time.monotonic() - began
    lines = (work / "transform" / "queries.csv.out").read_text().splitlines()
    got = np.array([json.loads(line)["predicted_label"] for line in lines], dtype=np.float32)
    return {"transform_s": seconds, "transform_rows": len(got),
            "transform_equals_python_api": bool(np.array_equal(got, reference[BATCH_ROWS]))}


def remove_containers(image: str) -> None:
    """Local mode's exited containers of ``image``."""
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={image}"],
                            capture_output=True, text=True, check=False).stdout.split()
    if listed:
        subprocess.run(["docker", "rm", "-f", *listed], capture_output=True, check=False)


if __name__ == "__main__":
    image_name, workdir = sys.argv[1], pathlib.Path(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    try:
        print(json.dumps(main(image_name, workdir, count)), flush=True)
    finally:
        remove_containers(image_name)
