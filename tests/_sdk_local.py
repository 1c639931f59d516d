"""The official SageMaker Python SDK v2, in local mode, against gpuknn's image.

    python tests/_sdk_local.py IMAGE WORKDIR        (DOCKER_HOST set, docker-compose on PATH)

Run by ``tests/test_container.py`` as a subprocess: it prints one JSON line at the end
with what it measured. Steps:

1. the SDK's ``write_numpy_to_dense_tensor`` writes the letter set as RecordIO files;
2. the SDK's own ``sagemaker.KNN`` estimator, its image pointed at gpuknn's, trains on
   them (``file://`` inputs); the job's outcome is checked here, because docker-compose
   v1 does not report a failed container (the SDK would deploy an empty model);
3. ``deploy(instance_type="local")``, then ``KNNPredictor.predict`` on test rows;
4. the SDK's local batch transform (``Transformer``) on a CSV file.

What local mode needs here, and why:

- ``LocalSession`` looks up (or creates) a default bucket in S3: one is set, so no AWS
  call is made; telemetry is opted out in the SDK config for the same reason;
- local mode takes ``FullyReplicated`` channels only (``RecordSet`` defaults to
  ``ShardedByS3Key``);
- the SDK publishes the serving port on every interface: it is rewritten to 127.0.0.1;
- the SDK's local transform reads ``BatchStrategy`` from ``GET /execution-parameters``
  as an API value ("MultiRecord"), while SageMaker documents the container's answer as
  "MULTI_RECORD" (gpuknn answers as documented): the strategy is given explicitly;
- local mode leaves its exited containers behind: they are removed at the end.
"""

from __future__ import annotations

import json
import os
import pathlib
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

from gpuknn import KNNModel
from gpuknn.datasets import load_letter

ROLE = "arn:aws:iam::111111111111:role/gpuknn-local"
TEST_ROWS = slice(1000, 3000)
BATCH_ROWS = slice(3000, 3200)


def main(image: str, work: pathlib.Path) -> dict:
    _point_knn_at(image)
    _adapt_compose()
    session = _session(_free_port())
    X, y, Q, y_q = load_letter()
    sets = [_record_set(work, "train", X, y), _record_set(work, "test", Q[:1000], y_q[:1000])]
    knn = sagemaker.KNN(role=ROLE, instance_count=1, instance_type="local", k=5,
                        sample_size=len(X), predictor_type="classifier", feature_dim=16,
                        sagemaker_session=session, output_path=f"file://{work}/output")
    report = {"image": image}
    began = time.monotonic()
    knn.fit(sets, logs=False)
    report["fit_s"] = time.monotonic() - began
    model_path = _check_outcome(work)
    reference = KNNModel.load(model_path).predict(Q)
    report.update(_endpoint(knn, Q, y_q, reference))
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


def _record_set(work: pathlib.Path, channel: str, X: np.ndarray, y: np.ndarray) -> RecordSet:
    folder = work / channel
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data.pbr", "wb") as handle:
        write_numpy_to_dense_tensor(handle, X.astype(np.float32), y.astype(np.float32))
    return RecordSet(f"file://{folder}", num_records=len(X), feature_dim=X.shape[1],
                     s3_data_type="S3Prefix", channel=channel, distribution="FullyReplicated")


def _check_outcome(work: pathlib.Path) -> pathlib.Path:
    """The trained model's archive; a failed job raises with its output/failure."""
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
    try:
        print(json.dumps(main(image_name, workdir)), flush=True)
    finally:
        remove_containers(image_name)
