"""``gpuknn bench``: gpuknn against its peers on a preset or the user's own data.

- :mod:`gpuknn.benchmark.presets`: the data sets (made from a seed, or read).
- :mod:`gpuknn.benchmark.engines`: gpuknn and its peers behind one small interface.
- :mod:`gpuknn.benchmark.measure`: build time, throughput, latency, recall, accuracy, memory.
- :mod:`gpuknn.benchmark.report`: JSON lines, a Markdown table and PNG plots.
- :mod:`gpuknn.benchmark.runner`: the command itself.
"""
