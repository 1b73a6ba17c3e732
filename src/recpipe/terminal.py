"""What ``recpipe recommend`` and ``recpipe similar`` print: ranked items, safe for a terminal.

Item ids and titles come from the user's data; a title holding a newline, an escape sequence or
another control character is printed escaped (``\\n``, ``\\x1b``), never raw.
"""

from __future__ import annotations

import pandas as pd


def printable(text: object) -> str:
    """``text`` with every non-printable character escaped as in a Python string literal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def print_ranked(header: str, rows: pd.DataFrame, score_width: int) -> None:
    """Print ``header`` then one line per row: rank, item id, score, title (columns of ``rows``)."""
    ids = [printable(i) for i in rows["item_id"]]
    width = max([4, *map(len, ids)])
    print(printable(header))
    print(f"{'rank':>4}  {'item':<{width}}  {'score':>{score_width}}  title")
    for r, item_id in zip(rows.itertuples(), ids):
        print(f"{r.rank:>4}  {item_id:<{width}}  {r.score:>{score_width}.4f}  {printable(r.title)}")
