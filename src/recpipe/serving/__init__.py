"""Serving: the exported top-K SavedModel and the commands that query it.

``export`` builds and saves the serving module (``retrieval``: exact or ScaNN top-k; ``similar``:
similar items for a new item's features), ``load`` reads an export back and queries it, and
``client`` holds ``recpipe recommend`` / ``recpipe similar``. Imports only go downwards
(client -> load -> export -> retrieval, similar), so there is no cycle.
"""
