"""Cold-item evaluation: how well a scorer ranks items it never saw in train or val.

Cold items are items with no train or val interaction that appear in test (``split.cold_items``
holds many out on purpose; random splits leave a few). Each user with at least one cold test item
ranks the cold items only (every other item is excluded), with their cold test items as truth.
Keys are the ranking metrics prefixed ``cold_``: ``cold_recall_at_10``, ``cold_ndcg_at_10``, ...
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from recpipe.data.processed import Processed
from recpipe.evaluation import metrics
from recpipe.evaluation.ranking import ScoreFn, batch_users, top_k_items, users_with_truth
from recpipe.evaluation.registry import cold_key


def cold_items(seen: sp.csr_matrix, truth: sp.csr_matrix) -> np.ndarray:
    """Indices (int32, sorted) of the items in ``truth`` that no user has in ``seen`` (user x item)."""
    in_truth = np.diff(sp.csc_matrix(truth).indptr) > 0
    in_seen = np.diff(sp.csc_matrix(seen).indptr) > 0
    return np.flatnonzero(in_truth & ~in_seen).astype(np.int32)


def cold_items_of(data: Processed) -> np.ndarray:
    """The test split's cold items: no train or val interaction."""
    return cold_items(data.matrix("train", "val"), data.matrix("test"))


def cold_users(truth: sp.csr_matrix, cold: np.ndarray) -> np.ndarray:
    """Indices (int32) of the users with at least one ``cold`` item in ``truth``."""
    return users_with_truth(sp.csr_matrix(truth)[:, np.asarray(cold, dtype=np.int64)])


def cold_metrics(
    score_fn: ScoreFn,
    truth: sp.csr_matrix,
    cold: np.ndarray,
    ks: Sequence[int],
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mean ranking metrics over the ``cold`` items alone, keyed ``cold_<metric>_at_K``.

    Only users with a cold item in ``truth`` count (``cold_users``); each ranks just the cold items
    (none of which any user has seen, so nothing else needs excluding) with their cold truth items
    as relevant. No cold item or no such user gives ``{}``.
    """
    cold = np.asarray(cold, dtype=np.int64)
    cold_truth = sp.csr_matrix(truth)[:, cold]
    users = users_with_truth(cold_truth)
    if len(users) == 0:
        return {}
    nothing = sp.csr_matrix((truth.shape[0], len(cold)), dtype=np.float32)
    batch = batch_users(batch_size, truth.shape[1])  # the scorer scores the whole catalog
    topk, _ = top_k_items(lambda u: np.asarray(score_fn(u))[:, cold], users, nothing, max(ks), batch)
    per_user = metrics.metrics_from_topk(topk, cold_truth[users], ks)
    return {cold_key(k): v for k, v in metrics.mean(per_user).items()}
