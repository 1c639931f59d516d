"""Every measurement of gpuknn: ``gpuknn bench`` (gpuknn against its peers on a preset or
the user's own data) and the modules behind the ``bench/`` scripts.

Shared by all: :mod:`~gpuknn.benchmark.measure` (``interleaved`` rounds and ``summary``),
:mod:`~gpuknn.benchmark.timed` (timed operations with wall and CPU time),
:mod:`~gpuknn.benchmark.machine` (the machine and source record) and the data of
:mod:`gpuknn.datasets.synthetic`.

- :mod:`gpuknn.benchmark.presets`: the data sets (made from a seed, or read).
- :mod:`gpuknn.benchmark.engines`: gpuknn and its peers behind one small interface.
- :mod:`gpuknn.benchmark.measure`: build time, throughput, latency, recall, accuracy, memory
  (``--memory``: what each built engine holds and its build's peak, over the raw vectors).
- :mod:`gpuknn.benchmark.report`: JSON lines, a Markdown table and PNG plots.
- :mod:`gpuknn.benchmark.runner`: the command itself.
- :mod:`gpuknn.benchmark.memory`: memory of the exact search next to faiss, each in a
  fresh process (fit, load, ``gpuknn serve`` PSS, GPU accounting): ``bench/memory.py``.
  Its parts: :mod:`~gpuknn.benchmark.memory_data` (the data sets),
  :mod:`~gpuknn.benchmark.procmem` (``/proc`` and process trees),
  :mod:`~gpuknn.benchmark.fit_memory` (fit memory and load time, in a fresh process),
  :mod:`~gpuknn.benchmark.server_memory` (a real server's memory, its HTTP helpers) and
  :mod:`~gpuknn.benchmark.gpu_memory` (GPU accounting).
- Behind the other ``bench/`` scripts: :mod:`~gpuknn.benchmark.cpu_compare` (exact search
  against faiss and scikit-learn), :mod:`~gpuknn.benchmark.io_compare` (reading data
  against the SageMaker SDK), :mod:`~gpuknn.benchmark.train_covtype` (a whole ``gpuknn
  train`` job against SageMaker's log), :mod:`~gpuknn.benchmark.serve_covtype` (a real
  server's latency), :mod:`~gpuknn.benchmark.multimodel`,
  :mod:`~gpuknn.benchmark.distributed`, :mod:`~gpuknn.benchmark.ivf_overhead`,
  :mod:`~gpuknn.benchmark.shards`, :mod:`~gpuknn.benchmark.gpu_bench` (the GPU check) and
  :mod:`~gpuknn.benchmark.fuzz`; each keeps its report writer beside it.
"""
