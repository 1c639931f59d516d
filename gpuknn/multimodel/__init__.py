"""Multi-model serving: SageMaker's multi-model endpoint contract in ``gpuknn serve``.

One server holds many models, loaded and unloaded while it runs (``POST /models``,
``DELETE /models/<name>``) and invoked by name (``POST /models/<name>/invoke``, or
``/invocations`` with ``X-Amzn-SageMaker-Target-Model``), within a memory budget.

- :mod:`gpuknn.multimodel.names`: model names and the ``url`` of a load request.
- :mod:`gpuknn.multimodel.budget`: the memory budget and what a model is charged.
- :mod:`gpuknn.multimodel.registry`: the loaded models, shared by the worker processes.
- :mod:`gpuknn.multimodel.pool`: the models one worker process holds and answers with.
- :mod:`gpuknn.multimodel.app`: the Starlette application and its routes.
"""
