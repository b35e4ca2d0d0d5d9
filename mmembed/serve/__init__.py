"""The search service: an HTTP API, a web page and a Python client over a retrieval directory.

- :func:`mmembed.serve.app.create_app` builds the FastAPI app (``mmembed serve INDEX`` runs it);
- :mod:`mmembed.serve.models` holds the request and response models shared with the client;
- :class:`mmembed.serve.client.Client` calls the API from Python.

Importing this package loads nothing heavy; FastAPI, uvicorn and httpx come with the ``serve`` extra.
"""
