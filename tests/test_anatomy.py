"""rule anatomy's parts: computed once, kept while their stamp holds, recomputed when what they
depend on changes (settings, an input rewritten, the upstream part), on real Parquet files."""

import os

import pyarrow.parquet as pq

from blockscope.analysis.part_stamps import Part, is_current, part_stamp, run_part
from blockscope.io.tables import read_stamp, table_of, write_table


def test_a_part_is_computed_once_and_kept_until_what_it_depends_on_changes(tmp_path):
    source = tmp_path / "tensors.parquet"
    write_table(table_of(["alpha"], {"alpha": [1.0]}), source)
    calls = []

    def compute():
        calls.append(1)
        return {"out": table_of(["alpha"], {"alpha": [float(len(calls))]})}

    def part(settings=None, upstream=""):
        return Part("spectra", {"out": tmp_path / "out.parquet"}, settings or {"k": 1}, {"tensors": source}, compute,
                    upstream)

    stamp = run_part(part())
    assert calls == [1] and read_stamp(tmp_path / "out.parquet") == stamp
    assert run_part(part()) == stamp and calls == [1]  # kept: nothing it depends on changed
    assert run_part(part({"k": 2})) != stamp and calls == [1, 1]  # a setting
    assert run_part(part({"k": 2}, upstream="other spectra")) and len(calls) == 3  # what it reuses
    before = part({"k": 2}, upstream="other spectra")
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 10**9))  # touched only
    assert part_stamp(before) == read_stamp(tmp_path / "out.parquet")  # as Snakemake does to a SLURM group's files
    write_table(table_of(["alpha"], {"alpha": [2.0]}), source)  # re-extracted with other values
    assert part_stamp(before) != read_stamp(tmp_path / "out.parquet")
    run_part(before)
    assert len(calls) == 4 and pq.read_table(tmp_path / "out.parquet")["alpha"].to_pylist() == [4.0]


def test_a_missing_unstamped_or_damaged_output_is_not_current(tmp_path):
    good, plain, broken = tmp_path / "good.parquet", tmp_path / "plain.parquet", tmp_path / "broken.parquet"
    write_table(table_of(["alpha"], {"alpha": [1.0]}), good, stamp="abc")
    write_table(table_of(["alpha"], {"alpha": [1.0]}), plain)
    broken.write_bytes(good.read_bytes()[:-20])  # a torn file
    assert is_current([good], "abc") and not is_current([good], "abd")
    assert not is_current([good, plain], "abc") and not is_current([broken], "abc")
    assert not is_current([tmp_path / "missing.parquet"], "abc")
