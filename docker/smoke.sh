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
#    30 s grace period;
# 5. runs `IMAGE serve` again as a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true),
#    with the model mounted as SageMaker unpacks models, at /opt/ml/models/letter/model,
#    and as a model.tar.gz at /opt/ml/models/archived/model; checks /ping and an empty
#    GET /models, loads both (POST /models: 200, then 409 for a second load of a name),
#    invokes each (/models/NAME/invoke, and /invocations with the header
#    X-Amzn-SageMaker-Target-Model) with the CSV rows and compares the answers with the
#    Python API's, lists both, unloads one (DELETE: 200, then 404 on invoking it), and
#    stops the server with SIGTERM as in 4.
# Everything runs inside the image except curl, so the host needs only ENGINE and curl.
# Exit 0 when every step passed; the first failure exits 1 and says which step.
set -euo pipefail

engine=${1:?usage: docker/smoke.sh docker|podman DOCKERFILE [TAG]}
dockerfile=${2:?usage: docker/smoke.sh docker|podman DOCKERFILE [TAG]}
tag=${3:-gpuknn-smoke:$(basename "$dockerfile" | tr '.' '-' | tr '[:upper:]' '[:lower:]')}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpuknn-smoke.XXXXXX")
name=gpuknn-smoke-$$
mm_name=gpuknn-smoke-mm-$$
port=${SMOKE_PORT:-$((20000 + $$ % 20000))}
inner_port=8081
grace=30

step() { printf 'smoke: %s\n' "$*"; }
fail() { printf 'smoke: FAILED: %s\n' "$*" >&2; exit 1; }
cleanup() {
  "$engine" rm -f "$name" >/dev/null 2>&1 || true
  "$engine" rm -f "$mm_name" >/dev/null 2>&1 || true
  # files written by the container's root user: remove them from inside
  "$engine" run --rm -v "$work:/work" --entrypoint sh "$tag" -c 'rm -rf /work/*' \
    >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
inside() { "$engine" run --rm -v "$work:/work" -w /work --entrypoint python "$tag" -c "$1"; }
# await_ping CONTAINER: wait for the server in CONTAINER to answer /ping with 200.
await_ping() {
  local code=
  for _ in $(seq 240); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ping" || true)
    [ "$code" = 200 ] && return 0
    [ "$("$engine" inspect "$1" --format '{{.State.Running}}')" = true ] \
      || { "$engine" logs "$1" >&2; fail "serve exited before /ping answered"; }
    sleep 0.25
  done
  "$engine" logs "$1" >&2; fail "/ping answered $code"
}
# same_predictions ANSWER WHAT: the predictions in $work/ANSWER equal the Python API's.
same_predictions() {
  inside "
import json
got = [row['predicted_label'] for row in json.load(open('$1'))['predictions']]
want = json.load(open('expected.json'))
assert got == want, (got, want)
print('smoke: $2: {} predictions equal the Python API'.format(len(got)))
" || fail "$2 answers differ from the Python API"
}
# expect STATUS WHAT ANSWER CURL_ARGS...: the request answers STATUS, its body in $work/ANSWER.
expect() {
  local want=$1 what=$2 answer=$3 code
  shift 3
  code=$(curl -s -o "$work/$answer" -w '%{http_code}' "$@" || true)
  [ "$code" = "$want" ] && return 0
  cat "$work/$answer" >&2 2>/dev/null; echo >&2
  "$engine" logs "$mm_name" 2>&1 | tail -20 >&2
  fail "multi-model: $what answered $code, not $want"
}
# same_json ANSWER JSON WHAT: $work/ANSWER holds the JSON value JSON.
same_json() {
  inside "
import json
got, want = json.load(open('$1')), json.loads('''$2''')
assert got == want, (got, want)
print('smoke: multi-model: $3: {}'.format(json.dumps(got)))
" || fail "multi-model: $3 answered otherwise"
}
# sigterm CONTAINER: stop it; it must exit 0 within the grace period.
sigterm() {
  local stopped=$SECONDS took status
  "$engine" stop -t $grace "$1" >/dev/null
  took=$((SECONDS - stopped))
  status=$("$engine" inspect "$1" --format '{{.State.ExitCode}}')
  [ "$status" = 0 ] || { "$engine" logs "$1" 2>&1 | tail -20 >&2; fail "exit code $status"; }
  [ "$took" -lt $grace ] || fail "SIGTERM took $took s (grace $grace s)"
  step "stopped with exit code 0 in $took s"
}

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
await_ping "$name"

for pair in text/csv:csv application/json:json application/jsonlines:jsonl \
            application/x-recordio-protobuf:pbr; do
  type=${pair%%:*}; ext=${pair##*:}
  code=$(curl -s -o "$work/answer.$ext.json" -w '%{http_code}' -H "Content-Type: $type" \
    -H "Accept: application/json" --data-binary "@$work/queries.$ext" \
    "http://127.0.0.1:$port/invocations")
  [ "$code" = 200 ] || { cat "$work/answer.$ext.json" >&2; fail "$type answered $code"; }
  same_predictions "answer.$ext.json" "$type"
done

step "SIGTERM"
sigterm "$name"

multi_started=$SECONDS
step "the model as a model.tar.gz (its files at the top level)"
inside '
import pathlib, tarfile
with tarfile.open("model.tar.gz", "w:gz") as archive:
    for path in sorted(pathlib.Path("ml/model").iterdir()):
        archive.add(path, arcname=path.name)
' || fail "writing model.tar.gz"

step "multi-model serve on 127.0.0.1:$port (SAGEMAKER_MULTI_MODEL=true)"
"$engine" run -d --name "$mm_name" -e SAGEMAKER_MULTI_MODEL=true \
  -e SAGEMAKER_BIND_TO_PORT=$inner_port -p "127.0.0.1:$port:$inner_port" \
  -v "$work/ml/model:/opt/ml/models/letter/model:ro" \
  -v "$work/model.tar.gz:/opt/ml/models/archived/model/model.tar.gz:ro" "$tag" serve \
  >/dev/null || fail "multi-model serve did not start"
await_ping "$mm_name"
mm=http://127.0.0.1:$port
expect 200 "GET /models" models.json "$mm/models"
same_json models.json '{"models": []}' "GET /models before any load"
for model in letter archived; do
  expect 200 "POST /models ($model)" "load.$model.json" -H "Content-Type: application/json" \
    --data-binary "{\"model_name\": \"$model\", \"url\": \"/opt/ml/models/$model/model\"}" \
    "$mm/models"
done
expect 409 "a second POST /models (letter)" load.again.json -H "Content-Type: application/json" \
  --data-binary '{"model_name": "letter", "url": "/opt/ml/models/letter/model"}' "$mm/models"
step "multi-model: loaded letter and archived; a second load of letter answered 409"
for model in letter archived; do
  expect 200 "POST /models/$model/invoke" "answer.$model.json" -H "Content-Type: text/csv" \
    -H "Accept: application/json" --data-binary "@$work/queries.csv" \
    "$mm/models/$model/invoke"
  same_predictions "answer.$model.json" "multi-model: /models/$model/invoke"
done
expect 200 "POST /invocations (target letter)" answer.target.json \
  -H "X-Amzn-SageMaker-Target-Model: letter" -H "Content-Type: text/csv" \
  -H "Accept: application/json" --data-binary "@$work/queries.csv" "$mm/invocations"
same_predictions answer.target.json "multi-model: /invocations with the target model letter"
expect 200 "GET /models" models.json "$mm/models"
same_json models.json '{"models": [
  {"modelName": "archived", "modelUrl": "/opt/ml/models/archived/model"},
  {"modelName": "letter", "modelUrl": "/opt/ml/models/letter/model"}]}' "GET /models"
expect 200 "DELETE /models/letter" unload.json -X DELETE "$mm/models/letter"
expect 404 "POST /models/letter/invoke after its DELETE" answer.unloaded.json \
  -H "Content-Type: text/csv" --data-binary "@$work/queries.csv" "$mm/models/letter/invoke"
step "multi-model: DELETE /models/letter answered 200, then invoking it 404"

step "multi-model SIGTERM"
sigterm "$mm_name"
step "multi-model part passed in $((SECONDS - multi_started)) s"
step "passed in $((SECONDS - started)) s"
