#!/usr/bin/env bash
# Build an image and prove it keeps SageMaker's container contract, end to end:
#
#   docker/smoke.sh ENGINE DOCKERFILE [TAG]
#   docker/smoke.sh docker docker/Dockerfile.cpu
#   docker/smoke.sh podman docker/Dockerfile.gpu        # without a GPU: its CPU part
#
# 1. builds DOCKERFILE with ENGINE (docker or podman) from the project root;
# 2. writes a small RecordIO data set (the bundled letter set) into a fresh /opt/ml tree,
#    runs `IMAGE train` with it mounted, and checks output/data/metrics.json;
# 3. runs `IMAGE serve` with the model mounted at /opt/ml/model and SAGEMAKER_BIND_TO_PORT,
#    published on 127.0.0.1 only; checks /ping, then sends one request per content type
#    (CSV, JSON, JSON Lines, RecordIO) and compares each answer with the Python API's
#    answer for the same rows (computed inside the image);
# 4. stops the server with SIGTERM, which must end it with exit code 0 inside SageMaker's
#    30 s grace period.
# Everything runs inside the image except curl, so the host needs only ENGINE and curl.
# Exit 0 when every step passed; the first failure exits 1 and says which step.
set -euo pipefail

engine=${1:?usage: docker/smoke.sh docker|podman DOCKERFILE [TAG]}
dockerfile=${2:?usage: docker/smoke.sh docker|podman DOCKERFILE [TAG]}
tag=${3:-gpuknn-smoke:$(basename "$dockerfile" | tr '.' '-' | tr '[:upper:]' '[:lower:]')}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpuknn-smoke.XXXXXX")
name=gpuknn-smoke-$$
port=${SMOKE_PORT:-$((20000 + $$ % 20000))}
inner_port=8081
grace=30

step() { printf 'smoke: %s\n' "$*"; }
fail() { printf 'smoke: FAILED: %s\n' "$*" >&2; exit 1; }
cleanup() {
  "$engine" rm -f "$name" >/dev/null 2>&1 || true
  # files written by the container's root user: remove them from inside
  "$engine" run --rm -v "$work:/work" --entrypoint sh "$tag" -c 'rm -rf /work/*' \
    >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
inside() { "$engine" run --rm -v "$work:/work" -w /work --entrypoint python "$tag" -c "$1"; }

started=$SECONDS
step "build $dockerfile as $tag with $engine"
"$engine" build -f "$root/$dockerfile" -t "$tag" "$root" >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; fail "build"; }
step "built in $((SECONDS - started)) s; $("$engine" image inspect "$tag" --format '{{.Size}}' \
  | awk '{printf "%.0f MB", $1 / 1e6}')"

step "write the letter set as RecordIO into a fresh /opt/ml tree"
inside '
import json, pathlib
import numpy as np
from gpuknn import io
from gpuknn.datasets import load_letter
X, y, Q, y_q = load_letter()
ml = pathlib.Path("ml")
for channel, (A, b) in {"train": (X, y), "test": (Q[:1000], y_q[:1000])}.items():
    (ml / "input/data" / channel).mkdir(parents=True)
    io.write_recordio(ml / "input/data" / channel / f"{channel}.pbr", A, b)
config = ml / "input/config"
config.mkdir(parents=True)
config.joinpath("hyperparameters.json").write_text(json.dumps(
    {"k": "5", "predictor_type": "classifier", "sample_size": "16000", "feature_dim": "16"}))
recordio = {"ContentType": "application/x-recordio-protobuf", "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated"}
config.joinpath("inputdataconfig.json").write_text(json.dumps(
    {"train": recordio, "test": recordio}))
config.joinpath("resourceconfig.json").write_text(json.dumps(
    {"current_host": "algo-1", "hosts": ["algo-1"]}))
rows = Q[1000:1040]
np.save("queries.npy", rows)
pathlib.Path("queries.csv").write_text(
    "".join(",".join(f"{v:g}" for v in row) + "\n" for row in rows))
pathlib.Path("queries.json").write_text(json.dumps(
    {"instances": [{"features": row.tolist()} for row in rows]}))
pathlib.Path("queries.jsonl").write_text(
    "\n".join(json.dumps({"features": row.tolist()}) for row in rows))
io.write_recordio("queries.pbr", rows)
' || fail "writing the data"

step "train"
"$engine" run --rm -v "$work/ml:/opt/ml" "$tag" train >"$work/train.log" 2>&1 \
  || { tail -20 "$work/train.log" >&2; fail "train exited non-zero"; }
grep -q '#quality_metric: host=algo-1, test accuracy' "$work/train.log" \
  || fail "train printed no #quality_metric line"
inside '
import json
metrics = json.load(open("ml/output/data/metrics.json"))
accuracy, records = metrics["test:accuracy"], metrics["train:records"]
print(f"smoke: test accuracy {accuracy:.4f} after training on {records:.0f} records")
assert accuracy > 0.9, metrics
' || fail "metrics.json"

step "the Python API's answers for the queries"
inside '
import json
import numpy as np
from gpuknn import KNNModel
model = KNNModel.load("ml/model")
json.dump(model.predict(np.load("queries.npy")).tolist(), open("expected.json", "w"))
' || fail "the Python API"

step "serve on 127.0.0.1:$port (SAGEMAKER_BIND_TO_PORT=$inner_port)"
"$engine" run -d --name "$name" -e SAGEMAKER_BIND_TO_PORT=$inner_port \
  -p "127.0.0.1:$port:$inner_port" -v "$work/ml/model:/opt/ml/model:ro" "$tag" serve \
  >/dev/null || fail "serve did not start"
for _ in $(seq 240); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ping" || true)
  [ "$code" = 200 ] && break
  [ "$("$engine" inspect "$name" --format '{{.State.Running}}')" = true ] \
    || { "$engine" logs "$name" >&2; fail "serve exited before /ping answered"; }
  sleep 0.25
done
[ "$code" = 200 ] || { "$engine" logs "$name" >&2; fail "/ping answered $code"; }

for pair in text/csv:csv application/json:json application/jsonlines:jsonl \
            application/x-recordio-protobuf:pbr; do
  type=${pair%%:*}; ext=${pair##*:}
  code=$(curl -s -o "$work/answer.$ext.json" -w '%{http_code}' -H "Content-Type: $type" \
    -H "Accept: application/json" --data-binary "@$work/queries.$ext" \
    "http://127.0.0.1:$port/invocations")
  [ "$code" = 200 ] || { cat "$work/answer.$ext.json" >&2; fail "$type answered $code"; }
  inside "
import json
got = [row['predicted_label'] for row in json.load(open('answer.$ext.json'))['predictions']]
want = json.load(open('expected.json'))
assert got == want, (got, want)
print('smoke: $type: {} predictions equal the Python API'.format(len(got)))
" || fail "$type answers differ from the Python API"
done

step "SIGTERM"
stopped=$SECONDS
"$engine" stop -t $grace "$name" >/dev/null
took=$((SECONDS - stopped))
status=$("$engine" inspect "$name" --format '{{.State.ExitCode}}')
[ "$status" = 0 ] || { "$engine" logs "$name" 2>&1 | tail -20 >&2; fail "exit code $status"; }
[ "$took" -lt $grace ] || fail "SIGTERM took $took s (grace $grace s)"
step "stopped with exit code 0 in $took s"
step "passed in $((SECONDS - started)) s"
