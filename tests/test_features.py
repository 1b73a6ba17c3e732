"""Feature building: vocabularies and boundaries fit on the catalog, encodings of catalog and new rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recpipe.errors import RecpipeError
from recpipe.features import (
    AGE_BOUNDARIES,
    TITLE_LENGTH,
    FeatureSpec,
    bucketize,
    encode_items,
    encode_users,
    fit_feature_spec,
    lookup,
    quantile_boundaries,
    title_vocabulary,
    zip_prefixes,
)

ITEMS = pd.DataFrame(
    {
        "item_id": ["1", "2", "3", "4"],
        "index": [0, 1, 2, 3],
        "title": ["Star Wars", "The Empire Strikes Back", "Return of the Jedi", "Star Trek: The Wrath of Khan"],
        "year": pd.array([1977, 1980, None, 1982], dtype="Int32"),
        "genres": [
            np.array(["Action", "Sci-Fi"], dtype=object),
            np.array(["Sci-Fi"], dtype=object),
            None,
            np.array(["Drama"], dtype=object),
        ],
    }
)
USERS = pd.DataFrame(
    {
        "user_id": ["a", "b", "c"],
        "index": [0, 1, 2],
        "age": [17, 30, None],
        "gender": ["F", "M", None],
        "zip": ["94043", "k1a0b1", None],
    }
)


def test_spec_vocabularies_from_the_catalog() -> None:
    spec = fit_feature_spec(ITEMS, USERS)
    assert spec.item == ("genres", "year", "title")
    assert spec.user == ("age", "gender", "zip")  # no occupation column: left out
    assert spec.genres == ("Action", "Drama", "Sci-Fi")
    # tokens in >= 2 titles, most frequent first: "the" (3 titles), then "of" and "star" (2 each, by text)
    assert spec.title_vocabulary == ("the", "of", "star")
    assert spec.categories == {"gender": ("F", "M"), "zip": ("9", "K")}
    assert spec.age_boundaries == AGE_BOUNDARIES
    assert spec.item_sizes() == {"genres": 3, "year": len(spec.year_boundaries) + 2, "title": 5}
    assert spec.user_sizes() == {"age": len(AGE_BOUNDARIES) + 2, "gender": 3, "zip": 3}


def test_config_selects_features_and_rejects_unknown_names() -> None:
    cfg = OmegaConf.create({"item": ["genres"], "user": []})
    spec = fit_feature_spec(ITEMS, USERS, cfg)
    assert spec.item == ("genres",) and spec.user == ()
    assert fit_feature_spec(ITEMS, None, {"item": ["year"], "user": ["age"]}).user == ()
    with pytest.raises(RecpipeError, match=r"data.features.item: unknown feature\(s\) \['budget'\]"):
        fit_feature_spec(ITEMS, USERS, {"item": ["budget"]})


def test_features_without_data_are_left_out() -> None:
    bare = pd.DataFrame(
        {
            "item_id": ["1", "2"],
            "index": [0, 1],
            "title": ["Item 1", "Item 2"],
            "year": [None, None],
            "genres": [[], []],
        }
    )
    assert fit_feature_spec(bare, None).item == ("title",)
    assert fit_feature_spec(bare.assign(title=["1", "2"]), None).item == ()  # no shared title token


def test_spec_survives_json_and_omegaconf() -> None:
    spec = fit_feature_spec(ITEMS, USERS)
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert FeatureSpec.from_dict(OmegaConf.create(spec.to_dict())) == spec


def test_encode_items() -> None:
    spec = fit_feature_spec(ITEMS, USERS)
    enc = encode_items(ITEMS, spec)
    np.testing.assert_array_equal(enc["genres"], [[1, 0, 1], [0, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert enc["genres"].dtype == np.float32
    assert enc["year"].dtype == np.int32 and enc["year"][2] == 0 and (enc["year"][[0, 1, 3]] > 0).all()
    assert np.all(np.diff(enc["year"][[0, 1, 3]]) >= 0)  # later years, later buckets
    # ids: 0 pad, 1 unknown, 2 "the", 3 "of", 4 "star"; lower-cased, punctuation stripped
    assert enc["title"].shape == (4, TITLE_LENGTH) and enc["title"].dtype == np.int32
    np.testing.assert_array_equal(enc["title"][0, :3], [4, 1, 0])
    np.testing.assert_array_equal(enc["title"][3, :7], [4, 1, 2, 1, 3, 1, 0])


def test_a_new_item_is_encoded_like_the_catalog() -> None:
    spec = fit_feature_spec(ITEMS, USERS)
    new = pd.DataFrame({"title": ["STAR WARS!"], "year": [1977], "genres": [["Sci-Fi", "Western"]]})
    enc, catalog = encode_items(new, spec), encode_items(ITEMS, spec)
    np.testing.assert_array_equal(enc["title"][0], catalog["title"][0])
    assert enc["year"][0] == catalog["year"][0]
    np.testing.assert_array_equal(enc["genres"][0], [0, 0, 1])  # unknown genre ignored


def test_encode_users() -> None:
    spec = fit_feature_spec(ITEMS, USERS)
    enc = encode_users(USERS, spec)
    np.testing.assert_array_equal(enc["age"], [1, 3, 0])  # < 18, [25, 35), missing
    np.testing.assert_array_equal(enc["gender"], [1, 2, 0])
    np.testing.assert_array_equal(enc["zip"], [1, 2, 0])
    unknown = encode_users(pd.DataFrame({"age": [99], "gender": ["X"], "zip": ["0"]}), spec)
    assert (unknown["age"][0], unknown["gender"][0], unknown["zip"][0]) == (len(AGE_BOUNDARIES) + 1, 0, 0)


def test_small_pieces() -> None:
    np.testing.assert_array_equal(bucketize([None, 1.0, 5.0, 10.0, 11.0], [5.0, 10.0]), [0, 1, 2, 3, 3])
    assert quantile_boundaries(pd.Series([1, 1, 1, 2, None]), 4) == (2.0,)
    assert quantile_boundaries(pd.Series(range(100)), 4) == (25.0, 50.0, 75.0)
    assert quantile_boundaries(pd.Series([None, None]), 4) == ()
    np.testing.assert_array_equal(lookup(["b", None, "c", np.nan], ["a", "b"]), [2, 0, 0, 0])
    assert zip_prefixes(["12345", " m4b ", None, ""], 2).tolist() == ["12", "M4", None, None]
    assert title_vocabulary(["a b", "b c", "c b"], max_tokens=1) == ("b",)
