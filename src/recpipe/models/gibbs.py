"""Bayesian matrix factorization by Gibbs sampling (BPMF), in TensorFlow.

Salakhutdinov & Mnih, "Bayesian Probabilistic Matrix Factorization using Markov Chain Monte Carlo"
(ICML 2008), with biases as one more latent dimension: rating r(u, i) = mu + b_u + b_i + p_u . q_i
+ N(0, 1 / alpha). Each user's vector u = [p_u, b_u] has a Gaussian prior N(mu_U, Lambda_U^-1)
whose mean and precision have a Normal-Wishart hyperprior (items alike), the noise precision alpha
a Gamma prior. Given the items, the users are independent Gaussians in closed form,

    Lambda_u = Lambda_U + alpha sum_i f_i f_i^T,   Lambda_u m_u = Lambda_U mu_U + alpha sum_i f_i (r_ui - mu - b_i)

with f_i = [q_i, 1] over the items i the user rated, so one sweep samples the hyperparameters, all
users (one batched Cholesky per block of users), then all items; alpha is drawn before each of the
two half-sweeps from the squared error the previous one left (each half-sweep computes it from the
features it gathered anyway, so it costs no pass of its own). The prediction is the average of
the sampled models after ``burn_in`` sweeps (Rendle, Zhang & Koren, "On the Difficulty of
Evaluating Baselines", 2019, show well-run Bayesian MF ahead of most newer rating models).

A sweep costs O(ratings x d^2) in batched matmuls: the ratings are grouped by row once
(``RowBlocks``: rows sorted by their number of ratings, padded blocks of similar length), and each
block's Gram matrices are one ``[b, L, d] x [b, L, d]`` matmul, without per-rating tensors of d^2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from recpipe.models.blocks import RowBlocks
from recpipe.models.classic.gram import ColumnDots

DENSE_PRIOR_ROWS = 8192  # rows of a linked prior's features multiplied densely (``ColumnDots``)


def padded(other: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The column table of a block's entries: features [q, 1] [m + 1, d+1] and biases [m + 1] of
    the ``other`` side's vectors [m, d+1] (last column: bias), row m all zeros (padding)."""
    features = tf.concat([other[:, :-1], tf.ones_like(other[:, :1])], axis=1)
    return tf.pad(features, [[0, 1], [0, 0]]), tf.pad(other[:, -1], [[0, 1]])


def sample_side(
    blocks: RowBlocks,
    other: tf.Tensor,
    alpha: tf.Tensor,
    prior_mean: tf.Tensor,
    prior_precision: tf.Tensor,
    noise: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One side's vectors [n_rows, d+1] drawn from their Gaussian conditionals given the ``other``
    side's vectors [m, d+1] (last column: bias), the noise precision ``alpha``, the prior (mean
    [1, d+1] or one per row [n_rows, d+1], precision [d+1, d+1]) and standard normal ``noise``
    [n_rows, d+1] (rows in the order of ``blocks.order``); and the sum of squared residuals of the
    entries under the drawn vectors (what the next draw of ``alpha`` needs)."""
    table, table_bias = padded(other)
    prior_rhs = tf.matmul(prior_mean, prior_precision)  # one row, or one per row (precision symmetric)
    samples, sse, at = [], tf.constant(0.0), 0
    for rows, cols, values in zip(blocks.rows, blocks.cols, blocks.values):
        features = tf.gather(table, cols)
        target = values - tf.gather(table_bias, cols)
        gram = tf.matmul(features, features, transpose_a=True)  # F^T F
        projected = tf.einsum("bld,bl->bd", features, target)  # F^T t
        row_rhs = prior_rhs if prior_rhs.shape[0] == 1 else tf.gather(prior_rhs, rows)
        chol = tf.linalg.cholesky(prior_precision + alpha * gram)  # L L^T = Lambda_r
        half = tf.linalg.triangular_solve(chol, (row_rhs + alpha * projected)[..., None])  # L^-1 Lambda_r m_r
        n = int(cols.shape[0])
        # x = L^-T (L^-1 Lambda_r m_r + z) = m_r + L^-T z: covariance L^-T L^-1 = Lambda_r^-1
        sample = tf.linalg.triangular_solve(chol, half + noise[at : at + n, :, None], adjoint=True)[..., 0]
        # |t - F x|^2 = t.t - 2 x.F^T t + x^T F^T F x, without another pass over the entries
        fitted = tf.einsum("bij,bj->bi", gram, sample)  # F^T F x
        sse += tf.reduce_sum(tf.square(target)) + tf.reduce_sum(sample * (fitted - 2 * projected))
        samples.append(sample)
        at += n
    return tf.gather(tf.concat(samples, axis=0), blocks.order), sse


def squared_error(blocks: RowBlocks, vectors: tf.Tensor, other: tf.Tensor) -> tf.Tensor:
    """Sum of squared residuals of the entries of ``blocks`` (rows: ``vectors``, columns: ``other``)."""
    table, table_bias = padded(other)
    total = tf.constant(0.0)
    for rows, cols, values in zip(blocks.rows, blocks.cols, blocks.values):
        features = tf.gather(table, cols)
        pred = tf.einsum("bld,bd->bl", features, tf.gather(vectors, rows)) + tf.gather(table_bias, cols)
        total += tf.reduce_sum(tf.square(values - pred))
    return total


def sample_wishart(scale: np.ndarray, dof: float, rng: np.random.Generator) -> np.ndarray:
    """A draw from Wishart(scale, dof) by the Bartlett decomposition."""
    k = scale.shape[0]
    chol = np.linalg.cholesky(scale)
    bartlett = np.tril(rng.standard_normal((k, k)), -1)
    bartlett[np.diag_indices(k)] = np.sqrt(rng.chisquare(dof - np.arange(k)))
    factor = chol @ bartlett
    return factor @ factor.T


def sample_hyper(
    vectors: np.ndarray, beta0: float, rng: np.random.Generator, link: np.ndarray | None = None, link_lam: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, precision) of one side's prior drawn from their Normal-Wishart posterior given the
    side's vectors [n, k] (hyperprior: mean 0, beta0, Wishart(I, k)), less their feature offsets;
    ``link`` [m, k], drawn from N(0, (link_lam precision)^-1) per row, counts as m more draws."""
    n, k = vectors.shape
    mean = vectors.mean(axis=0)
    centered = vectors - mean
    scatter = centered.T @ centered
    beta_n, dof = beta0 + n, k + n
    if link is not None:
        scatter, dof = scatter + link_lam * link.T @ link, dof + link.shape[0]
    inv_scale = np.eye(k) + scatter + (beta0 * n / beta_n) * np.outer(mean, mean)
    inv_scale = (inv_scale + inv_scale.T) / 2
    precision = sample_wishart(np.linalg.inv(inv_scale), dof, rng)
    cov_chol = np.linalg.cholesky(np.linalg.inv(beta_n * precision))
    prior_mean = n * mean / beta_n + cov_chol @ rng.standard_normal(k)
    return prior_mean, precision


@dataclass
class LinkedPrior:
    """A side's prior mean linked to features of its rows (Macau: Simm et al., "Macau: Scalable
    Bayesian Multi-relational Factorization with Side Information", 2015): vector_r ~ N(mu +
    link^T x_r, precision^-1), link rows ~ N(0, (lam precision)^-1), lam ~ Gamma(1, 1). With x_r the
    row's rated columns / sqrt(count), the user side is SVD++'s implicit feedback (Koren 2008:
    p_u + |N(u)|^-1/2 sum_j y_j, y = link) in Bayesian form. ``x^T x = eigvecs diag(eigvals) eigvecs^T``
    (computed once) makes each draw of ``link`` two products."""

    features: sp.csr_matrix  # [n, m]
    eigvals: np.ndarray
    eigvecs: np.ndarray
    link: np.ndarray  # [m, k], the current draw
    lam: float = 1.0

    def offsets(self) -> np.ndarray:
        return np.asarray(self.features @ self.link)

    def sample(self, residual: np.ndarray, precision: np.ndarray, rng: np.random.Generator) -> None:
        """Draw ``link`` given the rows' ``residual`` vectors (vector - mu) [n, k], then ``lam``."""
        scale = 1.0 / (self.eigvals + self.lam)
        projected = self.eigvecs.T @ np.asarray(self.features.T @ residual)
        noise = np.linalg.solve(np.linalg.cholesky(precision).T, rng.standard_normal(self.link.shape).T).T
        self.link = self.eigvecs @ (scale[:, None] * projected + np.sqrt(scale)[:, None] * noise)
        spread = float(np.sum((self.link @ precision) * self.link))
        self.lam = float(rng.gamma(1.0 + self.link.size / 2, 1.0 / (1.0 + spread / 2)))


def rated_prior(matrix: sp.csr_matrix, max_features: int, k: int) -> LinkedPrior:
    """A ``LinkedPrior`` on which of the ``max_features`` most frequent columns each row of
    ``matrix`` (CSR) has entries in (x_r: indicators / sqrt(the row's count of entries))."""
    n_rows, n_cols = matrix.shape
    cols, counts = matrix.indices, np.diff(matrix.indptr)
    kept = np.sort(np.argsort(-np.bincount(cols, minlength=n_cols), kind="stable")[:max_features])
    position = np.full(n_cols, -1)
    position[kept] = np.arange(kept.size)
    use = position[cols] >= 0
    row_of = np.repeat(np.arange(n_rows), counts)[use]
    norm = 1.0 / np.sqrt(np.maximum(counts, 1))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=n_rows))])
    features = sp.csr_matrix((norm[row_of], position[cols[use]], indptr), shape=(n_rows, kept.size))
    # x^T x as ColumnDots does kNN's co-occurrences: the rows with most entries as one dense
    # TensorFlow product, the rest sparse (2x faster than scipy alone at 20M entries); float32 sums,
    # deterministic, within float32 rounding of the float64 product
    gram = ColumnDots(features, dense_rows=DENSE_PRIOR_ROWS).block(np.arange(kept.size)).numpy()
    eigvals, eigvecs = np.linalg.eigh(gram.astype(np.float64))
    return LinkedPrior(features, np.maximum(eigvals, 0.0), eigvecs, np.zeros((kept.size, k)))


def _f32(*arrays: np.ndarray) -> tuple[tf.Tensor, ...]:
    return tuple(tf.constant(a, tf.float32) for a in arrays)


def _sample_conditional(
    blocks: RowBlocks,
    other: tf.Tensor,
    alpha: tf.Tensor,
    current: tf.Tensor,
    beta0: float,
    rng: np.random.Generator,
    prior: LinkedPrior | None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One side's new vectors: its prior drawn given ``current``, then its vectors given ``other``,
    then (with a linked ``prior``) the link given them; and the squared error under them."""
    vectors = current.numpy().astype(np.float64)
    offsets = prior.offsets() if prior is not None else np.zeros((1, vectors.shape[1]))
    link = (prior.link, prior.lam) if prior is not None else (None, 0.0)
    mean, precision = sample_hyper(vectors - offsets, beta0, rng, *link)
    noise = rng.standard_normal(vectors.shape)
    sampled, sse = sample_side(blocks, other, alpha, *_f32(mean + offsets, precision, noise))
    if prior is not None:
        prior.sample(sampled.numpy().astype(np.float64) - mean, precision, rng)
    return sampled, sse


@dataclass(frozen=True)
class Posterior:
    """The posterior-mean model of a Gibbs run: prediction mu + b_u + b_i + users . items, with
    ``users`` [n_users, r] and ``items`` [n_items, r] a rank-r factorization of the average of the
    sampled p_u . q_i (updated sample by sample with ``compress``: exact while r covers every
    sample's factors, else each update keeps the best rank-r approximation)."""

    users: np.ndarray
    items: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    samples: int


def compress(users: list[np.ndarray], items: list[np.ndarray], rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Factors (U [n, r], V [m, r]) with U V^T the best rank-``rank`` approximation of the sum of
    ``users[s] @ items[s].T``: thin QR of the stacked factors and an SVD of the small core."""
    q_left, r_left = np.linalg.qr(np.concatenate(users, axis=1).astype(np.float64))
    q_right, r_right = np.linalg.qr(np.concatenate(items, axis=1).astype(np.float64))
    u, s, vt = np.linalg.svd(r_left @ r_right.T)
    rank = min(rank, s.size)
    root = np.sqrt(s[:rank])
    return (q_left @ u[:, :rank]) * root, (q_right @ vt[:rank].T) * root


def gibbs_bpmf(
    user_blocks: RowBlocks,
    item_blocks: RowBlocks,
    dim: int,
    sweeps: int,
    burn_in: int,
    rank: int,
    seed: int,
    beta0: float = 2.0,
    priors: tuple[LinkedPrior | None, LinkedPrior | None] = (None, None),
    on_sweep: Callable[[int, Callable[[], Posterior]], None] | None = None,
) -> Posterior:
    """Run ``sweeps`` Gibbs sweeps of BPMF with biases on centred ratings (``user_blocks``: the
    ratings by user, ``item_blocks``: the same by item) and average the samples after ``burn_in``
    (kept as rank-``rank`` factors). ``priors``: linked priors of the users and the items, if any.

    ``on_sweep(sweep, posterior)`` is called after each sweep; ``posterior()`` builds the average
    so far (after the burn-in), e.g. to validate it."""
    rng = np.random.default_rng(seed)
    n_users, n_items = int(user_blocks.order.shape[0]), int(item_blocks.order.shape[0])
    k = dim + 1
    users = tf.constant(rng.normal(0.0, 0.1, (n_users, k)), tf.float32)
    items = tf.constant(rng.normal(0.0, 0.1, (n_items, k)), tf.float32)
    n_ratings = float(sum(float(tf.reduce_sum(c)) for c in user_blocks.counts))
    total: tuple[np.ndarray, np.ndarray] | None = None  # rank-``rank`` factors of the sum of the kept p q^T
    bias_sum = [np.zeros(n_users), np.zeros(n_items)]
    kept = 0

    def posterior() -> Posterior:
        if total is None:
            u, v = users.numpy().astype(np.float64), items.numpy().astype(np.float64)
            return Posterior(u[:, :-1], v[:, :-1], u[:, -1], v[:, -1], 0)
        return Posterior(total[0], total[1] / kept, bias_sum[0] / kept, bias_sum[1] / kept, kept)

    def noise_precision(sse: tf.Tensor) -> tf.Tensor:  # alpha given the squared error (Gamma(1, 1) prior)
        # the expanded float32 sum can round below 0 when the fit is (nearly) exact
        return tf.constant(rng.gamma(1.0 + n_ratings / 2, 1.0 / (1.0 + max(float(sse), 0.0) / 2)), tf.float32)

    # alpha is drawn before each half-sweep, from the squared error the previous one computed
    sse = squared_error(user_blocks, users, items)
    for sweep in range(1, sweeps + 1):
        users, sse = _sample_conditional(user_blocks, items, noise_precision(sse), users, beta0, rng, priors[0])
        items, sse = _sample_conditional(item_blocks, users, noise_precision(sse), items, beta0, rng, priors[1])
        if sweep > burn_in:
            u, v = users.numpy(), items.numpy()
            sample = (u[:, :-1], v[:, :-1])
            total = sample if total is None else compress([total[0], sample[0]], [total[1], sample[1]], rank)
            bias_sum[0] += u[:, -1]
            bias_sum[1] += v[:, -1]
            kept += 1
        if on_sweep is not None:
            on_sweep(sweep, posterior)
    return posterior()
