"""``model=ease``: EASE (Steck 2019), closed-form item-item weights with a zero diagonal.

``EASE`` is the scipy algorithm (``fit(X)``, ``score(user_idx)``, directly a ranking ``score_fn``);
``tune_ease`` picks its lambda on the validation split; ``EASEModel`` holds the weights in
tf.Variables and scores with TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import tensorflow as tf
from tqdm.auto import tqdm

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation.ranking import rank_metrics, sample_users
from recpipe.evaluation.registry import TABLE_K, metric_key
from recpipe.models.base import register
from recpipe.models.classic.base import ClosedFormModel, Fitted, SparseRows, as_binary_csr
from recpipe.models.classic.gram import ColumnDots, column_blocks

log = logging.getLogger(__name__)

TUNE_METRIC = metric_key("ndcg", TABLE_K)
# items EASE keeps (the most popular) when nothing is configured: a dense float32 matrix of 256 MB
MAX_ITEMS = 8_000


def popularity_order(X: sp.csr_matrix) -> np.ndarray:
    """Column indices of ``X`` by number of nonzeros, most first (ties: lower index)."""
    return np.argsort(-np.bincount(X.indices, minlength=X.shape[1]), kind="stable")


def kept_items(X: sp.csr_matrix, max_items: int) -> np.ndarray:
    """Indices (ascending) of the ``max_items`` columns of ``X`` with the most nonzeros (ties: lower
    index), or of every column when there are no more than that."""
    n = X.shape[1]
    if max_items < 1:
        raise RecpipeError(f"EASE max_items must be at least 1, got {max_items}")
    if n <= max_items:
        return np.arange(n)
    return np.sort(popularity_order(X)[:max_items])


def dropped_ranks(X: sp.csr_matrix, keep: np.ndarray) -> np.ndarray:
    """Per column of ``X``: -1 for the ``keep`` items; for the others, their popularity rank among
    themselves as a fraction in [0, 1) (0: the most popular), for ``below_kept``."""
    ranks = np.full(X.shape[1], -1.0, dtype=np.float32)
    kept = np.zeros(X.shape[1], dtype=bool)
    kept[keep] = True
    order = popularity_order(X)
    dropped = order[~kept[order]]
    ranks[dropped] = np.arange(len(dropped), dtype=np.float32) / max(len(dropped), 1)
    return ranks


def below_kept(kept_min: Any, ranks: Any) -> Any:
    """Scores of the items EASE leaves out: finite, below the user's lowest kept score ``kept_min``
    ([b, 1]) by 1 to 2 times ``max(1, |kept_min|)``, in popularity order (``ranks``, [n] in [0, 1)).
    Works on numpy arrays and tf tensors alike."""
    step = abs(kept_min)
    step = np.maximum(step, 1.0) if isinstance(step, np.ndarray) else tf.maximum(step, 1.0)
    return kept_min - step * (1.0 + ranks[None, :])


def gram(X: sp.csr_matrix) -> np.ndarray:
    """``X^T X`` as a dense float32 matrix (``gram.ColumnDots``, in blocks of columns)."""
    n = X.shape[1]
    dots = ColumnDots(X)
    G = np.empty((n, n), dtype=np.float32)
    blocks = column_blocks(np.arange(n), n, 1 << 24)
    for cols, block in tqdm(
        dots.blocks(blocks), total=len(blocks), desc="EASE gram", unit="block", leave=False, disable=len(blocks) < 2
    ):
        G[cols] = block.numpy()
    return G


def spd_inverse(A: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite float32 matrix via Cholesky (LAPACK potrf/potri).

    About half the work of a general inverse; ``A`` is overwritten.
    """
    factor, info = scipy.linalg.lapack.spotrf(A, lower=True, overwrite_a=True, clean=False)
    if info == 0:
        inv, info = scipy.linalg.lapack.spotri(factor, lower=True, overwrite_c=True)
    if info != 0:
        raise NotPositiveDefinite(f"matrix is not positive definite (LAPACK info {info})")
    return np.tril(inv) + np.tril(inv, -1).T


class NotPositiveDefinite(RecpipeError):
    """``spd_inverse``'s Cholesky factorization failed."""


def with_ridge(G: np.ndarray, lam: float) -> np.ndarray:
    """A copy of ``G`` with ``lam`` added to its diagonal."""
    A = G.copy()
    A[np.diag_indices(len(A))] += lam
    return A


def ridge_inverse(G: np.ndarray, lam: float, model: str = "ease") -> np.ndarray:
    """``(G + lam I)^-1`` of a symmetric float32 ``G``: by Cholesky (``spd_inverse``) when positive
    definite, else by LU (``scipy.linalg.inv``): ``window_ease``'s matrix need not be positive
    semidefinite, and EASE's closed form only needs an invertible ``G + lam I``."""
    try:
        return spd_inverse(with_ridge(G, lam))
    except NotPositiveDefinite:
        log.info(f"model={model}: G + lam I (lam={lam:g}) is not positive definite; inverting it by LU instead")
    try:
        P = scipy.linalg.inv(with_ridge(G, lam), overwrite_a=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError) as e:
        raise singular(model, lam) from e
    if not np.isfinite(P).all():
        raise singular(model, lam)
    return P


def singular(model: str, lam: float) -> RecpipeError:
    """The error for a ``G + lam I`` without a (finite) inverse."""
    return RecpipeError(
        f"model={model}: the item-item matrix plus lam I (lam={lam:g}) is singular, EASE's closed form "
        "has no solution; try another model.lam"
    )


class EASE(Fitted):
    """``G = X^T X + lam I``, ``P = G^-1``, ``B = -P / diag(P)`` (column-wise), ``diag(B) = 0``;
    ``score(u) = X_u B``, in float32. B is a dense matrix over the ``max_items`` most popular items
    (``keep``); the other items get finite scores below every kept item's, most popular first (``below_kept``).
    ``dropped_share`` is the share of the train interactions on those items.
    """

    def __init__(self, lam: float, max_items: int = MAX_ITEMS, model: str = "ease") -> None:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam <= 0:
            raise RecpipeError(f"EASE lam must be a number > 0, got {lam!r}")
        self.lam, self.max_items, self.model = float(lam), max_items, model

    def fit(self, X: sp.spmatrix, kept_gram: tuple[np.ndarray, np.ndarray] | None = None) -> EASE:
        """Fit on ``X``; ``kept_gram`` is ``(kept items, their gram)`` when already computed."""
        X = as_binary_csr(X)
        keep, G = kept_gram or capped_gram(X, self.max_items)
        P = ridge_inverse(G, self.lam, self.model)
        B = P / -np.diag(P)[None, :]
        if not np.isfinite(B).all():  # a zero on P's diagonal
            raise singular(self.model, self.lam)
        B[np.diag_indices(len(keep))] = 0.0
        self.X, self.keep, self.B = X, keep, B
        self.dropped_ranks = dropped_ranks(X, keep)
        self.dropped_share = 1.0 - X[:, keep].nnz / max(X.nnz, 1)
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        X = self._train()
        kept = np.asarray(X[np.asarray(user_idx)][:, self.keep] @ self.B, dtype=np.float32)
        if len(self.keep) == X.shape[1]:
            return kept
        dropped = self.dropped_ranks >= 0
        out = np.empty((len(user_idx), X.shape[1]), dtype=np.float32)
        out[:, self.keep] = kept
        out[:, dropped] = below_kept(kept.min(axis=1, keepdims=True), self.dropped_ranks[dropped])
        return out


def capped_gram(X: sp.csr_matrix, max_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The kept items of ``X`` (``kept_items``) and their gram matrix."""
    keep = kept_items(X, max_items)
    return keep, gram(X[:, keep])


def tune_ease(
    train: sp.csr_matrix,
    val: sp.csr_matrix,
    grid: Sequence[float],
    batch_size: int = 1024,
    max_items: int = MAX_ITEMS,
    max_users: int | None = None,
    seed: int = 0,
    kept_gram: tuple[np.ndarray, np.ndarray] | None = None,
    model: str = "ease",
) -> tuple[EASE, dict[float, float]]:
    """EASE fit on ``train`` for each lambda of ``grid``; returns the one with the best validation
    ``ndcg_at_10`` (``val`` as truth, each user's train items excluded; over a seeded sample of at
    most ``max_users`` validation users, ``ranking.sample_users``) and every lambda's value.
    ``kept_gram``: (kept items, their gram) to fit on instead of ``capped_gram(train, max_items)``;
    ``model``: the model's name in errors."""
    if not len(grid):
        raise RecpipeError("EASE lam: auto needs a non-empty grid of lambdas")
    if val.nnz == 0:
        raise RecpipeError("EASE lam: auto tunes on the validation split, which is empty; set a number")
    train = as_binary_csr(train)
    kept_gram = kept_gram or capped_gram(train, max_items)
    val = sample_users(val, max_users, seed)
    scores: dict[float, float] = {}
    best: EASE | None = None
    for lam in tqdm(grid, desc="EASE lambda", unit="fit", leave=False):
        ease = EASE(lam, max_items, model).fit(train, kept_gram)
        scores[ease.lam] = float(rank_metrics(ease.score, train, val, (10,), batch_size)[TUNE_METRIC])
        if best is None or scores[ease.lam] > scores[best.lam]:
            best = ease
    assert best is not None
    return best, scores


@register("ease")
class EASEModel(ClosedFormModel):
    """EASE: X_u @ B with a dense item-item B over the ``max_items`` most popular items.

    ``lam`` is a number, or ``auto``: the value of ``grid`` with the best validation ndcg_at_10
    (over at most ``tune_max_users`` validation users).
    """

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.lam = cfg.lam
        self.grid = [float(v) for v in cfg.get("grid") or ()]
        self.max_items = int(cfg.get("max_items") or MAX_ITEMS)
        self.tune_max_users = cfg.get("tune_max_users")
        if self.lam != "auto":
            EASE(self.lam)  # validates lam before any fitting
        kept = min(n_items, self.max_items)
        self.train_items = SparseRows(n_users, kept, "train_items")
        self.item_weights = tf.Variable(tf.zeros([kept, kept]), trainable=False, name="item_weights")
        # each item's column in item_weights; the dropped items point to the extra column ``kept``
        self.item_column = tf.Variable(tf.zeros([n_items], tf.int32), trainable=False, name="item_column")
        # -1 for kept items; the dropped items' popularity rank in [0, 1) (``dropped_ranks``)
        self.dropped_rank = tf.Variable(-tf.ones([n_items]), trainable=False, name="dropped_rank")

    def kept_gram(self, data: Processed) -> tuple[np.ndarray, np.ndarray]:
        """The kept items and the item-item matrix EASE inverts (here the gram of the train matrix)."""
        return capped_gram(as_binary_csr(data.matrix("train")), self.max_items)

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        train = data.matrix("train")
        kept_gram = self.kept_gram(data)
        if self.lam == "auto":
            ease, tuning = tune_ease(
                train,
                data.matrix("val"),
                self.grid,
                max_items=self.max_items,
                max_users=self.tune_max_users,
                kept_gram=kept_gram,
                model=self.name,
            )
            params: dict[str, Any] = {"lam": ease.lam, f"val_{TUNE_METRIC}": [[k, v] for k, v in tuning.items()]}
        else:
            ease = EASE(self.lam, self.max_items, self.name).fit(train, kept_gram)
            params = {"lam": ease.lam}
        column = np.full(self.n_items, len(ease.keep), dtype=np.int32)
        column[ease.keep] = np.arange(len(ease.keep), dtype=np.int32)
        self.train_items.assign(ease._train()[:, ease.keep])
        self.item_weights.assign(ease.B)
        self.item_column.assign(column)
        self.dropped_rank.assign(ease.dropped_ranks)
        kept = {"max_items": self.max_items, "items_kept": len(ease.keep)}
        return params | kept | {"dropped_interaction_share": round(ease.dropped_share, 6)}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        kept = tf.matmul(self.train_items.rows(user_idx), self.item_weights)
        kept_min = tf.reduce_min(kept, axis=1, keepdims=True)
        padded = tf.gather(tf.concat([kept, kept_min], axis=1), self.item_column, axis=1)
        return tf.where(self.dropped_rank[None, :] >= 0, below_kept(kept_min, self.dropped_rank), padded)
