"""The ``aialgs.data`` Record messages, built on first use from ``record.desc``.

``record.desc`` is the FileDescriptorSet that protoc generates from ``record.proto``
(``gen_proto.sh``). The messages live in a private descriptor pool, so gpuknn and the
SageMaker SDK, which registers the same names in protobuf's default pool, can be
imported in one process.
"""

from __future__ import annotations

import functools
from importlib import resources
from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

MESSAGES = ("Record", "Value", "Float32Tensor", "Float64Tensor", "Int32Tensor", "Bytes")


@functools.lru_cache(maxsize=1)
def messages() -> SimpleNamespace:
    """The message classes: ``.Record``, ``.Value``, ``.Float32Tensor``, ..."""
    data = resources.files(__package__).joinpath("record.desc").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return SimpleNamespace(**{
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"aialgs.data.{name}"))
        for name in MESSAGES})
