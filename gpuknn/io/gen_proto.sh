#!/usr/bin/env bash
# Regenerate record.desc (a FileDescriptorSet) from record.proto with protoc.
# gpuknn builds its message classes from record.desc in a private descriptor pool
# (gpuknn/io/_record.py), so it never clashes with the SageMaker SDK's own record_pb2,
# which registers the same aialgs.data names in protobuf's default pool.
# Generator used for the checked-in file: grpcio-tools 1.62.3 (libprotoc 25.1).
set -euo pipefail
cd "$(dirname "$0")"
python -m grpc_tools.protoc -I. --descriptor_set_out=record.desc record.proto
