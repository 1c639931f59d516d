"""gpuknn beyond one machine, on Ray (``pip install "gpuknn[ray]"``).

- :mod:`~gpuknn.distributed.parts` and :mod:`~gpuknn.distributed.merge` (numpy only):
  which rows each host reads, and how the hosts' reservoir samples become one uniform
  sample of the whole data.
- :mod:`~gpuknn.distributed.cluster`: the only module that imports Ray (inside
  functions); connecting to a cluster, and running a node of one.
- :mod:`~gpuknn.distributed.fitting`: sampling shards on a cluster, for
  ``KNN.fit([shard, ...])`` and for multi-host ``gpuknn train``.
- :mod:`~gpuknn.distributed.hosts`: the SageMaker multi-host contract of ``gpuknn train``.
- :mod:`~gpuknn.distributed.transform`: batch transform with Ray Data.

Importing this package imports neither Ray nor faiss.
"""
