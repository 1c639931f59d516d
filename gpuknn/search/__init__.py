"""Nearest-neighbour search over a fitted sample's index vectors.

:mod:`~gpuknn.search.exact` (brute force on the CPU or a GPU, optionally pruned by
:mod:`~gpuknn.search.partition`) and :mod:`~gpuknn.search.faiss_index` (faiss's IVFFlat
and IVFPQ, on a GPU through :mod:`~gpuknn.search.faiss_gpu`) answer the same call,
``search(queries, k) -> (distances, ids)``. :mod:`~gpuknn.search.base` holds the vectors
once, :mod:`~gpuknn.search.topk` selects and merges candidates, and
:mod:`~gpuknn.search.rounding` bounds float32 rounding so that ties are decided exactly.
:mod:`~gpuknn.search.index_file` reads faiss's flat index file without faiss.

Nothing is imported here: ``import gpuknn.search.topk`` needs only numpy.
"""
