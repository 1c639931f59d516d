"""Serving: the SageMaker inference contract (``gpuknn serve``) and batch transform.

- :mod:`gpuknn.serving.formats`: request bodies in, responses out.
- :mod:`gpuknn.serving.batching`: dynamic micro-batching of concurrent requests.
- :mod:`gpuknn.serving.app`: the Starlette application and its routes.
- :mod:`gpuknn.serving.server`: running it on uvicorn, one or several workers.
- :mod:`gpuknn.serving.transform`: offline batch transform, file by file.
"""
