"""Issue #11, nothing wrong passes as a number: crafted safetensors headers, tensors that hold
no weight matrix, local checkpoints that change or break, temporary folders of killed fetches.
Issue #26: a checkpoint edited in place with its mtime set back, config.json against the stored
tensors, errors that name the user's config.json."""

import hashlib
import json
import os
import struct
import time

import numpy as np
import pandas as pd
import pytest
from safetensors import SafetensorError, safe_open

from blockscope import read_unit
from blockscope.analysis.anatomy import analyse_unit, precision_sweep
from blockscope.analysis.matrices import matrices_of
from blockscope.checkpoint.inventory import build_inventory, config_file, model_dims, read_config
from blockscope.checkpoint.sources import fetch, local_fingerprint
from blockscope.errors import BlockscopeError
from blockscope.io.safetensors_file import read_header, tensor_view
from blockscope.io.tensors import extract_unit, write_unit
from blockscope.layout import METRICS_COLUMNS, PRECISION_COLUMNS, STATISTICS_ONLY

from conftest import TINY_GPT2, TINY_LLAMA, save_tiny


def write_safetensors(path, header, data: bytes):
    """A file in the safetensors layout with any header at all (bytes, or JSON of any value)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def f32(shape, begin):
    """A well-formed F32 entry of `shape` starting at data byte `begin`."""
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + 4 * int(np.prod(shape))]}


def library_rejects(path) -> bool:
    try:
        with safe_open(str(path), "np") as fh:
            for key in fh.keys():
                fh.get_tensor(key)
    except SafetensorError:
        return True
    return False


NORM_AND_WEIGHT = {"norm.weight": f32([64], 0), "w.weight": f32([64, 64], 256)}
DATA = bytes(256 + 64 * 64 * 4)
# (header, data, what the error says after "<file>: ", the safetensors library rejects it too)
CRAFTED = {
    "a JSON list": ([NORM_AND_WEIGHT], DATA,
                    "corrupt safetensors header (a JSON list, not an object of tensors)", True),
    "an entry that is a list": ({"w.weight": [0, 16]}, DATA,
                                "corrupt safetensors header: tensor 'w.weight' is a JSON list, not an object "
                                "with dtype, shape and data_offsets", True),
    "no data_offsets": ({"w.weight": {"dtype": "F32", "shape": [64]}}, DATA,
                        "corrupt safetensors header: tensor 'w.weight' lacks data_offsets", True),
    "a dtype that is a number": ({"w.weight": {**f32([64], 0), "dtype": 7}}, DATA,
                                 "corrupt safetensors header: tensor 'w.weight' has dtype 7, not a string", True),
    "an unknown dtype": ({"w.weight": {**f32([64], 0), "dtype": "Q4_K"}}, DATA,
                         "corrupt safetensors header: tensor 'w.weight' has the unknown dtype 'Q4_K'", True),
    "a negative dim": ({"w.weight": {**f32([64], 0), "shape": [-64]}}, DATA,
                       "corrupt safetensors header: tensor 'w.weight' has shape [-64], not a list of "
                       "non-negative integers", True),
    "a fractional dim": ({"w.weight": {**f32([64], 0), "shape": [8, 8.0]}}, DATA,
                         "corrupt safetensors header: tensor 'w.weight' has shape [8, 8.0], not a list of "
                         "non-negative integers", True),
    "a boolean dim": ({"w.weight": {**f32([64], 0), "shape": [True, 64]}}, DATA,
                      "corrupt safetensors header: tensor 'w.weight' has shape [True, 64], not a list of "
                      "non-negative integers", True),
    "a negative offset": ({"w.weight": {**f32([64], 0), "data_offsets": [-256, 0]}}, DATA,
                          "corrupt safetensors header: tensor 'w.weight' has data_offsets [-256, 0], not two "
                          "non-negative integers", True),
    "three offsets": ({"w.weight": {**f32([64], 0), "data_offsets": [0, 256, 512]}}, DATA,
                      "corrupt safetensors header: tensor 'w.weight' has data_offsets [0, 256, 512], not two "
                      "non-negative integers", True),
    "an end before the begin": ({"w.weight": {**f32([64], 0), "data_offsets": [256, 0]}}, DATA,
                                "corrupt safetensors header: tensor 'w.weight' has data_offsets [256, 0] that "
                                "end before they begin", True),
    "a range past the data": ({"norm.weight": f32([64], 0), "w.weight": f32([64, 64], 256)}, DATA[:1000],
                              "truncated safetensors file: tensor 'w.weight' ends at byte {end} but the file "
                              "has {size}", True),
    # the bug of #11: a 256-byte norm read as a 64 x 64 matrix made of its neighbour's bytes
    "a shape larger than its bytes": ({"norm.weight": {**f32([64], 0), "shape": [64, 64]},
                                       "w.weight": f32([64, 64], 256)}, DATA,
                                      "corrupt safetensors header: tensor 'norm.weight' claims shape [64, 64] of "
                                      "F32 (16384 bytes) but its data_offsets span 256 bytes", True),
    "overlapping tensors": ({"norm.weight": {**f32([64, 64], 0)}, "w.weight": f32([64, 64], 256)}, DATA,
                            "corrupt safetensors header: tensors 'norm.weight' and 'w.weight' overlap (data bytes "
                            "256 to 16384 belong to both)", True),
    "metadata that is not strings": ({"__metadata__": {"format": 1}, **NORM_AND_WEIGHT}, DATA,
                                     "corrupt safetensors header (__metadata__ is not a map of strings)", True),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_headers_fail_before_any_byte_is_read(tmp_path, case):
    header, data, what, rejected = CRAFTED[case]
    path = write_safetensors(tmp_path / "model.safetensors", header, data)
    raw = json.dumps(header).encode()
    what = what.format(end=8 + len(raw) + 256 + 16384, size=8 + len(raw) + len(data))
    with pytest.raises(BlockscopeError) as info:
        read_header(path, model="crafted")
    assert str(info.value) == f"[crafted] {path}: {what}. Fix: replace or repair {path}."
    assert library_rejects(path) == rejected


def test_the_well_formed_neighbour_file_passes_both_readers(tmp_path):
    path = write_safetensors(tmp_path / "model.safetensors", NORM_AND_WEIGHT, DATA)
    infos = read_header(path)
    assert {n: i.shape for n, i in infos.items()} == {"norm.weight": (64,), "w.weight": (64, 64)}
    assert not library_rejects(path)


def test_a_format_dtype_blockscope_cannot_read_is_named_not_called_corrupt(tmp_path):
    path = write_safetensors(tmp_path / "model.safetensors",
                             {"ids": {"dtype": "U16", "shape": [4], "data_offsets": [0, 8]}}, bytes(8))
    assert not library_rejects(path)  # a valid file...
    with pytest.raises(BlockscopeError) as info:
        read_header(path, model="m")
    assert str(info.value) == (f"[m] {path}: tensor 'ids' is stored as U16, which blockscope cannot read (it reads "
                               "F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL). "
                               "Fix: convert the file's U16 tensors to one of those.")


# --- tensors that hold no weight matrix --------------------------------------------------------

def _unit(tmp_path, tensors: dict, block_types: dict, layouts=None):
    """A unit file and its inventory rows; tensors: name -> (safetensors dtype, array)."""
    target = tmp_path / "unit.parquet"
    write_unit(((n, d, a) for n, (d, a) in tensors.items()), target)
    inventory = pd.DataFrame({
        "param_name": list(tensors), "unit": "layer_000", "layer_index": 0,
        "block_type": [block_types[n] for n in tensors], "shape": [list(a.shape) for _, a in tensors.values()],
        "dtype": [d for d, _ in tensors.values()], "source_dtype": [d for d, _ in tensors.values()],
        "layout": [(layouts or {}).get(n, "out_in") for n in tensors]})
    return target, inventory


REFUSED = {
    "position_ids": ("I64", np.arange(16, dtype=np.int64).reshape(1, 16), "embedding",
                     "integer tensor (I64): not a weight matrix", (1, 16)),
    "attn.mask": ("BOOL", np.tril(np.ones((8, 8), bool)), "other",
                  "bool tensor (BOOL): not a weight matrix", (8, 8)),
    "qweight": ("U8", np.zeros((16, 4), np.uint8), "q_proj", "integer tensor (U8): not a weight matrix", (4, 16)),
    "attn.c_attn.weight": ("F32", np.ones((2, 8, 4), np.float32), "qkv_fused",
                           "3-D tensor (2x8x4) that is not an expert stack: not analysed", (None, None)),
    "attn.bias": ("F32", np.ones((1, 1, 8, 8), np.float32), "other", "4-D tensor (1x1x8x8): not analysed",
                  (None, None)),
    "experts.down_proj": ("I32", np.zeros((2, 8, 4), np.int32), "moe_expert",
                          "integer tensor (I32): not a weight matrix", (None, None)),
}


def test_tensors_without_a_weight_matrix_get_a_status_row_and_a_log_line(tmp_path, caplog):
    rng = np.random.default_rng(0)
    tensors = {name: (dtype, array) for name, (dtype, array, *_) in REFUSED.items()}
    tensors["q_proj.weight"] = ("F32", rng.standard_normal((16, 8)).astype(np.float32))
    tensors["experts.up_proj"] = ("F32", rng.standard_normal((2, 8, 4)).astype(np.float32))
    tensors["norm.weight"] = ("F32", np.ones(8, np.float32))
    block_types = {**{n: v[2] for n, v in REFUSED.items()}, "q_proj.weight": "q_proj",
                   "experts.up_proj": "moe_expert", "norm.weight": "norm"}
    path, inventory = _unit(tmp_path, tensors, block_types, layouts={"qweight": "in_out"})
    with caplog.at_level("WARNING"):
        metrics, spectra = analyse_unit("m", "layer_000", path, inventory)
    assert list(metrics.columns) == METRICS_COLUMNS
    assert sorted(metrics["matrix"]) == sorted([*REFUSED, "q_proj.weight", "experts.up_proj[0]",
                                                "experts.up_proj[1]", "norm.weight"])
    assert metrics.set_index("matrix").loc["norm.weight", "status"] == STATISTICS_ONLY  # 1-D: statistics only
    rows = metrics.set_index("matrix")
    for name, (dtype, _, block_type, status, (r, c)) in REFUSED.items():
        row = rows.loc[name]
        assert row["status"] == status and row["warning"] == ""
        assert (row["model"], row["unit"], row["param_name"], row["layer_index"], row["block_type"]) == \
            ("m", "layer_000", name, 0, block_type)
        assert pd.isna(row["expert"]) and pd.isna(row["design_rank"])
        assert (row["dtype"], row["source_dtype"], row["compute_dtype"], row["backend"], row["seconds"]) == \
            (dtype, dtype, "float32", "none", 0.0)
        assert np.isnan(row[["alpha", "alpha_hill", "effective_rank", "spectral_norm", "mean", "sparsity"]]
                        .astype(float)).all()
        if r is None:  # rank 3 and more: no matrix, so no rows x cols
            assert pd.isna(row["rows"]) and pd.isna(row["cols"])
        else:
            assert (row["rows"], row["cols"]) == (r, c)
        assert f"{name:55s} {status}" in caplog.text
    assert rows.loc["qweight", ["rows", "cols"]].tolist() == [4, 16]  # in_out: out x in, as for a matrix
    analysed = rows.loc[["q_proj.weight", "experts.up_proj[0]", "experts.up_proj[1]"]]
    assert (analysed["backend"] == "cpu").all() and analysed["spectral_norm"].gt(0).all()
    assert set(spectra["matrix"]) == {"q_proj.weight", "experts.up_proj[0]", "experts.up_proj[1]"}

    sweep = precision_sweep("m", "layer_000", path, inventory, spectra, ["fp32", "bf16"])
    assert list(sweep.columns) == PRECISION_COLUMNS and len(sweep) == 2 * (len(metrics) - 1)  # not the 1-D row
    refused = sweep[sweep["matrix"].isin(list(REFUSED))].set_index(["matrix", "precision"])
    assert refused["alpha_hill"].isna().all() and (refused["k"] == 0).all()
    assert refused.loc[("attn.bias", "bf16"), "status"] == "4-D tensor (1x1x8x8): not analysed"


def test_matrices_of_refuses_what_it_cannot_split():
    stack = np.zeros((2, 3, 4), np.float32)
    assert [m.name for m in matrices_of("e", stack, block_type="moe_expert")] == ["e[0]", "e[1]"]
    assert list(matrices_of("n", np.ones(4, np.float32))) == []
    for array, block_type, why in [(stack, "qkv_fused", "3-D tensor (2x3x4) that is not an expert stack"),
                                   (np.zeros((1, 1, 2, 2), np.float32), "moe_expert", "4-D tensor (1x1x2x2)"),
                                   (np.zeros((2, 2), np.int64), "q_proj", "integer tensor (I64)")]:
        with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
            list(matrices_of("t", array, block_type=block_type))


# --- local checkpoints: errors name the user's files ------------------------------------------

@pytest.fixture
def local_checkpoint(tmp_path):
    """A user's checkpoint folder and its canonical form fetched through the local source."""
    user = tmp_path / "user ckpt"
    save_tiny("LlamaForCausalLM", TINY_LLAMA, user)
    canonical = tmp_path / "resources/models/mine"
    fetch("mine", {"source": "local", "path": str(user)}, canonical)
    return user, canonical


def test_a_broken_local_file_is_named_by_the_users_path(local_checkpoint):
    user, canonical = local_checkpoint
    weights = user / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(BlockscopeError) as info:
        build_inventory(canonical, model="mine")
    message = str(info.value)
    assert message.startswith(f"[mine] {weights}: truncated safetensors file: tensor ")
    assert message.endswith(f". Fix: replace or repair {weights}.")
    assert "resources/models" not in message


def test_a_missing_local_file_is_named_by_the_users_path(local_checkpoint):
    user, canonical = local_checkpoint
    (user / "model.safetensors").unlink()
    with pytest.raises(BlockscopeError) as info:
        build_inventory(canonical, model="mine")
    assert str(info.value) == (f"[mine] {user / 'model.safetensors'}: the safetensors file is missing. "
                               f"Fix: replace or repair {user / 'model.safetensors'}.")


def test_a_broken_local_config_is_named_by_the_users_path(local_checkpoint):
    user, canonical = local_checkpoint
    (canonical / "config.json").write_text("[1, 2]")  # the canonical copy of the user's config.json
    with pytest.raises(BlockscopeError) as info:
        build_inventory(canonical, model="mine")
    assert str(info.value) == (f"[mine] {user / 'config.json'}: config.json holds a JSON list, not an object. "
                               f"Fix: replace or repair {user / 'config.json'}.")


def test_a_broken_fetched_file_asks_for_a_fetch_again(tmp_path):
    canonical = tmp_path / "resources/models/tiny"
    fetch("tiny", {"source": "synthetic", "config": TINY_LLAMA, "seed": 0}, canonical)
    weights = canonical / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(BlockscopeError) as info:
        build_inventory(canonical, model="tiny")
    assert str(info.value).endswith(f". Fix: delete {canonical} and rerun the workflow to fetch it again.")


def test_extract_checks_the_file_against_the_inventory(local_checkpoint, tmp_path):
    user, canonical = local_checkpoint
    inventory = build_inventory(canonical, model="mine")
    rows = inventory[inventory["unit"] == "layer_000"]
    save_tiny("LlamaForCausalLM", {**TINY_LLAMA, "hidden_size": 32}, user)  # the user saves another model
    with pytest.raises(BlockscopeError) as info:
        extract_unit(canonical, rows, tmp_path / "unit.parquet", model="mine")
    message = str(info.value)
    assert message.startswith(f"[mine] {user / 'model.safetensors'}: tensor ")
    assert message.endswith(": the checkpoint changed since the inventory. Fix: delete "
                            "results/mine/inventory.parquet and rerun, so that the whole model is recomputed from "
                            "the current file.")
    assert not (tmp_path / "unit.parquet").exists()


# --- a checkpoint edited in place, its mtime set back (#26) -----------------------------------

def edit_in_place(path, offset: int, data: bytes):
    """Overwrite bytes of `path` at `offset` and set its atime and mtime back, as `touch -r` or
    rsync -t would: its size and mtime stay those the fetch saw."""
    before = path.stat()
    time.sleep(0.02)  # file times tick with the kernel's clock: let the edit's ctime differ from the save's
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def blake2b_64(data: bytes) -> str:
    """The inventory's checksum of a tensor of at most 64 KiB, computed here from its bytes."""
    return hashlib.blake2b(len(data).to_bytes(8, "little") + data, digest_size=8).hexdigest()


def test_an_edit_with_its_mtime_set_back_is_seen_and_never_mixed(local_checkpoint, tmp_path):
    user, canonical = local_checkpoint
    weights, name = user / "model.safetensors", "model.layers.0.self_attn.q_proj.weight"
    inventory = build_inventory(canonical, model="mine")
    fetched = json.loads((canonical / "source.json").read_text())["fingerprint"]
    assert local_fingerprint(user) == fetched
    info = read_header(weights)[name]
    stored = np.array(tensor_view(weights, info))
    edited = stored + np.float32(1)
    edit_in_place(weights, info.begin, edited.tobytes())
    # the DAG sees it: the fetch param (name, size, mtime, ctime) moves, so this model is fetched again
    assert local_fingerprint(user) != fetched
    # without that rerun (a run started before the edit, --rerun-triggers mtime), extraction refuses
    recorded = inventory.set_index("param_name").loc[name, "checksum"]
    assert recorded == blake2b_64(stored.tobytes())
    rows = inventory[inventory["unit"] == "layer_000"]
    with pytest.raises(BlockscopeError) as raised:
        extract_unit(canonical, rows, tmp_path / "layer_000.parquet", model="mine",
                     inventory="results/mine/inventory.parquet")
    assert str(raised.value) == (
        f"[mine] {weights}: tensor '{name}' does not hold the bytes the inventory recorded (checksum "
        f"{blake2b_64(edited.tobytes())}, recorded {recorded}): the checkpoint changed since the inventory. "
        "Fix: delete results/mine/inventory.parquet and rerun, so that the whole model is recomputed from the "
        "current file.")
    assert not (tmp_path / "layer_000.parquet").exists()  # nothing half-written, nothing mixed
    # a unit the edit did not touch extracts as before
    extract_unit(canonical, inventory[inventory["unit"] == "layer_001"], tmp_path / "layer_001.parquet", model="mine")
    # the fix: a new inventory, from which the unit holds the edited bytes
    fresh = build_inventory(canonical, model="mine")
    extract_unit(canonical, fresh[fresh["unit"] == "layer_000"], tmp_path / "layer_000.parquet", model="mine")
    assert np.array_equal(read_unit(tmp_path / "layer_000.parquet", names=[name])[name], edited)


def test_the_checksum_of_a_large_tensor_samples_it_end_to_end(tmp_path):
    """A tensor over 64 KiB: 32 blocks of 2 KiB from its first byte to its last; an edit of its
    first or last bytes, or of 1/31 of it anywhere, is refused."""
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((620, 600)).astype(np.float32)  # 1,488,000 bytes
    save_file({"model.layers.0.mlp.down_proj.weight": weight}, tmp_path / "model.safetensors")
    path, name = tmp_path / "model.safetensors", "model.layers.0.mlp.down_proj.weight"
    inventory = build_inventory(tmp_path, model="m")
    data, last = weight.tobytes(), weight.nbytes - 2048
    sampled = b"".join(data[i * last // 31:i * last // 31 + 2048] for i in range(32))
    assert inventory.loc[0, "checksum"] == hashlib.blake2b(weight.nbytes.to_bytes(8, "little") + sampled,
                                                           digest_size=8).hexdigest()
    begin = read_header(path)[name].begin
    for offset, size in [(0, 4), (weight.nbytes - 4, 4), (300 * 2400, 20 * 2400)]:  # 20 of 620 rows > 1/31
        edit_in_place(path, begin + offset, bytes(size))
        with pytest.raises(BlockscopeError, match="the checkpoint changed since the inventory"):
            extract_unit(tmp_path, inventory, tmp_path / "unit.parquet", model="m")
        edit_in_place(path, begin + offset, data[offset:offset + size])  # restored: extraction passes again
        extract_unit(tmp_path, inventory, tmp_path / "unit.parquet", model="m")
    assert np.array_equal(read_unit(tmp_path / "unit.parquet")[name], weight)


# --- config.json against the tensors as stored (#26) ------------------------------------------

def test_a_tied_config_with_a_stored_head_is_reported_and_the_tensors_win(tmp_path):
    from safetensors.numpy import load_file, save_file

    user = tmp_path / "user ckpt"
    save_tiny("LlamaForCausalLM", TINY_LLAMA, user)  # tie_word_embeddings false: its own lm_head.weight
    config = json.loads((user / "config.json").read_text())
    (user / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    canonical = tmp_path / "resources/models/mine"
    fetch("mine", {"source": "local", "path": str(user)}, canonical)
    inventory = build_inventory(canonical, model="mine")
    dims = model_dims(read_config(canonical, "mine"), inventory, model="mine", path=config_file(canonical))
    assert config_file(canonical) == user / "config.json"  # the user's file, not the copy
    assert dims["tied_embeddings"] is False and "lm_head" in dims["units"]
    assert dims["warnings"] == [
        "config.json sets tie_word_embeddings: true, but the checkpoint stores its own output head lm_head.weight "
        "(not a copy of the embedding model.embed_tokens.weight: transformers, too, keeps such a head untied); "
        "blockscope analyses the tensors as stored: the head is analysed as unit lm_head and model.json says "
        "tied_embeddings: false"]
    # a head saved as a copy of the embedding: the same bytes, by the checksums
    weights = load_file(user / "model.safetensors")
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].copy()
    save_file(weights, user / "model.safetensors")
    dims = model_dims(read_config(canonical), build_inventory(canonical), model="mine")
    assert dims["warnings"][0].startswith(
        "config.json sets tie_word_embeddings: true, but the checkpoint stores its own output head lm_head.weight "
        "(the same bytes as the embedding model.embed_tokens.weight, by the inventory's checksums); ")
    # config and tensors agree: no warning (an untied head; a tied GPT-2 stores no head)
    (canonical / "config.json").write_text(json.dumps(config))  # as fetch copies the user's
    assert model_dims(read_config(canonical), build_inventory(canonical))["warnings"] == []
    save_tiny("GPT2LMHeadModel", TINY_GPT2, tmp_path / "gpt2")
    gpt2 = model_dims(read_config(tmp_path / "gpt2"), build_inventory(tmp_path / "gpt2"))
    assert gpt2["warnings"] == [] and gpt2["tied_embeddings"] is True


def test_a_config_missing_a_dimension_names_the_users_config(local_checkpoint):
    user, canonical = local_checkpoint
    config = json.loads((canonical / "config.json").read_text())
    del config["num_hidden_layers"]
    (canonical / "config.json").write_text(json.dumps(config))  # the copy fetch made of the user's file
    with pytest.raises(BlockscopeError) as raised:
        model_dims(read_config(canonical, "mine"), build_inventory(canonical, model="mine"), model="mine",
                   path=config_file(canonical))
    assert str(raised.value) == (
        f"[mine] {user / 'config.json'}: config.json lacks layers (num_hidden_layers or n_layer or num_layers or "
        "n_layers). Fix: use the model's original transformers config.json.")


# --- a killed fetch leaves no temporary folder ------------------------------------------------

def test_fetch_removes_the_temporary_folder_of_a_killed_fetch(tmp_path, capsys):
    models = tmp_path / "resources/models"
    stale = models / ".tiny.k1ll3d_x.tmp"  # what atomic_dir leaves when the job is killed
    (stale / "half").mkdir(parents=True)
    (stale / "half/model.safetensors").write_bytes(b"partial")
    other = models / ".tiny.x.abcdefgh.tmp"  # model tiny.x's: not this fetch's to remove
    other.mkdir()
    fetch("tiny", {"source": "synthetic", "config": TINY_LLAMA, "seed": 0}, models / "tiny")
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in models.iterdir()) == [".tiny.x.abcdefgh.tmp", "tiny"]
    assert build_inventory(models / "tiny", model="tiny")["param_name"].size == 2 * 9 + 3
    log = capsys.readouterr().out
    assert f"[tiny] removed {stale}, the temporary folder of an earlier fetch that was killed" in log


# --- a local checkpoint that changes is fetched again ---------------------------------------

def test_local_fingerprint_follows_size_and_mtime(tmp_path):
    import os

    from blockscope.checkpoint.sources import local_fingerprint, source_fingerprint

    save_tiny("LlamaForCausalLM", TINY_LLAMA, tmp_path / "ckpt")
    first = local_fingerprint(tmp_path / "ckpt")
    assert len(first) == 16 and local_fingerprint(tmp_path / "ckpt") == first  # stable
    weights = tmp_path / "ckpt/model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = local_fingerprint(tmp_path / "ckpt")
    assert touched != first
    (tmp_path / "ckpt/notes.txt").write_text("not a checkpoint file")
    assert local_fingerprint(tmp_path / "ckpt") == touched  # only the files fetch takes count
    (tmp_path / "ckpt/tokenizer.json").write_text("{}")
    assert local_fingerprint(tmp_path / "ckpt") != touched
    assert local_fingerprint(tmp_path / "nowhere") == "missing"
    assert source_fingerprint({"source": "synthetic", "config": {}}) == ""
    assert source_fingerprint({"source": "local", "path": str(tmp_path / "ckpt")}) == \
        local_fingerprint(tmp_path / "ckpt")


@pytest.mark.slow
def test_a_changed_local_checkpoint_reruns_that_model_alone(tmp_path):
    import re

    from conftest import run_workflow

    user = tmp_path / "user ckpt"
    save_tiny("LlamaForCausalLM", TINY_LLAMA, user)
    config = {"models": {"mine": {"source": "local", "path": str(user)},
                         "tiny": {"source": "synthetic", "config": TINY_LLAMA, "seed": 0}},
              "device": "cpu", "headmerge": {"enabled": False}, "compress": {"enabled": False}}
    targets = [f"results/{m}/tensors/layer_000.parquet" for m in config["models"]]
    work = tmp_path / "work"
    run_workflow(work, config, *targets)

    def planned():
        text = run_workflow(work, config, *targets, "--dry-run").stdout
        jobs = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):\n(?:.*\n)*?\s+wildcards: model=([^,\n]+)", text, re.M)
        return set(jobs)

    assert planned() == set()  # the fingerprint is stable: nothing to do
    from safetensors.numpy import load_file, save_file

    from blockscope import read_unit
    from blockscope.checkpoint.sources import local_fingerprint

    name = "model.layers.0.self_attn.q_proj.weight"
    weights = load_file(user / "model.safetensors")
    weights[name] = weights[name] + 1  # the user retrains and saves over the same file
    save_file(weights, user / "model.safetensors", metadata={"format": "pt"})
    assert planned() == {("fetch", "mine"), ("inventory", "mine"), ("extract", "mine")}
    run_workflow(work, config, *targets)
    assert planned() == set()
    assert np.array_equal(read_unit(work / "results/mine/tensors/layer_000.parquet", names=[name])[name], weights[name])
    source = json.loads((work / "resources/models/mine/source.json").read_text())
    assert source["fingerprint"] == local_fingerprint(user)

    # #26: an edit in place with size and mtime kept is seen too (the fetch param holds the ctime)
    path = user / "model.safetensors"
    edited = weights[name] + 1
    edit_in_place(path, read_header(path)[name].begin, edited.tobytes())
    assert planned() == {("fetch", "mine"), ("inventory", "mine"), ("extract", "mine")}
    # a run that does not refetch (--rerun-triggers mtime) and re-extracts one unit refuses to mix
    (work / "results/mine/tensors/layer_000.parquet").unlink()
    failed = run_workflow(work, config, *targets, "--rerun-triggers", "mtime", check=False)
    error = (f"ERROR [mine] {path}: tensor '{name}' does not hold the bytes the inventory recorded (checksum "
             f"{blake2b_64(edited.tobytes())}, recorded {blake2b_64(weights[name].tobytes())}): the checkpoint "
             "changed since the inventory. Fix: delete results/mine/inventory.parquet and rerun, so that the whole "
             "model is recomputed from the current file.")
    assert failed.returncode != 0 and error in failed.stderr.splitlines()
    assert not (work / "results/mine/tensors/layer_000.parquet").exists()
    # the fix the line gives
    (work / "results/mine/inventory.parquet").unlink()
    run_workflow(work, config, *targets)
    assert planned() == set()
    assert np.array_equal(read_unit(work / "results/mine/tensors/layer_000.parquet", names=[name])[name], edited)


@pytest.mark.slow
def test_the_inventory_names_the_users_config_in_its_warnings_and_errors(tmp_path):
    """#26, in a real run: a tied config with a stored head gets a WARNING line in the inventory
    log and in model.json; a config that lacks a dimension fails with the user's config.json."""
    from conftest import run_workflow

    tied, broken = tmp_path / "tied ckpt", tmp_path / "broken ckpt"
    for folder, change in [(tied, {"tie_word_embeddings": True}), (broken, {"num_hidden_layers": None})]:
        save_tiny("LlamaForCausalLM", TINY_LLAMA, folder)
        config = {**json.loads((folder / "config.json").read_text()), **change}
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    config = {"models": {"tied": {"source": "local", "path": str(tied)},
                         "broken": {"source": "local", "path": str(broken)}},
              "device": "cpu", "headmerge": {"enabled": False}, "compress": {"enabled": False}}
    work = tmp_path / "work"
    run = run_workflow(work, config, "results/tied/model.json", "results/broken/model.json", check=False)
    assert run.returncode != 0
    assert (f"ERROR [broken] {broken / 'config.json'}: config.json lacks layers (num_hidden_layers or n_layer or "
            "num_layers or n_layers). Fix: use the model's original transformers config.json.") in run.stderr
    dims = json.loads((work / "results/tied/model.json").read_text())
    assert dims["tied_embeddings"] is False and len(dims["warnings"]) == 1
    log = (work / "logs/tied/inventory.log").read_text().splitlines()
    assert f"WARNING [tied] {tied / 'config.json'}: {dims['warnings'][0]}" in log
    assert dims["warnings"][0].startswith("config.json sets tie_word_embeddings: true, but the checkpoint stores "
                                          "its own output head lm_head.weight (not a copy of the embedding ")


def test_a_symlinked_file_outside_a_fetched_checkpoint_is_named_where_it_leads(tmp_path):
    (tmp_path / "store").mkdir()
    real = write_safetensors(tmp_path / "store/weights.safetensors", [1], b"")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/model.safetensors").symlink_to(real)
    with pytest.raises(BlockscopeError) as info:
        read_header(tmp_path / "ckpt/model.safetensors", model="m")
    assert str(info.value) == (f"[m] {real}: corrupt safetensors header (a JSON list, not an object of tensors). "
                               f"Fix: replace or repair {real}.")
