"""``kmflow serve``: the champion models of a registry over HTTP (FastAPI on uvicorn).

>>> from kmflow.serve import create_app  # doctest: +SKIP
>>> app = create_app(models=["customers"])  # any ASGI server; or: uvicorn --factory

See :mod:`kmflow.serve.app` for the routes, :mod:`kmflow.serve.champions` for how a promotion
reaches the service without a restart and :mod:`kmflow.serve.http` for problem answers, the
body limit, API keys and metrics.
"""

from kmflow.serve.app import create_app

__all__ = ["create_app"]
