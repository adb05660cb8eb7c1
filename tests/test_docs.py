"""docs/outputs.md names every declared column of blockscope.layout."""

import re

import pytest

from blockscope import layout
from conftest import ROOT

OUTPUTS = (ROOT / "docs/outputs.md").read_text()


def documented(column: str) -> bool:
    """`column`, or a family written once like `energy_rank_50/75/90/95/99`."""
    if f"`{column}`" in OUTPUTS:
        return True
    family = re.fullmatch(r"(.*_)(\d+)", column)
    return bool(family) and re.search(rf"`{re.escape(family[1])}(?:[\d/]*/)?{family[2]}(?:/[\d/]*)?`", OUTPUTS) is not None


@pytest.mark.parametrize("table", sorted(layout.TABLES))
def test_every_declared_column_is_documented(table):
    missing = [c for c in layout.TABLES[table] if not documented(c)]
    assert not missing, f"{table}: {missing} not in docs/outputs.md"


def test_units_are_documented_by_their_contract_names():
    for unit in (layout.EMBED, layout.LM_HEAD, layout.OTHER, layout.layer_unit(0)):
        assert f"`{unit}`" in OUTPUTS
