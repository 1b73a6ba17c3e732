"""Serving: the exported top-K SavedModel and the commands that query it.

``export`` builds and saves the serving module (``retrieval``: exact or ScaNN top-k; ``similar``:
similar items for a new item's features), ``load`` reads an export back and queries it, and
``client`` holds ``recpipe recommend`` / ``recpipe similar``. ``http`` is ``recpipe serve`` (the
HTTP service), on ``runtime`` (model sources: an export or the MLflow registry; loading, metadata)
and ``batcher`` (micro-batching). Imports only go downwards (client -> load -> export -> retrieval,
similar; http -> runtime, batcher -> export), so there is no cycle.
"""
