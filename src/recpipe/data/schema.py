"""The column contracts of the data tables (docs/contracts.md), defined once: names, Arrow types and
what each column means.

data/raw (``recpipe.data.raw`` writes and reads it): interactions.parquet (``INTERACTIONS``),
items.parquet (``ITEMS``), users.parquet (``USERS`` plus whatever the source has). data/processed
(``recpipe.data.processed``): train/val/test.parquet (``INTERACTIONS``), users.parquet and
items.parquet (the raw tables' columns plus ``INDEX``); reading them back adds ``USER_IDX`` /
``ITEM_IDX`` to every split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    """A contract column: ``name``, Arrow ``type``, ``meaning``; ``required``: a table read from
    data/raw must have it (optional ones are always written by ingest, but a hand-made data/raw may
    lack them)."""

    name: str
    type: pa.DataType
    meaning: str
    required: bool = True


INTERACTIONS: tuple[Column, ...] = (
    Column("user_id", pa.string(), "the user's id (a string, however the source spells it)"),
    Column("item_id", pa.string(), "the item's id"),
    Column("rating", pa.float32(), "explicit rating within data.rating_scale; null for implicit feedback"),
    Column("timestamp", pa.int64(), "seconds since 1970-01-01 UTC; null when the source has none"),
)
ITEMS: tuple[Column, ...] = (
    Column("item_id", pa.string(), "the item's id (unique)"),
    Column("title", pa.string(), "display title, without a trailing year"),
    Column("year", pa.int32(), "release year; null when unknown", required=False),
    Column("genres", pa.list_(pa.string()), "genre names; empty when none", required=False),
)
USERS: tuple[Column, ...] = (Column("user_id", pa.string(), "the user's id (unique); the source's features follow"),)
INDEX = Column("index", pa.int32(), "vocabulary index 0..n-1 of data/processed's users and items tables")
USER_IDX = Column("user_idx", pa.int32(), "the user's vocabulary index (added by load_processed)")
ITEM_IDX = Column("item_idx", pa.int32(), "the item's vocabulary index (added by load_processed)")


def names(columns: Sequence[Column]) -> tuple[str, ...]:
    return tuple(c.name for c in columns)


def required(columns: Sequence[Column]) -> tuple[str, ...]:
    """The names of the columns a table read from data/raw must have, id first."""
    return tuple(c.name for c in columns if c.required)


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([(c.name, c.type) for c in columns])


INTERACTION_COLUMNS = names(INTERACTIONS)
ITEM_COLUMNS = names(ITEMS)
