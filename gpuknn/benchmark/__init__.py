"""``gpuknn bench``: gpuknn against its peers on a preset or the user's own data.

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
"""
