"""Recommender models, found by name: ``build(cfg.model, n_users, n_items, **context)``.

``base.RecModel`` is the contract every model fulfils (checked by ``register``); ``io`` saves and
loads models/model/. Importing this package registers every model: ``mf``, ``ncf``, ``two_tower``,
``mult_vae`` (trained by gradient steps), the classic ones (``classic``: ``popularity``, ``random``,
``item_knn``, ``user_knn``, ``ease``), ``ials`` (closed-form solves), ``window_ease`` (EASE over
time-ordered pairs), ``content``, ``hybrid`` and ``blend``
(validation-weighted members).
"""

from recpipe.models import (  # noqa: F401  (registration)
    blend,
    classic,
    content,
    hybrid,
    ials,
    mf,
    mult_vae,
    ncf,
    two_tower,
    window_ease,
)
from recpipe.models.base import RecModel, available, build, get, register

__all__ = ["RecModel", "available", "build", "get", "register"]
