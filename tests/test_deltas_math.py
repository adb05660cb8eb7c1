"""The math of a model against another (issue 28): dW's rounding level and ranks, an adapter's update
from its factors, the distances of two matrices, and the per-unit tables. Every number is checked
against an independent computation: numpy's SVD of the dense stored difference or product, the
rounding level's formula written out, scipy's principal angles."""

from collections import namedtuple

import ml_dtypes
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.linalg

from blockscope import pair_layout
from blockscope.analysis import heavytail as ht
from blockscope.analysis import matrix_formulas as mx
from blockscope.analysis.delta_metrics import ROUNDING_SAFETY, rounding_level, unit_roundoff
from blockscope.analysis.delta_unit import adapter_delta_table, dense_delta, unit_delta_table, unit_distance_table
from blockscope.analysis.distances import top_singular_vectors
from blockscope.analysis.low_rank_update import factor_rounding_level, update_dot, update_singular_values
from blockscope.io.dtypes import safetensors_dtype
from blockscope.io.tables import ARROW_TYPES, write_table
from blockscope.io.tensors import write_unit

BF16 = ml_dtypes.bfloat16
SETTINGS = {"subspace_k": 6, "hill_fraction": 0.1}


def weights(rng, shape, spread=1.0):
    """A weight-like matrix: Gaussian entries of size 0.02 with uneven column scales."""
    return 0.02 * rng.standard_normal(shape) * np.exp(spread * rng.standard_normal(shape[1]))[None, :]


def stored_difference(w, w_base):
    return np.asarray(w, np.float64) - np.asarray(w_base, np.float64)


def level_written_out(w, w_base, u, u_base, floor=0.0):
    """The rounding level's formula, here in one dense expression (floor: both formats' subnormal term)."""
    s2 = u**2 * np.asarray(w, np.float64) ** 2 + u_base**2 * np.asarray(w_base, np.float64) ** 2 + 2 * floor**2
    return ROUNDING_SAFETY * (np.sqrt(s2.sum(axis=1).max()) + np.sqrt(s2.sum(axis=0).max()))


# --- the rounding level and the rank of a planted update -----------------------------------------


def test_unit_roundoff_of_the_stored_formats():
    assert unit_roundoff("F32") == 2.0**-24 and unit_roundoff("BF16") == 2.0**-8
    assert unit_roundoff("F16") == 2.0**-11 and unit_roundoff("F64") == 2.0**-53
    assert unit_roundoff(np.dtype(BF16)) == 2.0**-8 and unit_roundoff("float32") == 2.0**-24


def test_rounding_level_is_the_formula_and_bounds_the_rounding_noise_it_describes():
    rng = np.random.default_rng(0)
    exact = weights(rng, (300, 200))
    stored = exact.astype(BF16)
    level = rounding_level(stored, stored, "BF16", "BF16")
    assert level == pytest.approx(level_written_out(stored, stored, 2.0**-8, 2.0**-8), rel=1e-12)
    # equal-size entries: matrix_formulas.rounding_noise_rank's Marchenko-Pastur edge, both matrices counted
    signs = np.where(rng.random((300, 200)) < 0.5, -0.5, 0.5).astype(BF16)
    edge = 2.0**-8 * np.linalg.norm(np.asarray(signs, np.float64)) * (1 / np.sqrt(300) + 1 / np.sqrt(200))
    assert rounding_level(signs, signs, "BF16", "BF16") == pytest.approx(ROUNDING_SAFETY * np.sqrt(2) * edge, rel=1e-12)
    # the rounding bf16 put into `stored` is under the level, and not absurdly far under it
    noise = np.linalg.norm(stored_difference(stored, exact), 2)
    assert level / 8 < noise < level
    # an F32 base adds its own (tiny) rounding only
    mixed = rounding_level(stored, exact.astype(np.float32), "BF16", "F32")
    assert mixed == pytest.approx(level_written_out(stored, exact.astype(np.float32), 2.0**-8, 2.0**-24), rel=1e-12)
    assert mixed == pytest.approx(level / np.sqrt(2), rel=0.05)
    # fp16 weights in its subnormal range round to a fixed step, not to u |w|: the level holds that too
    small = 1e-6 * rng.standard_normal((200, 150))
    halves = small.astype(np.float16)
    assert np.abs(np.asarray(halves, np.float64)).max() < float(np.finfo(np.float16).tiny)  # all subnormal
    floor = 2.0**-25
    small_level = rounding_level(halves, halves, "F16", "F16")
    assert small_level == pytest.approx(level_written_out(halves, halves, 2.0**-11, 2.0**-11, floor), rel=1e-12)
    assert np.linalg.norm(stored_difference(halves, small), 2) < small_level
    assert np.linalg.norm(stored_difference(halves, small), 2) > level_written_out(halves, halves, 2.0**-11, 2.0**-11)


@pytest.mark.parametrize("dtype", [np.float32, BF16, np.float16])
@pytest.mark.parametrize("rank", [1, 4])
def test_a_planted_low_rank_update_has_its_rank_in_the_stored_format(dtype, rank):
    rng = np.random.default_rng(rank)
    rows, cols = 192, 128
    base = weights(rng, (rows, cols)).astype(dtype)
    update = 0.3 * rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols)) / np.sqrt(rows * cols) * 8
    tuned = (np.asarray(base, np.float64) + update).astype(dtype)
    name = safetensors_dtype(dtype)
    row = dense_delta(tuned, base, name, name, SETTINGS, "cpu")
    sigma = np.linalg.svd(stored_difference(tuned, base), compute_uv=False)
    assert sigma[rank - 1] > 3 * row["rounding_level"] > 3 * sigma[rank]  # the planted values, the noise
    assert np.count_nonzero(sigma > 1e-12 * sigma[0]) == cols  # the stored difference itself is full rank
    assert row["delta_numerical_rank"] == rank and row["status"] == pair_layout.DELTA_NO_TAIL
    assert str(rank) in row["note"] and np.isnan(row["delta_alpha"]) and np.isnan(row["delta_alpha_hill"])
    assert row["delta_spectral_norm"] == pytest.approx(sigma[0], rel=1e-10)
    assert row["delta_frobenius"] == pytest.approx(np.linalg.norm(sigma), rel=1e-10)
    assert row["relative_change"] == pytest.approx(np.linalg.norm(sigma) / np.linalg.norm(np.asarray(base, float)),
                                                   rel=1e-10)
    kept = sigma[:rank]
    assert row["delta_effective_rank"] == pytest.approx(mx.effective_rank(kept), rel=1e-8)
    assert row["delta_stable_rank"] == pytest.approx(np.sum(kept**2) / kept[0] ** 2, rel=1e-8)
    assert row["delta_energy_rank_99"] == mx.energy_rank(kept, 0.99) <= rank


def test_a_full_rank_update_gets_tail_fits_that_do_not_depend_on_its_scale():
    rng = np.random.default_rng(3)
    base = weights(rng, (150, 120))
    update = rng.standard_normal((150, 120)) @ np.diag(np.arange(1, 121) ** -0.8) @ scipy.linalg.qr(
        rng.standard_normal((120, 120)))[0]
    rows = {scale: dense_delta(base + scale * update, base, "F64", "F64", SETTINGS, "cpu") for scale in (1.0, 1e-4)}
    sigma = np.linalg.svd(update, compute_uv=False)
    assert sigma[-1] ** 2 > ht.EIGENVALUE_FLOOR  # at scale 1 the fits see every eigenvalue unfloored
    fit = ht.powerlaw_fit(sigma**2)
    hill = ht.alpha_hill(sigma**2, ht.hill_k(sigma.size, SETTINGS["hill_fraction"]))
    for row in rows.values():  # at 1e-4, sigma^2 < 1e-5 everywhere: an absolute floor would leave no fit
        assert row["status"] == pair_layout.DELTA_CHANGED and row["delta_numerical_rank"] == 120
        assert row["delta_alpha"] == pytest.approx(fit.alpha, rel=1e-6)
        assert row["delta_alpha_hill"] == pytest.approx(hill, rel=1e-6)
        assert row["delta_effective_rank"] == pytest.approx(mx.effective_rank(sigma), rel=1e-6)


def test_a_change_below_bf16_rounding_is_flagged_and_the_same_change_in_fp32_is_not():
    rng = np.random.default_rng(4)
    exact = weights(rng, (256, 160))
    base = exact.astype(BF16)
    tiny = 0.3 * 2.0**-8 * np.abs(np.asarray(base, np.float64)) * rng.standard_normal(exact.shape)
    tuned = (np.asarray(base, np.float64) + tiny).astype(BF16)
    moved = np.count_nonzero(np.asarray(tuned, np.float64) != np.asarray(base, np.float64))
    assert 0 < moved < tuned.size  # some entries moved by an ulp: not bit-identical
    row = dense_delta(tuned, base, "BF16", "BF16", SETTINGS, "cpu")
    spectral = np.linalg.norm(stored_difference(tuned, base), 2)
    assert spectral <= level_written_out(tuned, base, 2.0**-8, 2.0**-8)
    assert row["status"] == pair_layout.DELTA_BELOW_ROUNDING and "rounding" in row["note"]
    assert row["delta_numerical_rank"] == 0 and row["delta_energy_rank_90"] == 0 and np.isnan(row["delta_alpha"])
    assert row["delta_spectral_norm"] == pytest.approx(spectral, rel=1e-10)
    fine = dense_delta((np.asarray(base, np.float64) + tiny).astype(np.float32), base.astype(np.float32), "F32", "F32",
                       SETTINGS, "cpu")
    assert fine["status"] == pair_layout.DELTA_CHANGED and fine["delta_numerical_rank"] == 160


# --- an adapter's update from its factors ---------------------------------------------------------


@pytest.mark.parametrize("scale", [2.0, -0.5])
def test_low_rank_factors_give_what_the_dense_product_gives(scale):
    rng = np.random.default_rng(5)
    rank, rows, cols = 5, 90, 70
    B = (0.1 * rng.standard_normal((rows, rank))).astype(np.float32)
    A = (0.1 * rng.standard_normal((rank, cols))).astype(np.float32)
    w_base = weights(rng, (rows, cols))
    dense = scale * (B.astype(np.float64) @ A.astype(np.float64))
    sigma = np.linalg.svd(dense, compute_uv=False)
    assert np.allclose(update_singular_values(B, A, scale), sigma[:rank], rtol=1e-12, atol=0)
    assert update_dot(B, A, scale, w_base) == pytest.approx(np.sum(dense * w_base), rel=1e-12)
    level = factor_rounding_level(B, A, scale)
    assert sigma[rank] < 1e-12 * sigma[0] and sigma[rank - 1] > 100 * level > 0
    # the level bounds what storing the factors in bf16 does to the product, and is not far above it
    exact_b, exact_a = 0.1 * rng.standard_normal((rows, rank)), 0.1 * rng.standard_normal((rank, cols))
    short_b, short_a = exact_b.astype(BF16), exact_a.astype(BF16)
    moved = np.linalg.norm(scale * (np.asarray(short_b, float) @ np.asarray(short_a, float) - exact_b @ exact_a), 2)
    bf16_level = factor_rounding_level(short_b, short_a, scale)
    assert bf16_level / 20 < moved < bf16_level
    wide = (np.asarray(short_b, np.float64), np.asarray(short_a, np.float64))  # as a reader that upcasts hands them
    assert factor_rounding_level(*wide, scale, "BF16") == pytest.approx(bf16_level, rel=1e-12)


def test_an_adapter_table_matches_the_dense_update_in_either_layout(tmp_path):
    rng = np.random.default_rng(6)
    rank, out, into, scale = 4, 80, 48, 8 / 4
    q = weights(rng, (out, into)).astype(np.float32)
    conv = weights(rng, (into, out)).astype(np.float32)  # GPT-2 Conv1D: stored in x out
    unit = tmp_path / "base.parquet"
    write_unit([("q.weight", "F32", q), ("c_attn.weight", "F32", conv), ("v.weight", "F32", q), ("k.weight", "F32", q)],
               unit)
    inventory = [inventory_row("q.weight", q), inventory_row("c_attn.weight", conv, layout="in_out"),
                 inventory_row("v.weight", q), inventory_row("k.weight", q)]
    factors = {"q.weight": (rng.standard_normal((out, rank)), rng.standard_normal((rank, into))),
               "c_attn.weight": (rng.standard_normal((into, rank)), rng.standard_normal((rank, out))),
               "v.weight": (np.zeros((out, rank)), rng.standard_normal((rank, into)))}  # LoRA's B = 0 start
    updates = {name: ((0.05 * B).astype(np.float32), (0.05 * A).astype(np.float32), scale)
               for name, (B, A) in factors.items()}
    Factors = namedtuple("Factors", "B A scale dtype")  # a reader that upcasts and keeps the stored format
    updates["k.weight"] = Factors(*(np.asarray(f, np.float64) for f in updates["q.weight"][:2]), scale, "BF16")
    table = adapter_delta_table("adapter", "base", "layer_000", updates=updates, base_tensors=unit,
                                base_inventory=inventory, settings=SETTINGS)
    frame = read_back(table, tmp_path / "deltas.parquet", pair_layout.DELTA_COLUMNS).set_index("param_name")
    for name, stored in (("q.weight", q), ("c_attn.weight", conv)):
        B, A, _ = updates[name]
        dw = scale * (B.astype(np.float64) @ A.astype(np.float64))
        base, tuned = stored.astype(np.float64), stored + dw
        if name == "c_attn.weight":  # the matrix is out x in: both transposed
            base, tuned, dw = base.T, tuned.T, dw.T
        row = frame.loc[name]
        assert (row["rows"], row["cols"]) == (out, into) and row["adapter_rank"] == rank and row["dtype"] == "F32"
        assert row["delta_numerical_rank"] == rank and row["adapter_scale"] == scale
        assert row["delta_frobenius"] == pytest.approx(np.linalg.norm(dw), rel=1e-10)
        assert row["delta_spectral_norm"] == pytest.approx(np.linalg.norm(dw, 2), rel=1e-10)
        cosine = np.sum(tuned * base) / (np.linalg.norm(tuned) * np.linalg.norm(base))
        assert row["weight_cosine"] == pytest.approx(cosine, rel=1e-12)
        assert row["angle_degrees"] == pytest.approx(np.degrees(np.arccos(cosine)), rel=1e-6)
        expected = reference_subspaces(tuned, base, SETTINGS["subspace_k"])
        for column, value in expected.items():
            assert row[column] == pytest.approx(value, abs=1e-9), (name, column)
    stored_format = frame.loc["k.weight"]
    assert stored_format["dtype"] == "BF16"
    assert stored_format["delta_frobenius"] == pytest.approx(frame.loc["q.weight", "delta_frobenius"], rel=1e-14)
    assert stored_format["rounding_level"] == pytest.approx(
        factor_rounding_level(*updates["q.weight"][:2], scale, "BF16"), rel=1e-12)
    assert stored_format["rounding_level"] > 1000 * frame.loc["q.weight", "rounding_level"]  # 2^-8 against 2^-24
    zero = frame.loc["v.weight"]
    assert zero["status"] == pair_layout.DELTA_UNCHANGED and zero["delta_frobenius"] == 0 and zero["weight_cosine"] == 1


# --- distances ------------------------------------------------------------------------------------


def reference_subspaces(a, b, k):
    """Principal angles of the top-k singular subspaces by numpy's SVD and scipy.linalg.subspace_angles."""
    out = {}
    ua, _, vta = np.linalg.svd(a)
    ub, _, vtb = np.linalg.svd(b)
    for side, (x, y) in {"left": (ua[:, :k], ub[:, :k]), "right": (vta[:k].T, vtb[:k].T)}.items():
        cosines = np.cos(scipy.linalg.subspace_angles(x, y))
        out[f"subspace_overlap_{side}"] = np.mean(cosines**2)
        out[f"min_principal_cosine_{side}"] = cosines.min()
    return out


def planted_spectrum(rng, shape, decay=0.7):
    """A matrix with well separated singular values (so that every top-k subspace is well defined)."""
    n = min(shape)
    left = scipy.linalg.qr(rng.standard_normal((shape[0], n)), mode="economic")[0]
    right = scipy.linalg.qr(rng.standard_normal((shape[1], n)), mode="economic")[0]
    return left @ np.diag(decay ** np.arange(n) + 0.01) @ right.T


@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (600, 530)])
def test_top_singular_vectors_are_numpys(shape):
    matrix = planted_spectrum(np.random.default_rng(7), shape)
    u, sigma, v = top_singular_vectors(matrix, 6)
    ref_u, ref_sigma, ref_vt = np.linalg.svd(matrix)
    assert np.allclose(sigma, ref_sigma[:6], rtol=1e-10)
    assert np.allclose(np.abs(u.T @ ref_u[:, :6]), np.eye(6), atol=1e-8)
    assert np.allclose(np.abs(v.T @ ref_vt[:6].T), np.eye(6), atol=1e-8)


def test_distances_of_a_matrix_to_itself_a_scaled_and_a_rotated_copy(tmp_path):
    rng = np.random.default_rng(8)
    w = planted_spectrum(rng, (64, 48), decay=0.8)
    skew = rng.standard_normal((64, 64))
    rotation = scipy.linalg.expm(0.05 * (skew - skew.T))  # a rotation of the column space
    copies = {"same.weight": w, "double.weight": 2 * w, "rotated.weight": rotation @ w}
    mine, theirs = tmp_path / "model.parquet", tmp_path / "other.parquet"
    write_unit([(name, "F64", array) for name, array in copies.items()], mine)
    write_unit([(name, "F64", w) for name in copies], theirs)
    inventory = [inventory_row(name, array, dtype="F64") for name, array in copies.items()]
    table = unit_distance_table("model", "other", "layer_000", tensors=mine, other_tensors=theirs, inventory=inventory,
                                other_inventory=inventory, settings=SETTINGS)
    frame = read_back(table, tmp_path / "distances.parquet", pair_layout.DISTANCE_COLUMNS).set_index("param_name")
    same = frame.loc["same.weight"]
    assert same["status"] == pair_layout.DELTA_UNCHANGED and same["backend"] == "none"
    assert (same["frobenius_distance"], same["spectral_distance"], same["angle_degrees"]) == (0, 0, 0)
    assert same["weight_cosine"] == 1 and same["subspace_overlap_left"] == 1 and same["min_principal_cosine_right"] == 1
    double = frame.loc["double.weight"]
    assert double["frobenius_distance"] == pytest.approx(np.linalg.norm(w), rel=1e-12)
    assert double["spectral_distance"] == pytest.approx(np.linalg.norm(w, 2), rel=1e-12)
    assert double["relative_distance"] == pytest.approx(1.0, rel=1e-12)
    assert double["weight_cosine"] == pytest.approx(1.0, abs=1e-14) and double["angle_degrees"] < 1e-5
    for column in ("subspace_overlap_left", "subspace_overlap_right", "min_principal_cosine_left",
                   "min_principal_cosine_right"):
        assert double[column] == pytest.approx(1.0, abs=1e-10)
    turned = frame.loc["rotated.weight"]
    rotated = rotation @ w
    assert turned["frobenius_distance"] == pytest.approx(np.linalg.norm(rotated - w), rel=1e-10)
    assert turned["spectral_distance"] == pytest.approx(np.linalg.norm(rotated - w, 2), rel=1e-10)
    cosine = np.sum(rotated * w) / np.linalg.norm(w) ** 2
    assert turned["weight_cosine"] == pytest.approx(cosine, rel=1e-12)
    assert turned["angle_degrees"] == pytest.approx(np.degrees(np.arccos(cosine)), rel=1e-6)
    expected = reference_subspaces(rotated, w, SETTINGS["subspace_k"])
    assert expected["subspace_overlap_left"] < 0.999 and expected["subspace_overlap_right"] == pytest.approx(1.0)
    for column, value in expected.items():
        assert turned[column] == pytest.approx(value, abs=1e-9), column
    assert (frame["subspace_k"] == SETTINGS["subspace_k"]).all()


# --- the per-unit tables --------------------------------------------------------------------------


def inventory_row(name, array, dtype="F32", layout="out_in", block_type="q_proj", layer=0):
    return {"param_name": name, "unit": "layer_000", "layer_index": layer, "block_type": block_type,
            "shape": list(array.shape), "dtype": dtype, "source_dtype": dtype, "layout": layout}


def read_back(table, path, columns):
    """Write with io.tables.write_table, read back: exactly `columns`, each typed per layout.column_type."""
    assert table.column_names == columns
    write_table(table, path)
    schema = pq.read_schema(path)
    assert [field.name for field in schema] == columns
    for field in schema:
        assert field.type == ARROW_TYPES[pair_layout.column_type(field.name)], field.name
    frame = pd.read_parquet(path)
    for column in columns:
        kind = pair_layout.column_type(column)
        if kind == "str":
            assert pd.api.types.is_string_dtype(frame[column]) or frame[column].dtype == object, column
        else:
            assert frame[column].dtype == kind, (column, frame[column].dtype)
    return frame


def test_the_delta_table_pairs_every_matrix_and_types_every_column(tmp_path):
    rng = np.random.default_rng(9)
    q, k = weights(rng, (48, 32)), weights(rng, (16, 32))
    experts = weights(rng, (3 * 40, 32)).reshape(3, 40, 32)
    tuned_experts = experts.copy()
    tuned_experts[1] += 0.01 * np.outer(rng.standard_normal(40), rng.standard_normal(32))
    update = 0.02 * rng.standard_normal((48, 2)) @ rng.standard_normal((2, 32))
    model = {"q.weight": (q + update).astype(np.float32), "k.weight": k.astype(BF16),
             "experts.weight": tuned_experts.astype(np.float32), "norm.weight": np.ones(32, np.float32),
             "extra.weight": k.astype(np.float32)}
    base = {"q.weight": q.astype(np.float32), "k.weight": k.astype(BF16), "experts.weight": experts.astype(np.float32),
            "norm.weight": np.ones(32, np.float32)}
    paths = {}
    for name, tensors in (("model", model), ("base", base)):
        paths[name] = tmp_path / f"{name}.parquet"
        write_unit([(n, safetensors_dtype(a.dtype), a) for n, a in tensors.items()], paths[name])

    def inventory(tensors):
        types = {3: "moe_expert", 1: "norm"}
        return [inventory_row(n, a, dtype=safetensors_dtype(a.dtype), block_type=types.get(a.ndim, "q_proj"))
                for n, a in tensors.items()]

    table = unit_delta_table("tuned", "base", "layer_000", tensors=paths["model"], base_tensors=paths["base"],
                             inventory=inventory(model), base_inventory=inventory(base), settings=SETTINGS,
                             device="cuda:2")
    frame = read_back(table, tmp_path / "deltas.parquet", pair_layout.DELTA_COLUMNS).set_index("matrix")
    assert sorted(frame.index) == sorted(["q.weight", "k.weight", "extra.weight", "experts.weight[0]",
                                          "experts.weight[1]", "experts.weight[2]"])  # no row for the 1-D norm
    assert (frame["device"] == "cuda:2").all() and (frame["model"] == "tuned").all() and (frame["base"] == "base").all()
    assert frame.loc["q.weight", "delta_numerical_rank"] == 2 and frame.loc["q.weight", "backend"] == "cpu"
    assert frame.loc["experts.weight[1]", "delta_numerical_rank"] == 1 and frame.loc["experts.weight[1]", "expert"] == 1
    for name in ("k.weight", "experts.weight[0]", "experts.weight[2]"):
        assert frame.loc[name, "status"] == pair_layout.DELTA_UNCHANGED and frame.loc[name, "backend"] == "none"
        assert frame.loc[name, "delta_numerical_rank"] == 0 and frame.loc[name, "frobenius_distance"] == 0
    assert frame.loc["k.weight", "dtype"] == "BF16" and frame.loc["k.weight", "base_dtype"] == "BF16"
    extra = frame.loc["extra.weight"]
    assert extra["status"] == pair_layout.MISSING_IN_OTHER and pd.isna(extra["base_dtype"])
    assert np.isnan(extra["delta_frobenius"]) and pd.isna(extra["delta_numerical_rank"])
    dw = model["q.weight"].astype(np.float64) - base["q.weight"]
    assert frame.loc["q.weight", "frobenius_distance"] == frame.loc["q.weight", "delta_frobenius"]
    assert frame.loc["q.weight", "delta_frobenius"] == pytest.approx(np.linalg.norm(dw), rel=1e-12)
    assert pd.isna(frame.loc["q.weight", "adapter_rank"]) and frame.loc["q.weight", "rows"] == 48

    empty = unit_delta_table("tuned", "base", "other", tensors=paths["model"], base_tensors=paths["base"],
                             inventory=[r for r in inventory(model) if r["param_name"] == "norm.weight"],
                             base_inventory=inventory(base), settings=SETTINGS)
    assert read_back(empty, tmp_path / "empty.parquet", pair_layout.DELTA_COLUMNS).empty


def test_an_unchanged_matrix_is_recognised_without_a_decomposition(tmp_path):
    rng = np.random.default_rng(10)
    w = weights(rng, (900, 700)).astype(np.float32)
    changed = (w + 0.01 * rng.standard_normal(w.shape)).astype(np.float32)
    mine, base = tmp_path / "model.parquet", tmp_path / "base.parquet"
    write_unit([("same.weight", "F32", w), ("moved.weight", "F32", changed)], mine)
    write_unit([("same.weight", "F32", w), ("moved.weight", "F32", w)], base)
    inventory = [inventory_row("same.weight", w), inventory_row("moved.weight", w)]
    frame = unit_delta_table("m", "b", "layer_000", tensors=mine, base_tensors=base, inventory=inventory,
                             base_inventory=inventory, settings=SETTINGS).to_pandas().set_index("param_name")
    same, moved = frame.loc["same.weight"], frame.loc["moved.weight"]
    assert same["status"] == pair_layout.DELTA_UNCHANGED and same["backend"] == "none"
    # an SVD of dW and the subspaces of both 900 x 700 matrices ran for the changed twin only
    assert same["seconds"] < moved["seconds"] / 5
    assert same["delta_spectral_norm"] == 0 and same["delta_effective_rank"] == 0 and np.isnan(same["delta_alpha"])
    assert same["rounding_level"] == pytest.approx(level_written_out(w, w, 2.0**-24, 2.0**-24), rel=1e-12)
    assert same["relative_change"] == 0 and same["angle_degrees"] == 0 and same["subspace_k"] == SETTINGS["subspace_k"]
    assert moved["status"] == pair_layout.DELTA_CHANGED and moved["delta_numerical_rank"] == 700


def test_the_torch_path_gives_the_lapack_numbers(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    w = weights(rng, (60, 40)).astype(np.float32)
    tuned = (w + 0.05 * rng.standard_normal((60, 3)) @ rng.standard_normal((3, 40))).astype(np.float32)
    mine, base = tmp_path / "model.parquet", tmp_path / "base.parquet"
    write_unit([("q.weight", "F32", tuned), ("k.weight", "BF16", tuned.astype(BF16))], mine)
    write_unit([("q.weight", "F32", w), ("k.weight", "BF16", w.astype(BF16))], base)
    inventory = [inventory_row("q.weight", w), inventory_row("k.weight", w, dtype="BF16")]
    args = dict(tensors=mine, base_tensors=base, inventory=inventory, base_inventory=inventory, settings=SETTINGS)
    lapack = unit_delta_table("m", "b", "layer_000", **args).to_pandas()
    torch = unit_delta_table("m", "b", "layer_000", backend="torch-cpu", **args).to_pandas()
    assert (torch["backend"] == "torch-cpu").all() and (lapack["backend"] == "cpu").all()
    assert list(torch["delta_numerical_rank"]) == list(lapack["delta_numerical_rank"]) == [3, 3]
    for column in ("delta_spectral_norm", "delta_effective_rank", "delta_stable_rank", "spectral_distance"):
        assert np.allclose(torch[column], lapack[column], rtol=1e-10), column
    distances = unit_distance_table("m", "b", "layer_000", tensors=mine, other_tensors=base, inventory=inventory,
                                    other_inventory=inventory, settings=SETTINGS, backend="torch-cpu").to_pandas()
    assert np.allclose(distances["spectral_distance"], lapack["spectral_distance"], rtol=1e-10)


def test_a_distance_table_names_missing_and_reshaped_matrices(tmp_path):
    rng = np.random.default_rng(12)
    w, wide = weights(rng, (24, 16)), weights(rng, (16, 24))
    mine, theirs = tmp_path / "model.parquet", tmp_path / "other.parquet"
    write_unit([("a.weight", "F32", w.astype(np.float32)), ("b.weight", "F32", w.astype(np.float32))], mine)
    write_unit([("a.weight", "F32", wide.astype(np.float32))], theirs)
    table = unit_distance_table("x", "y", "layer_000", tensors=mine, other_tensors=theirs,
                                inventory=[inventory_row("a.weight", w), inventory_row("b.weight", w)],
                                other_inventory=[inventory_row("a.weight", wide)], settings=SETTINGS)
    frame = read_back(table, tmp_path / "d.parquet", pair_layout.DISTANCE_COLUMNS).set_index("param_name")
    assert frame.loc["a.weight", "status"] == pair_layout.SHAPES_DIFFER and "24x16" in frame.loc["a.weight", "note"]
    assert frame.loc["b.weight", "status"] == pair_layout.MISSING_IN_OTHER
    assert pd.isna(frame.loc["b.weight", "other_dtype"])
    assert frame[["frobenius_distance", "weight_cosine"]].isna().all().all() and frame["subspace_k"].isna().all()
    empty = unit_distance_table("x", "y", "other", tensors=mine, other_tensors=theirs, inventory=[],
                                other_inventory=[], settings=SETTINGS)
    assert read_back(empty, tmp_path / "e.parquet", pair_layout.DISTANCE_COLUMNS).empty
