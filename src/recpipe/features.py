"""Item and user features for the content and hybrid models (config ``data.features``).

Items: genres (multi-hot over the genre vocabulary), release year (bucketized at quantiles of the
catalog's years) and title tokens (ids from a tf.keras ``TextVectorization``). Users: age bucket,
gender, occupation and zip-code prefix (categorical ids). ``fit_feature_spec`` fits vocabularies and
boundaries on the catalog once; the spec is saved with the model (``FeatureSpec.to_dict``), so a
new item or user is encoded exactly like the catalog (``encode_items``, ``encode_users``).

Id 0 always means missing or unknown. A configured feature the data lacks (no such column, no
value in it, or no title token shared by ``TITLE_MIN_COUNT`` titles) is left out of the spec.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from recpipe.config import plain_dict
from recpipe.errors import RecpipeError

ITEM_FEATURES = ("genres", "year", "title")
USER_FEATURES = ("age", "gender", "occupation", "zip")
YEAR_BUCKETS = 10
AGE_BOUNDARIES = (18.0, 25.0, 35.0, 45.0, 50.0, 56.0)  # MovieLens 1M's age groups
TITLE_MAX_TOKENS = 5000
TITLE_MIN_COUNT = 2  # a token must occur in this many titles to get an id (else it is [UNK])
TITLE_LENGTH = 8  # title tokens kept per item (padded with 0)
ZIP_PREFIX = 1  # leading characters of the zip code kept (the US first digit is a region)


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a model uses, with the vocabularies and boundaries that encode them.

    ``categories`` maps each categorical user feature to its vocabulary (ids 1..n; 0 = unknown).
    """

    item: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    genres: tuple[str, ...] = ()
    year_boundaries: tuple[float, ...] = ()
    title_vocabulary: tuple[str, ...] = ()
    age_boundaries: tuple[float, ...] = ()
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, lists for tuples (``from_dict`` reads it back)."""
        d = {k: list(v) for k, v in asdict(self).items() if k != "categories"}
        return {**d, "categories": {k: list(v) for k, v in self.categories.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        d = plain_dict(d, "features")
        tuples = {k: tuple(v) for k, v in d.items() if k != "categories"}
        return cls(**tuples, categories={k: tuple(v) for k, v in d.get("categories", {}).items()})

    def item_sizes(self) -> dict[str, int]:
        """Number of ids (or multi-hot width, for genres) of each item feature."""
        sizes = {
            "genres": len(self.genres),
            "year": len(self.year_boundaries) + 2,
            "title": len(self.title_vocabulary) + 2,
        }
        return {name: sizes[name] for name in self.item}

    def user_sizes(self) -> dict[str, int]:
        """Number of ids of each user feature (id 0 included)."""
        return {
            name: len(self.age_boundaries) + 2 if name == "age" else len(self.categories[name]) + 1
            for name in self.user
        }


def genre_lists(values: Iterable[Any]) -> list[list[str]]:
    """Each entry as a list of genre strings (None / NaN -> [])."""
    return [[] if g is None or (isinstance(g, float) and np.isnan(g)) else [str(x) for x in g] for g in values]


def quantile_boundaries(values: pd.Series, n_buckets: int) -> tuple[float, ...]:
    """Boundaries splitting the non-null ``values`` into at most ``n_buckets`` buckets of about equal
    counts: the distinct inner quantiles (observed values) above the minimum."""
    present = pd.to_numeric(values, errors="coerce").dropna().to_numpy(np.float64)
    if present.size == 0:
        return ()
    qs = np.unique(np.quantile(present, np.linspace(0, 1, n_buckets + 1)[1:-1], method="higher"))
    return tuple(float(q) for q in qs if q > present.min())


def bucketize(values: pd.Series | Sequence[float | None], boundaries: Sequence[float]) -> np.ndarray:
    """int32 bucket ids: 0 for a missing value, else 1 + the number of boundaries <= the value."""
    x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64)
    ids = np.searchsorted(np.asarray(boundaries, np.float64), x, side="right") + 1
    return np.where(np.isnan(x), 0, ids).astype(np.int32)


def categorical_vocabulary(values: pd.Series) -> tuple[str, ...]:
    """The distinct non-empty strings of ``values``, sorted."""
    present = values.dropna().astype(str)
    return tuple(sorted(set(present[present != ""])))


def lookup(values: pd.Series | Sequence[Any], vocabulary: Sequence[str]) -> np.ndarray:
    """int32 ids: 1 + position in ``vocabulary``, 0 for a missing or unknown value."""
    index = {term: j + 1 for j, term in enumerate(vocabulary)}
    return np.array([0 if v is None or pd.isna(v) else index.get(str(v), 0) for v in values], dtype=np.int32)


def zip_prefixes(values: pd.Series | Sequence[Any], length: int = ZIP_PREFIX) -> pd.Series:
    """The first ``length`` characters of each zip code, upper-cased (missing stays missing)."""
    s = pd.Series(values, dtype=object)
    return s.where(s.isna(), s.astype(str).str.strip().str.upper().str[:length]).replace("", None)


def title_vectorizer(vocabulary: Sequence[str], length: int = TITLE_LENGTH) -> tf.keras.layers.TextVectorization:
    """A TextVectorization (lower-case, punctuation stripped, whitespace split) to ``length`` ids.

    Ids: 0 padding, 1 unknown token, 2.. the ``vocabulary`` in order.
    """
    return tf.keras.layers.TextVectorization(
        vocabulary=list(vocabulary),
        output_mode="int",
        output_sequence_length=length,
    )


def title_vocabulary(
    titles: Sequence[str], max_tokens: int = TITLE_MAX_TOKENS, min_count: int = TITLE_MIN_COUNT
) -> tuple[str, ...]:
    """Tokens (as ``title_vectorizer`` splits them) found in at least ``min_count`` titles, most
    frequent first (ties by text), at most ``max_tokens``."""
    texts = tf.data.Dataset.from_tensor_slices(tf.constant(list(titles) or [""], tf.string)).batch(512)
    layer = tf.keras.layers.TextVectorization(output_mode="multi_hot")
    layer.adapt(texts)
    vocabulary = layer.get_vocabulary()  # [UNK] first
    in_titles = sum(layer(batch).numpy().sum(axis=0) for batch in texts)
    kept = [(int(c), str(t)) for t, c in zip(vocabulary[1:], in_titles[1:]) if c >= min_count]
    return tuple(t for _, t in sorted(kept, key=lambda ct: (-ct[0], ct[1]))[:max_tokens])


def requested(features_cfg: Any, side: str, known: Sequence[str]) -> tuple[str, ...]:
    """The ``side`` (item / user) features named in ``features_cfg`` (all ``known`` ones when it is null)."""
    if features_cfg is None:
        return tuple(known)
    names = tuple(str(n) for n in (features_cfg.get(side) or ()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RecpipeError(f"data.features.{side}: unknown feature(s) {unknown}; available: {', '.join(known)}")
    return names


def fit_feature_spec(items: pd.DataFrame, users: pd.DataFrame | None, features_cfg: Any = None) -> FeatureSpec:
    """Fit the vocabularies and boundaries of the features ``features_cfg`` names (``{item: [...], user: [...]}``)
    on the catalog ``items`` and the ``users`` table; features without data are left out."""
    item: list[str] = []
    spec: dict[str, tuple[Any, ...]] = {}  # FeatureSpec's vocabulary and boundary fields
    for name in requested(features_cfg, "item", ITEM_FEATURES):
        if name not in items.columns or items[name].isna().all():
            continue
        if name == "genres":
            genres = sorted({g for gs in genre_lists(items["genres"]) for g in gs})
            if not genres:
                continue
            spec["genres"] = tuple(genres)
        elif name == "year":
            spec["year_boundaries"] = quantile_boundaries(items["year"], YEAR_BUCKETS)
        else:
            vocab = title_vocabulary(items["title"].fillna("").astype(str).tolist())
            if not vocab:  # no token is shared by enough titles
                continue
            spec["title_vocabulary"] = vocab
        item.append(name)
    user: list[str] = []
    categories: dict[str, tuple[str, ...]] = {}
    for name in requested(features_cfg, "user", USER_FEATURES):
        if users is None or name not in users.columns or users[name].isna().all():
            continue
        if name == "age":
            spec["age_boundaries"] = AGE_BOUNDARIES
        else:
            values = zip_prefixes(users[name]) if name == "zip" else users[name]
            categories[name] = categorical_vocabulary(values)
        user.append(name)
    return FeatureSpec(item=tuple(item), user=tuple(user), categories=categories, **spec)


class ItemEncoder(tf.Module):
    """The spec's item features in TensorFlow, so a SavedModel can encode new items too.

    Called with ``title`` (string [n]), ``genres`` (string, ragged [n, None]) and ``year`` (float32
    [n], NaN when unknown); returns ``genres`` float32 [n, n_genres] (multi-hot), ``year`` int32 [n]
    (bucket id) and ``title`` int32 [n, TITLE_LENGTH] (token ids), those the spec uses.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__(name="item_encoder")
        self.features = spec.item
        if "genres" in spec.item:
            self.genres = tf.keras.layers.StringLookup(vocabulary=list(spec.genres), output_mode="multi_hot")
        self.year_boundaries = tf.constant(spec.year_boundaries, tf.float32, shape=[len(spec.year_boundaries)])
        if "title" in spec.item:
            self.title = title_vectorizer(spec.title_vocabulary)

    def __call__(self, title: tf.Tensor, genres: tf.RaggedTensor, year: tf.Tensor) -> dict[str, tf.Tensor]:
        out: dict[str, tf.Tensor] = {}
        if "genres" in self.features:
            out["genres"] = self.genres(genres)[:, 1:]  # column 0 counts unknown genres
        if "year" in self.features:
            year = tf.cast(year, tf.float32)
            bucket = tf.searchsorted(self.year_boundaries, year, side="right", out_type=tf.int32) + 1
            out["year"] = tf.where(tf.math.is_nan(year), 0, bucket)
        if "title" in self.features:
            out["title"] = tf.cast(self.title(title), tf.int32)
        return out


def encode_items(items: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """The spec's item features of each row of ``items`` (columns title, year, genres), as numpy
    arrays (see ``ItemEncoder``)."""
    n = len(items)
    title = items["title"].fillna("").astype(str).tolist() if "title" in items.columns else [""] * n
    genres = genre_lists(items["genres"]) if "genres" in items.columns else [[] for _ in range(n)]
    year = (
        pd.to_numeric(pd.Series(items["year"], dtype=object), errors="coerce")
        if "year" in items.columns
        else pd.Series(np.nan, index=items.index)
    )
    encoded = ItemEncoder(spec)(
        tf.constant(title, tf.string, shape=[n]),
        tf.RaggedTensor.from_row_lengths(
            tf.constant([g for gs in genres for g in gs], tf.string, shape=[sum(map(len, genres))]),
            tf.constant([len(gs) for gs in genres], tf.int64, shape=[n]),
        ),
        tf.constant(year.to_numpy(np.float32), shape=[n]),
    )
    return {name: value.numpy() for name, value in encoded.items()}


def encode_users(users: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """The spec's user features of each row as int32 [n] ids (0 = missing or unknown)."""
    out: dict[str, np.ndarray] = {}
    for name in spec.user:
        if name == "age":
            out[name] = bucketize(users[name], spec.age_boundaries)
        else:
            values = zip_prefixes(users[name]) if name == "zip" else users[name]
            out[name] = lookup(values, spec.categories[name])
    return out
