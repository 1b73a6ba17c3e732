"""Recommender models, found by name: ``build(cfg.model, n_users, n_items, **context)``.

``base.RecModel`` is the contract every model fulfils (checked by ``register``); ``io`` saves and
loads models/model/. Importing this package registers every model: ``mf``, ``ncf``, ``two_tower``
(trained by gradient steps), the classic ones (``classic``: ``popularity``, ``random``,
``item_knn``, ``user_knn``, ``ease``), ``content`` and ``hybrid``.
"""

from recpipe.models import classic, content, hybrid, mf, ncf, two_tower  # noqa: F401  (registration)
from recpipe.models.base import RecModel, available, build, get, register

__all__ = ["RecModel", "available", "build", "get", "register"]
