"""Markdown pieces every report section uses: whether a table can be shown, and the table itself."""

import pandas as pd


def has(frame: pd.DataFrame | None, *columns) -> bool:
    """Whether a table has rows and every one of the columns."""
    return frame is not None and len(frame) > 0 and all(column in frame for column in columns)


def table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A table in Markdown (tabulate's pipe format), floats to `digits` places; `_(none)_` when empty."""
    if frame.empty:
        return "_(none)_\n"
    return frame.to_markdown(index=False, floatfmt=f".{digits}f") + "\n"
