"""The per-unit diagnostics (the anatomy's diagnostics part) joined into a model's metrics table, one row
per matrix: the metrics keep their rows and order, and gain diagnostic_layout.DIAGNOSTIC_METRIC_COLUMNS
(missing, NaN or NA, for a row without them: a 1-D parameter, a matrix refused by the anatomy)."""

import pandas as pd

from blockscope.diagnostic_layout import DIAGNOSTIC_METRIC_COLUMNS, column_type

KEYS = ["unit", "matrix"]  # a matrix's name is unique within its unit (an expert's carries its index)


def with_diagnostics(metrics: pd.DataFrame, diagnostics: pd.DataFrame) -> pd.DataFrame:
    """metrics with the diagnostics' columns (and diagnostics_status) joined on unit and matrix."""
    columns = [*DIAGNOSTIC_METRIC_COLUMNS, "diagnostics_status"]
    found = diagnostics.reindex(columns=[*KEYS, *columns]) if len(diagnostics) else pd.DataFrame(
        columns=[*KEYS, *columns])
    if found.duplicated(KEYS).any():
        raise ValueError("the diagnostics name a matrix twice in one unit")
    joined = metrics.merge(found, on=KEYS, how="left", validate="one_to_one" if len(found) else None)
    return joined.astype({column: column_type(column) for column in columns})
