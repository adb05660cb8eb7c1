"""WeightWatcher's remaining diagnostics (analysis.correlation_traps, detx, singular_vectors,
diagnostics), each against an independent computation: planted traps against clean Gaussian matrices,
invariants of a permutation, detX by hand and by WeightWatcher 0.7.7's own function, the localisation
of vectors whose answer is known, and the table's columns and types read back from Parquet."""

import importlib
import re
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from blockscope.analysis import correlation_traps as ct
from blockscope.analysis import singular_vectors as sv
from blockscope.analysis.detx import detx
from blockscope.analysis.diagnostics import NO_SPECTRUM, unit_diagnostics
from blockscope.diagnostic_layout import DIAGNOSTIC_COLUMNS, column_type
from blockscope.io.tables import ARROW_TYPES, write_table
from blockscope.io.tensors import write_unit
from blockscope.layout import SPECTRA_COLUMNS

WW077 = Path("/work/notes/ww077/weightwatcher")  # WeightWatcher 0.7.7's source, where this machine has it
SETTINGS = {"enabled": True, "seed": 0, "max_fingers": 10, "finger_threshold": 1.0, "tpl_level": 0.95,
            "trap_entries": 5, "vectors": False, "vector_k": 4, "vector_top_entries": 3}
PLANTED = 50.0  # a planted entry's size, in standard deviations of the rest


def planted(shape, seed, count=3):
    """A standard Gaussian matrix with `count` entries set to +-PLANTED, and their (row, col)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    flat = rng.choice(w.size, count, replace=False)
    w.flat[flat] = PLANTED * rng.choice([-1.0, 1.0], count)
    return w.astype(np.float32), {tuple(map(int, np.unravel_index(i, shape))) for i in flat}


def gaussian(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def svdvals(w):
    return np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)


def traps_of(w, seed=0, name="m", entries=5):
    """trap_metrics of one matrix, its eigenvalues and permutations' singular values by numpy's SVD."""
    eigs = np.sort(svdvals(w) ** 2)
    seed_words = ct.matrix_seed(seed, name)
    rand = [svdvals(ct.permute(w, seed_words, r)) for r in range(ct.replicas_for(min(w.shape)))]
    return ct.trap_metrics(w, eigs, rand, entries)


def positions(text):
    """[(row, col, value)] of a trap_entries text."""
    return [(int(i), int(j), float(v)) for i, j, v in re.findall(r"\((\d+), (\d+)\) (\S+?)(?:;|$)", text)]


# --- correlation traps ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(300, 200), (150, 256)])
def test_a_planted_trap_is_flagged_and_its_entries_listed(shape, seed):
    w, where = planted(shape, seed)
    found = traps_of(w, entries=4)
    assert found["correlation_trap"] == 1
    # each planted entry alone in its row and column leaves one eigenvalue ~ 50^2 far above the edge
    # (sigma^2 (sqrt N + sqrt M)^2 < 50^2 for these shapes), the Gaussian rest none
    assert found["rand_num_spikes"] == 3
    assert found["rand_max_eval"] > PLANTED**2 > found["rand_bulk_max"]
    listed = positions(found["trap_entries"])
    order = np.argsort(-np.abs(w).ravel(), kind="stable")[:4]  # the 4 largest |w_ij|, by numpy
    assert [(i, j) for i, j, _ in listed] == [tuple(map(int, np.unravel_index(k, shape))) for k in order]
    assert {(i, j) for i, j, _ in listed[:3]} == where
    assert all(abs(v) == PLANTED and v == w[i, j] for i, j, v in listed[:3])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (256, 256), (576, 192)])
def test_clean_gaussian_matrices_are_not_trapped(shape, seed):
    found = traps_of(gaussian(shape, seed), seed=seed)
    assert found["correlation_trap"] == 0 and found["rand_num_spikes"] == 0 and found["trap_entries"] == ""
    # an i.i.d. matrix's largest eigenvalue lies at the MP edge sigma^2 (sqrt N + sqrt M)^2 (sigma = 1),
    # which the moment fit of the edge recovers
    assert found["rand_bulk_max"] == pytest.approx((np.sqrt(shape[0]) + np.sqrt(shape[1])) ** 2, rel=0.03)
    assert found["rand_max_eval"] == pytest.approx(found["rand_bulk_max"], rel=0.06)
    assert 0 < found["rand_distance"] < 0.05  # W is i.i.d. too: its ESD and the permuted one match


def test_the_permutation_is_seeded_per_matrix_and_keeps_every_entry():
    w = gaussian((40, 30), 0)
    first = ct.permute(w, ct.matrix_seed(0, "layers.0.q_proj.weight"))
    again = ct.permute(w.copy(), ct.matrix_seed(0, "layers.0.q_proj.weight"))
    assert first.dtype == w.dtype and first.shape == w.shape
    assert np.array_equal(first.view(np.uint32), again.view(np.uint32))  # bit-identical on a rerun
    assert np.array_equal(np.sort(first, axis=None), np.sort(w, axis=None))  # the same entries
    others = [ct.permute(w, ct.matrix_seed(0, "layers.0.k_proj.weight")),
              ct.permute(w, ct.matrix_seed(1, "layers.0.q_proj.weight")),
              ct.permute(w, ct.matrix_seed(0, "layers.0.q_proj.weight"), replica=1)]
    assert not any(np.array_equal(first, other) for other in others)  # another name, seed or replica
    assert ct.matrix_seed(7, "x") == ct.matrix_seed(7, "x") and ct.matrix_seed(7, "x")[1] != ct.matrix_seed(7, "y")[1]


def test_small_matrices_pool_five_permutations_as_weightwatcher():
    assert [ct.replicas_for(n) for n in (10, 99, 100, 576)] == [5, 5, 1, 1]
    w, _ = planted((90, 60), 3, count=1)
    found = traps_of(w)
    assert found["correlation_trap"] == 1 and found["rand_num_spikes"] == 5  # the one spike in each replica


def test_rand_distance_is_weightwatchers_jensen_shannon_distance():
    from scipy.spatial.distance import jensenshannon

    rng = np.random.default_rng(0)
    eigs = np.sort(rng.random(50) ** 3)
    rand = np.sort(rng.permutation(eigs) * rng.random(50))
    rand *= eigs.sum() / rand.sum()  # a permutation keeps the sum of the eigenvalues (||W||_F^2)
    # scipy's Jensen-Shannon distance (natural log) of the two spectra read as distributions over the index
    reference = jensenshannon(eigs / eigs.sum(), rand / rand.sum())
    assert ct.rand_distance(eigs, rand) == pytest.approx(reference, rel=1e-12)
    assert ct.rand_distance(eigs, eigs) == 0.0
    assert ct.jensen_shannon_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(np.sqrt(np.log(2)))  # its largest
    assert np.isnan(ct.rand_distance(eigs, rand[:-1]))


def test_the_spike_margin_is_weightwatchers_mp_fit_rule():
    """mp_fit rescales the eigenvalues to mean 1, counts those above bulk_max + sqrt(TW),
    TW = Q^-1/2 bulk_max^(2/3) M^(-2/3); written out here on the rescaled values."""
    rows, cols = 300, 120
    eigs = np.sort(svdvals(gaussian((rows, cols), 4)) ** 2)
    edge = 1.1 * eigs.max()
    scale = eigs.size / eigs.sum()  # Wscale^2
    bulk = edge * scale
    tw = 1 / np.sqrt(rows / cols) * bulk ** (2 / 3) * cols ** (-2 / 3)
    assert edge + ct.tracy_widom_margin(edge, eigs.mean(), rows, cols) == pytest.approx((bulk + np.sqrt(tw)) / scale)


# --- detX ------------------------------------------------------------------------------------------

def test_detx_by_hand():
    # mean 1 already: from the top 4.0, 4.0 x 0.4 = 1.6, x 0.3 = 0.48 < 1 at index 2: 3 eigenvalues
    eigs = np.array([0.1, 0.2, 0.3, 0.4, 4.0])
    assert detx(eigs) == (3, 0.3)
    num, val = detx(7.0 * eigs[::-1])  # any scale, any order: rescaled to mean 1 first
    assert num == 3 and val == pytest.approx(2.1)
    # never below 1 from index 1 up: WeightWatcher's loop ends with all of them and index 1
    assert detx(np.array([0.001, 1.4995, 1.4995])) == (3, 1.4995)
    assert detx(np.full(6, 2.0)) == (0, 2.0)  # a flat spectrum: evals[0] < evals[-1] fails
    num, val = detx(np.zeros(0))  # no spectrum: nothing to count
    assert num is None and np.isnan(val)


def weightwatcher_rmt_util():
    """RMT_Util.py of WeightWatcher 0.7.7 as a module, without the package's __init__ (which imports
    torch and pandas); skipped where its source or its imports are missing."""
    if not (WW077 / "RMT_Util.py").exists():
        pytest.skip("WeightWatcher 0.7.7's source is not on this machine")
    package = types.ModuleType("ww077_source")
    package.__path__ = [str(WW077)]
    sys.modules.setdefault("ww077_source", package)
    try:
        return importlib.import_module("ww077_source.RMT_Util")
    except ImportError as exc:
        pytest.skip(f"RMT_Util's imports: {exc}")


def test_detx_and_the_distance_against_weightwatchers_own_functions():
    ww = weightwatcher_rmt_util()
    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(5, 300))
        eigs = np.sort(rng.pareto(1 + 3 * rng.random(), n) + 1e-3 * rng.random(n))  # heavy tails
        rescaled, scale = ww.rescale_eigenvalues(eigs.copy())
        num, index = ww.detX_constraint(rescaled, rescale=False)
        assert detx(eigs) == (num, pytest.approx(ww.un_rescale_eigenvalues(rescaled, scale)[index])), trial
        rand = np.sort(rng.permutation(eigs) * (1 + rng.random(n)))
        rand *= eigs.sum() / rand.sum()
        assert ct.rand_distance(eigs, rand) == pytest.approx(ww.jensen_shannon_distance(eigs, rand), rel=1e-10)


# --- singular vectors ---------------------------------------------------------------------------

def test_a_delocalised_and_a_localised_vector():
    n = 4000
    spread = np.random.default_rng(0).standard_normal(n)
    # E sum v_i^4 = 3 / (n + 2) for a uniformly random unit vector
    assert sv.inverse_participation_ratio(spread) == pytest.approx(3 / n, rel=0.1)
    assert sv.vector_entropy(spread) == pytest.approx(1 - (2 - np.euler_gamma - np.log(2)) / np.log(n), abs=0.01)
    one_hot = np.zeros(n)
    one_hot[17] = -2.0
    assert sv.inverse_participation_ratio(one_hot) == 1.0
    assert sv.vector_entropy(one_hot) == 0.0 and sv.top_entry_mass(one_hot, 1) == 1.0
    flat = np.ones(n)
    assert sv.inverse_participation_ratio(flat) == pytest.approx(1 / n) and sv.vector_entropy(flat) == pytest.approx(1)
    assert sv.top_entry_mass(flat, 10) == pytest.approx(10 / n)
    assert sv.top_entry_mass(np.array([3.0, 0.0, 4.0, 0.0]), 1) == pytest.approx(16 / 25)


def test_vector_metrics_of_a_localised_spike_and_the_torch_path():
    rng = np.random.default_rng(1)
    w = 0.01 * rng.standard_normal((120, 80))
    w[7, 3] = 10.0  # the top singular vectors are (nearly) e_7 and e_3
    u, v = sv.singular_vector_pairs([w], 3, "cpu")[0]
    assert u.shape == (120, 3) and v.shape == (80, 3)
    expected_u, _, expected_vt = np.linalg.svd(w)
    assert np.allclose(np.abs(u.T @ expected_u[:, :3]), np.eye(3), atol=1e-6)
    assert np.allclose(np.abs(v.T @ expected_vt[:3].T), np.eye(3), atol=1e-6)
    found = sv.vector_metrics(u, v, 1)
    assert found["vector_k"] == 3 and found["vector_ipr_max"] > 0.999 and found["vector_entropy_min"] < 0.01
    assert found["vector_ipr_mean"] < found["vector_ipr_max"]  # the other vectors are spread
    pytest.importorskip("torch")
    wide = rng.standard_normal((30, 50)).astype(np.float32)
    for (cu, cv), (tu, tv) in zip(sv.singular_vector_pairs([w, w.T, wide], 3, "cpu"),
                                  sv.singular_vector_pairs([w, w.T, wide], 3, "torch-cpu")):
        assert np.allclose(np.abs(np.sum(cu * tu, axis=0)), 1, atol=1e-8)
        assert np.allclose(np.abs(np.sum(cv * tv, axis=0)), 1, atol=1e-8)


# --- the unit's tables -------------------------------------------------------------------------------

def unit(tmp_path, tensors: dict):
    """A unit file and its inventory rows, as the extract and inventory rules write them."""
    path = tmp_path / "layer_000.parquet"
    write_unit(((name, "I32" if a.dtype.kind == "i" else "F32", a) for name, a in tensors.items()), path)
    rows = [{"param_name": name, "unit": "layer_000", "layer_index": 0,
             "block_type": "moe_expert" if a.ndim == 3 else name.split(".")[-2],
             "shape": list(a.shape), "dtype": "I32" if a.dtype.kind == "i" else "F32",
             "source_dtype": "F32", "layout": "out_in"} for name, a in tensors.items()]
    return path, rows


def read_back(table, path):
    """Written with io.tables.write_table and read back: exactly DIAGNOSTIC_COLUMNS, typed per column_type."""
    write_table(table, path)
    assert [field.name for field in pq.read_schema(path)] == DIAGNOSTIC_COLUMNS
    for field in pq.read_schema(path):
        assert field.type == ARROW_TYPES[column_type(field.name)], field.name
    frame = pd.read_parquet(path)
    for column in DIAGNOSTIC_COLUMNS:
        kind = column_type(column)
        if kind == "str":
            assert pd.api.types.is_string_dtype(frame[column]) or frame[column].dtype == object, column
        else:
            assert frame[column].dtype == kind, (column, frame[column].dtype)
    return frame


@pytest.fixture(scope="module")
def demo_unit(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("diagnostics")
    trapped, where = planted((240, 160), 11)
    tensors = {"self_attn.q_proj.weight": trapped, "self_attn.k_proj.weight": gaussian((120, 240), 12),
               "mlp.up_proj.weight": gaussian((200, 200), 13),
               "mlp.experts.gate_proj": gaussian((3 * 40, 16), 14).reshape(3, 40, 16),
               "self_attn.small.weight": gaussian((8, 12), 15),
               "self_attn.broken.weight": np.full((20, 20), np.nan, np.float32),
               "self_attn.codes.weight": np.arange(64, dtype=np.int32).reshape(8, 8),
               "input_layernorm.weight": np.ones(16, np.float32)}
    path, rows = unit(tmp_path, tensors)
    sigmas = {name: svdvals(w) for name, w in tensors.items()
              if w.ndim == 2 and w.dtype.kind == "f" and np.isfinite(w).all()}
    sigmas.update({f"mlp.experts.gate_proj[{e}]": svdvals(tensors["mlp.experts.gate_proj"][e]) for e in range(3)})
    sigmas["self_attn.broken.weight"] = np.full(20, np.nan)  # the spectra part's output for it: none
    out = unit_diagnostics("m", "layer_000", path, rows, sigmas, SETTINGS)
    return tensors, where, path, rows, sigmas, out, tmp_path


def test_the_diagnostics_table(demo_unit):
    tensors, where, path, rows, sigmas, out, tmp_path = demo_unit
    frame = read_back(out["diagnostics"], tmp_path / "diagnostics.parquet").set_index("matrix")
    assert "input_layernorm.weight" not in frame.index  # 2-D matrices (and refused tensors) only
    q = frame.loc["self_attn.q_proj.weight"]
    assert (q["correlation_trap"], q["rand_num_spikes"], q["diagnostics_status"]) == (1, 3, "ok")
    assert {(i, j) for i, j, _ in positions(q["trap_entries"])[:3]} == where
    for clean in ("self_attn.k_proj.weight", "mlp.up_proj.weight"):
        row = frame.loc[clean]
        assert (row["correlation_trap"], row["trap_entries"], row["diagnostics_status"]) == (0, "", "ok")
        assert (row["rows"], row["cols"]) == tensors[clean].shape
    experts = frame[frame["param_name"] == "mlp.experts.gate_proj"]
    assert list(experts["expert"]) == [0, 1, 2] and set(experts["rows"]) == {40} and set(experts["cols"]) == {16}
    ok = frame[frame["diagnostics_status"] == "ok"]
    assert len(ok) == 6 and (ok["diagnostics_seconds"] > 0).all()
    assert ok["num_fingers"].notna().all() and ok["alpha_clipped"].notna().all()
    assert set(ok["tpl_preferred"]) <= {"truncated power law", "power law", "neither"}
    assert ok["vector_k"].isna().all() and ok["vector_ipr_mean"].isna().all()  # vectors are off
    for name, row in ok.iterrows():  # detX of the spectra part's sigma, as detx computes it
        assert (row["detx_num"], row["detx_val"]) == detx(sigmas[name] ** 2)
    small = frame.loc["self_attn.small.weight"]
    assert small["diagnostics_status"].startswith("fewer than 10 eigenvalues (8)")
    assert pd.isna(small["correlation_trap"]) and pd.isna(small["alpha_clipped"]) and small["detx_num"] >= 0
    assert frame.loc["self_attn.broken.weight", "diagnostics_status"] == NO_SPECTRUM
    codes = frame.loc["self_attn.codes.weight"]
    assert "integer" in codes["diagnostics_status"] and pd.isna(codes["detx_num"])


def test_the_permuted_spectra(demo_unit):
    tensors, _, path, rows, sigmas, out, _ = demo_unit
    rand = out["rand_spectra"].to_pandas()
    assert list(rand.columns) == SPECTRA_COLUMNS
    weights = {**{n: w for n, w in tensors.items() if w.ndim == 2},
               **{f"mlp.experts.gate_proj[{e}]": tensors["mlp.experts.gate_proj"][e] for e in range(3)}}
    frame = out["diagnostics"].to_pandas().set_index("matrix")
    assert set(rand["matrix"]) == set(frame.index[frame["rand_max_eval"].notna()])
    for name, group in rand.groupby("matrix"):
        w = weights[name].astype(np.float64)
        replicas = ct.replicas_for(min(w.shape))
        sigma = group["sigma"].to_numpy()
        assert list(group["index"]) == list(range(replicas * min(w.shape))) and np.all(np.diff(sigma) <= 0)
        # a permutation keeps every entry: each replica's sum sigma^2 is ||W||_F^2
        assert np.sum(sigma**2) == pytest.approx(replicas * np.sum(w**2), rel=1e-5)
        expected = np.sort(np.concatenate([svdvals(ct.permute(weights[name], ct.matrix_seed(0, name), r))
                                           for r in range(replicas)]))[::-1]
        assert np.allclose(sigma, expected, rtol=1e-4, atol=1e-4 * expected[0])
        assert frame.loc[name, "rand_max_eval"] == pytest.approx(sigma[0] ** 2, rel=1e-9)


def test_reruns_are_bit_identical_and_the_seed_matters(demo_unit):
    _, _, path, rows, sigmas, out, _ = demo_unit
    again = unit_diagnostics("m", "layer_000", path, rows, sigmas, SETTINGS)
    assert again["rand_spectra"].equals(out["rand_spectra"])
    timeless = [c for c in DIAGNOSTIC_COLUMNS if c != "diagnostics_seconds"]
    assert again["diagnostics"].select(timeless).equals(out["diagnostics"].select(timeless))
    other = unit_diagnostics("m", "layer_000", path, rows, sigmas, {**SETTINGS, "seed": 1})
    assert not other["rand_spectra"].equals(out["rand_spectra"])
    assert other["diagnostics"].column("correlation_trap").to_pylist() == \
        out["diagnostics"].column("correlation_trap").to_pylist()  # the verdict is not the seed's


def test_vectors_when_asked_and_the_batched_torch_path(demo_unit):
    pytest.importorskip("torch")
    _, _, path, rows, sigmas, out, tmp_path = demo_unit
    settings = {**SETTINGS, "vectors": True}
    cpu = unit_diagnostics("m", "layer_000", path, rows, sigmas, settings).get("diagnostics").to_pandas()
    torch = unit_diagnostics("m", "layer_000", path, rows, sigmas, settings, backend="torch-cpu")
    torch = read_back(torch["diagnostics"], tmp_path / "torch.parquet")
    ok = cpu["diagnostics_status"] == "ok"
    assert (cpu.loc[ok, "vector_k"] == 4).all() and cpu.loc[ok, "vector_ipr_mean"].between(0, 1).all()
    q = cpu.set_index("matrix").loc["self_attn.q_proj.weight"]
    # the three planted entries have nearly equal singular values (~50): their vectors mix within the span
    # of the three positions, so over 85 % of such a vector's mass lies in 3 entries and its IPR is >= ~1/3
    assert q["vector_top_mass_max"] > 0.85 and q["vector_ipr_max"] > 0.3
    clean = cpu.set_index("matrix").loc["self_attn.k_proj.weight"]  # 120 x 240: IPR ~ 3/120 at most
    assert clean["vector_ipr_max"] < 0.1 and clean["vector_entropy_min"] > 0.7
    assert torch["correlation_trap"].tolist() == cpu["correlation_trap"].tolist()
    for column in ("vector_ipr_mean", "vector_entropy_min", "vector_top_mass_max", "rand_max_eval"):
        assert np.allclose(torch.loc[ok, column], cpu.loc[ok, column], rtol=1e-4), column
