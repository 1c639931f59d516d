"""The fitted model: what ``KNN.fit`` builds, a model file holds and a server answers with.

:mod:`~gpuknn.model.knn_model` (:class:`~gpuknn.model.knn_model.KNNModel`) prepares
queries, searches and turns neighbours into answers through
:mod:`~gpuknn.model.predict` (votes and means); :mod:`~gpuknn.model.reduction` is the
sign and FJLT dimension reduction; :mod:`~gpuknn.model.files` writes and reads model
files.

Nothing is imported here; ``from gpuknn import KNNModel`` is the public name.
"""
