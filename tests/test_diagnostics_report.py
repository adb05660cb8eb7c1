"""WeightWatcher's further diagnostics in the report and the ESD figures: the findings and the
section's tables from a planted metrics table (two traps with their entries, three matrices with
fingers, TPL preferences 4 / 2 / 10), a table without the diagnostics, and the ESD figure with and
without the permuted matrix's ESD and bulk edge, through the library and through rule esd_plot's
script."""

import os
import runpy
import types

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from snakemake.iocontainers import Namedlist

from blockscope.diagnostic_layout import DIAGNOSTIC_METRIC_COLUMNS, column_type
from blockscope.layout import SPECTRA_COLUMNS, STATISTICS_ONLY
from blockscope.reporting import diagnostics_section as ds
from blockscope.reporting.figures import spectra as spectra_figures

from conftest import ROOT

TYPES = ["q_proj", "k_proj", "up_proj", "down_proj"]
TRAPS = {("q_proj", 3): (2, "12.5 at (3, 7); -9.1 at (0, 2)"), ("down_proj", 1): (1, "8.0 at (100, 5)")}
FINGERS = {("k_proj", 0): 1, ("up_proj", 2): 2, ("down_proj", 3): 3}
TPL_CHOICE = ["truncated_power_law"] * 4 + ["power_law"] * 2 + ["neither"] * 10


def planted(vectors: bool = False) -> pd.DataFrame:
    """16 diagnosed matrices (4 block types x 4 layers), one matrix without a spectrum (diagnostics NA)
    and one 1-D parameter, written to Parquet and read back as aggregate's table would be."""
    rng = np.random.default_rng(7)
    rows = []
    for i, (layer, kind) in enumerate((layer, kind) for layer in range(4) for kind in TYPES):
        spikes, entries = TRAPS.get((kind, layer), (0, ""))
        fingers = FINGERS.get((kind, layer), 0)
        alpha = 1.6 if fingers else float(rng.uniform(2.5, 4.5))
        shape = (64, 32) if kind != "down_proj" else (32, 128)
        rows.append({"model": "m", "unit": f"layer_{layer:03d}", "param_name": f"model.layers.{layer}.{kind}.weight",
                     "matrix": f"model.layers.{layer}.{kind}.weight", "layer_index": layer, "block_type": kind,
                     "rows": shape[0], "cols": shape[1], "alpha": alpha, "num_pl_spikes": int(rng.integers(3, 12)),
                     "status": "ok", "rand_max_eval": 5.0 + spikes, "rand_bulk_max": 4.0,
                     "rand_num_spikes": spikes, "rand_mp_softrank": 0.8, "rand_distance": 0.1 + 0.2 * spikes,
                     "correlation_trap": int(spikes > 0), "trap_entries": entries,
                     "alpha_clipped": 2.9 if fingers else alpha, "D_clipped": 0.05, "num_fingers": fingers,
                     "tpl_alpha": 1.5, "tpl_lambda": 0.01, "tpl_loglikelihood_ratio": 0.3, "tpl_p_value": 0.2,
                     "tpl_preferred": TPL_CHOICE[i], "detx_num": int(rng.integers(3, 12)), "detx_val": 1.0,
                     "vector_k": 10 if vectors else None, "vector_ipr_max": 0.1 * (i + 1) / 16 if vectors else None})
    empty = {c: None for c in DIAGNOSTIC_METRIC_COLUMNS}
    rows.append({**rows[0], **empty, "matrix": "model.layers.0.o_proj.weight", "block_type": "o_proj",
                 "status": "non-finite weights (1 NaN, 0 Inf)", "alpha": np.nan, "num_pl_spikes": None})
    rows.append({**rows[0], **empty, "matrix": "model.layers.0.norm.weight", "block_type": "norm",
                 "status": STATISTICS_ONLY, "alpha": np.nan, "num_pl_spikes": None, "cols": None})
    frame = pd.DataFrame(rows)
    columns = [c for c in DIAGNOSTIC_METRIC_COLUMNS if vectors or c not in ("vector_k", "vector_ipr_max")]
    frame = frame.drop(columns=[c for c in ("vector_k", "vector_ipr_max") if not vectors])
    frame = frame.assign(**{c: frame[c].astype(column_type(c)) if column_type(c) != "str" else frame[c]
                            for c in columns if c in frame},
                         num_pl_spikes=frame["num_pl_spikes"].astype("Int64"), rows=frame["rows"].astype("Int64"),
                         cols=frame["cols"].astype("Int64"))
    return frame


@pytest.fixture
def metrics(tmp_path):
    path = tmp_path / "metrics.parquet"
    planted().to_parquet(path)
    return pd.read_parquet(path)


def diagnosed(frame):
    return frame[frame["correlation_trap"].notna()]


def test_findings_name_the_traps_with_their_entries(metrics):
    found = ds.diagnostics_findings(metrics)
    assert len(found) == 4  # traps, fingers, TPL, detX; no vector columns, no localisation sentence
    traps = found[0]
    assert traps.startswith("2 of 16 matrices are correlation traps")
    first = traps.index("q_proj layer 3 (2 spikes; largest entries 12.5 at (3, 7); -9.1 at (0, 2))")
    assert first < traps.index("down_proj layer 1 (1 spike; largest entries 8.0 at (100, 5))")  # most spikes first


def test_findings_count_fingers_and_alpha_move(metrics):
    fingers = ds.diagnostics_findings(metrics)[1]
    assert fingers.startswith("3 of 16 matrices have fingers that clip_xmax removed")
    assert "1 to 3 of their largest eigenvalues, 6 in all" in fingers
    assert "median α moves from 1.60 to 2.90" in fingers


def test_findings_count_the_tpl_test_with_its_level(metrics):
    tpl = ds.diagnostics_findings(metrics)[2]
    assert "at the 95 % level: p < 0.05" in tpl and "over 16 matrices, prefers: truncated power law 4; power law 2; " \
                                                     "neither 10." in tpl
    assert "at the 99 % level: p < 0.01" in ds.diagnostics_findings(metrics, level=0.99)[2]


def test_findings_compare_detx_with_the_power_law_tail(metrics):
    rows = diagnosed(metrics)
    gap = rows["detx_num"].astype(float) - rows["num_pl_spikes"].astype(float)
    detx = ds.diagnostics_findings(metrics)[3]
    assert f"ERG gap (detX_num − num_pl_spikes) has median {gap.median():+g}" in detx
    assert (f"larger in {(gap > 0).sum()}, equal in {(gap == 0).sum()} and smaller in {(gap < 0).sum()}" in detx)
    assert f"median detX_num {rows['detx_num'].astype(float).median():g} against " \
           f"{rows['num_pl_spikes'].astype(float).median():g}" in detx


def test_findings_cite_the_metrics_table_when_given_links(metrics):
    link = {"metrics": "[metrics.csv](metrics.csv)"}
    assert all(s.endswith(" ([metrics.csv](metrics.csv)).") for s in ds.diagnostics_findings(metrics, link=link))


def test_localisation_is_reported_only_with_vector_columns(tmp_path):
    path = tmp_path / "metrics.parquet"
    planted(vectors=True).to_parquet(path)
    metrics = pd.read_parquet(path)
    found = ds.diagnostics_findings(metrics)
    assert len(found) == 5
    rows = diagnosed(metrics)
    ratio = rows["vector_ipr_max"] / (3 / np.minimum(rows["rows"], rows["cols"]).astype(float))
    top = rows.loc[ratio.astype(float).idxmax()]
    assert f"most localised: {top['block_type']} layer {top['layer_index']} (max IPR {top['vector_ipr_max']:.3g}, " \
           f"{ratio.max():.3g}× 3/n)" in found[4]
    assert f"median max IPR {ratio.median():.1f}× 3/n" in found[4]
    section = "\n".join(ds.diagnostics_section(metrics, {}, str))
    assert "Most localised singular vectors" in section and f"{ratio.max():.4f}" in section


@pytest.mark.parametrize("frame", [None, pd.DataFrame(),
                                   pd.DataFrame({"matrix": ["a"], "block_type": ["q_proj"], "alpha": [3.0]})])
def test_a_table_without_the_diagnostics_gives_no_finding_and_says_so(frame):
    assert ds.diagnostics_findings(frame) == []
    assert ds.diagnostics_section(frame, {"esd": "p.png"}, str) == [ds.TITLE, "", ds.NOT_COMPUTED, ""]


def markdown_rows(lines, after: str) -> pd.DataFrame:
    """The Markdown table that follows the line starting with `after`, as text cells."""
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    body = [line for line in lines[start + 2].splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in body]
    return pd.DataFrame(cells[2:], columns=cells[0])


def test_the_section_tables_the_traps_and_the_block_types(metrics):
    figures = {"esd_layer_0": "results/m/plots/esd_layer_0.svg"}
    lines = ds.diagnostics_section(metrics, figures, lambda p: os.path.relpath(p, "results/m"))
    traps = markdown_rows(lines, "Correlation traps (2)")
    assert list(traps.columns) == ["matrix", "layer", "block type", "rand_num_spikes", "rand_distance", "trap_entries"]
    assert traps["matrix"].tolist() == ["model.layers.3.q_proj.weight", "model.layers.1.down_proj.weight"]
    assert traps["trap_entries"].tolist() == ["12.5 at (3, 7); -9.1 at (0, 2)", "8.0 at (100, 5)"]
    assert traps["rand_distance"].tolist() == ["0.500", "0.300"]
    kinds = markdown_rows(lines, "Per block type").set_index("block type")
    rows = diagnosed(metrics)
    expected = rows.groupby("block_type")["alpha"].median()
    assert sorted(kinds.index) == sorted(TYPES)  # not the matrix without a spectrum (no diagnostic)
    assert kinds["matrices"].astype(int).tolist() == [4, 4, 4, 4]
    for kind in TYPES:
        assert kinds.loc[kind, "α (median)"] == f"{expected[kind]:.2f}"
        assert kinds.loc[kind, "α clipped (median)"] == \
            f"{rows[rows['block_type'] == kind]['alpha_clipped'].median():.2f}"
    counts = kinds[["with fingers", "TPL preferred", "PL preferred", "neither"]].astype(int).sum()
    assert counts.to_dict() == {"with fingers": 3, "TPL preferred": 4, "PL preferred": 2, "neither": 10}
    assert kinds.loc["down_proj", "detx_num (median)"] == \
        f"{rows[rows['block_type'] == 'down_proj']['detx_num'].astype(float).median():.2f}"
    assert "- [esd_layer_0](plots/esd_layer_0.svg)" in lines
    assert "at the 95 % level" in lines[2]


# --- the ESD figure ---------------------------------------------------------------------------------

def spectra(seed=0):
    """A heavy-tailed W's eigenvalues and its elementwise permutation's (lambda = sigma^2)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((96, 48))
    w[3, 5] = 40.0  # one large entry: a spike the permutation keeps
    permuted = rng.permutation(w.ravel()).reshape(w.shape)
    return np.linalg.svd(w, compute_uv=False) ** 2, np.linalg.svd(permuted, compute_uv=False) ** 2


@pytest.fixture
def drawn(monkeypatch):
    """The figures esd draws, still written by the real save."""
    figures, save = [], spectra_figures.save
    monkeypatch.setattr(spectra_figures, "save", lambda fig, target: (figures.append(fig), save(fig, target)))
    return figures


def test_the_esd_overlays_the_permuted_esd_in_the_same_bins(tmp_path, drawn):
    eigs, rand = spectra()
    edge = 96 * (1 + np.sqrt(48 / 96)) ** 2  # MP edge of a 96 x 48 matrix of unit-variance entries
    panels = [("q_proj", eigs, 2.5, np.quantile(eigs, 0.5), "ok"), ("k_proj", np.zeros(0), np.nan, np.nan, "no")]
    targets = [tmp_path / "esd.png", tmp_path / "esd.svg"]
    spectra_figures.esd(panels, "t", targets, randomised=[(rand, edge), (rand, edge)])
    ax = drawn[0].axes[0]
    bars = [p for p in ax.patches if p.get_label() == "ESD" or type(p).__name__ == "Rectangle"]
    step = next(p for p in ax.patches if p.get_label() == spectra_figures.RANDOMISED_LABEL)
    both = np.concatenate([eigs, rand])
    bins = np.logspace(np.log10(both.min()), np.log10(both.max()), 40)
    edges = np.array([b.get_x() for b in bars] + [bars[-1].get_x() + bars[-1].get_width()])
    np.testing.assert_allclose(edges, bins, rtol=1e-12)  # W's ESD in bins spanning both spectra
    xy, n = step.get_xy(), bins.size - 1  # a step outline: (left edge, 0), (left edge, height), ...
    np.testing.assert_allclose(xy[0:2 * n:2, 0], bins[:-1], rtol=1e-12)
    np.testing.assert_allclose(xy[1:2 * n:2, 1], np.histogram(rand, bins=bins, density=True)[0], rtol=1e-12)
    line = next(li for li in ax.lines if li.get_label().startswith("randomised MP bulk edge"))
    assert list(line.get_xdata()) == [edge, edge] and f"λ+ = {edge:.3g}" in line.get_label()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert spectra_figures.RANDOMISED_LABEL in labels and "ESD" in labels
    assert not drawn[0].axes[1].axison  # a panel without a spectrum stays a status panel
    assert all(t.stat().st_size > 1000 for t in targets)
    assert spectra_figures.RANDOMISED_LABEL in targets[1].read_text()


def test_the_esd_without_permuted_spectra_is_drawn_as_before(tmp_path, drawn):
    eigs, _ = spectra()
    panels = [("q_proj", eigs, 2.5, np.quantile(eigs, 0.5), "ok")]
    spectra_figures.esd(panels, "t", [tmp_path / "a.png", tmp_path / "a.svg"])
    spectra_figures.esd(panels, "t", [tmp_path / "b.png", tmp_path / "b.svg"], randomised=[None])
    ax = drawn[0].axes[0]
    bins = np.logspace(np.log10(eigs.min()), np.log10(eigs.max()), 40)
    np.testing.assert_allclose([p.get_x() for p in ax.patches], bins[:-1], rtol=1e-12)  # W's own range
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["ESD", "power law α = 2.50", f"xmin = {np.quantile(eigs, 0.5):.3g}"]
    np.testing.assert_array_equal(matplotlib.image.imread(tmp_path / "a.png"),
                                  matplotlib.image.imread(tmp_path / "b.png"))
    assert "randomised" not in (tmp_path / "a.svg").read_text()
    with pytest.raises(ValueError, match="1 randomised spectra for 2 panels"):
        spectra_figures.esd(panels * 2, "t", tmp_path / "c.png", randomised=[None])


# --- rule esd_plot's script ---------------------------------------------------------------------------

def run_esd_plot(tmp_path, **optional) -> str:
    """Run workflow_scripts/esd_plot.py on one layer's tables; the svg's text."""
    eigs, rand = spectra()
    matrix = "model.layers.0.self_attn.q_proj.weight"
    sigma = lambda values: pd.DataFrame({"model": "m", "unit": "layer_000", "param_name": matrix,  # noqa: E731
                                         "expert": pd.array([pd.NA] * values.size, "Int64"), "matrix": matrix,
                                         "index": np.arange(values.size), "sigma": np.sqrt(values)})[SPECTRA_COLUMNS]
    files = {"spectra": sigma(eigs), "rand_spectra": sigma(rand),
             "metrics": pd.DataFrame({"matrix": [matrix], "alpha": [2.5], "xmin": [np.median(eigs)],
                                      "status": ["ok"]}),
             "diagnostics": pd.DataFrame({"matrix": [matrix], "rand_bulk_max": [123.0]})}
    paths = {}
    for name, frame in files.items():
        paths[name] = str(tmp_path / f"{name}.parquet")
        frame.to_parquet(paths[name])
    inputs = {"spectra": paths["spectra"], "metrics": paths["metrics"],
              **{name: paths[name] if keep else [] for name, keep in optional.items()}}
    output = tmp_path / "esd_layer_0.svg"
    snakemake = types.SimpleNamespace(input=Namedlist(fromdict=inputs), output=[str(output)],
                                      log=[str(tmp_path / "esd.log")],
                                      wildcards=types.SimpleNamespace(model="m", layer="0"))
    runpy.run_path(str(ROOT / "workflow_scripts/esd_plot.py"), init_globals={"snakemake": snakemake})
    return output.read_text()


def test_rule_esd_plot_overlays_the_permuted_esd_from_its_optional_inputs(tmp_path):
    svg = run_esd_plot(tmp_path, rand_spectra=True, diagnostics=True)
    assert spectra_figures.RANDOMISED_LABEL in svg and "randomised MP bulk edge" in svg and "123" in svg
    without_edge = run_esd_plot(tmp_path, rand_spectra=True, diagnostics=False)
    assert spectra_figures.RANDOMISED_LABEL in without_edge and "randomised MP bulk edge" not in without_edge
    plain = run_esd_plot(tmp_path)  # the rule as it was: no optional input
    assert "randomised" not in plain and "power law" in plain
