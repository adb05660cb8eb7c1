"""How to keep the base model's log-probabilities for KL: recompute, fp16 full, or top-k + tail samples.

For a few windows of the demo: the cost of each choice (seconds, bytes per prediction and for
the default CPU and GPU runs) and the error of blockscope's estimate (kl_to_base: the base's
top-k tokens exactly, the rest from tail samples) against the exact KL from full float32
log-probabilities, for real variants of the model: round-to-nearest symmetric int8 and int4
per output row of every linear weight; and fp16 full log-probabilities' own KL error. Peer: the
exact KL. Bias and spread over sampling seeds. No file is kept.

    .venv/bin/python benchmarks/base_eval_storage.py [checkpoint] [corpus] [seq_len] [windows]
"""

import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOP_KS = (16, 64)
TAIL_SAMPLES = (16, 32, 64)
SEEDS = 5
WIKITEXT_TEST_TOKENS = 300_000  # about WikiText-2 test with a 49k BPE vocab (the GPU default: all of it)


def rtn_variant(model, bits):
    """A copy with every 2-D linear weight rounded to symmetric `bits`-bit integers per output row."""
    import torch

    variant = copy.deepcopy(model)
    top = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for name, module in variant.named_modules():
            if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
                w = module.weight
                scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / top
                w.copy_((w / scale).round().clamp(-top - 1, top) * scale)
    return variant


def main():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blockscope.evaluation.corpus import corpus_text, raw_file_rows, windows
    from blockscope.evaluation.forward import next_token_logits
    from blockscope.evaluation.kl import kl_to_base, rest_mass, tail_samples

    checkpoint = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "resources/models/smollm2-135m")
    corpus = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "resources/corpus/wikitext-2-raw-test.txt")
    seq_len = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = np.asarray(tokenizer(corpus_text(raw_file_rows(corpus)))["input_ids"])
    batch = torch.as_tensor(windows(ids, seq_len, seq_len * count))
    vocab = model.config.vocab_size

    with torch.inference_mode():
        started = time.perf_counter()
        base_logp = torch.cat([torch.log_softmax(next_token_logits(model, w[None]), -1) for w in batch])
        forward = time.perf_counter() - started
        variants = {f"int{bits}": rtn_variant(model, bits) for bits in (8, 4)}
        variant_logp = {name: torch.cat([torch.log_softmax(next_token_logits(v, w[None]), -1) for w in batch])
                        for name, v in variants.items()}
    exact = {name: (base_logp.exp() * (base_logp - logp)).sum(-1).double() for name, logp in variant_logp.items()}

    print(f"{checkpoint}: {count} windows x {seq_len} tokens, vocab {vocab}")
    print(f"recompute the base per window: 0 bytes, +{forward / count:.2f} s per window and variant "
          f"(one more forward pass: a variant's evaluation costs twice as much)")
    full = vocab * 2
    half = base_logp.half()
    started = time.perf_counter()
    path = Path("/tmp") / f"base_fp16_{seq_len}_{count}.npy"
    np.save(path, half.numpy())
    np.load(path)
    io = time.perf_counter() - started
    path.unlink()
    print(f"fp16 full log-probs: {full} B per prediction, {full * 16 * 255 / 2**20:.0f} MiB for the CPU default "
          f"(16 x 256), {full * WIKITEXT_TEST_TOKENS / 2**30:.1f} GiB for the GPU default; write+read "
          f"{io / count:.2f} s per window")
    for name, logp in variant_logp.items():
        fp16_kl = (half.float().exp() * (half.float() - logp)).sum(-1).double()
        print(f"  {name}: exact KL {exact[name].mean():.5f}, from fp16 base {fp16_kl.mean():.5f} "
              f"(relative error {abs(fp16_kl.mean() / exact[name].mean() - 1):.1e})")
    for k in TOP_KS:
        top_logprobs, top_ids = base_logp.topk(k, dim=-1)  # what evaluate_base keeps (top logits - logsumexp)
        rest = rest_mass(top_logprobs).numpy()
        print(f"top-{k}: base rest mass mean {rest.mean():.4f}, max {rest.max():.3f}")
        for samples in TAIL_SAMPLES:
            per = (k + samples) * 8  # int32 id + float32 log-prob each
            line = (f"  + {samples:2d} tail samples: {per} B per prediction ({per / full:.1%} of fp16 full), "
                    f"{per * 16 * 255 / 2**20:.1f} MiB CPU default, {per * WIKITEXT_TEST_TOKENS / 2**20:.0f} MiB "
                    f"GPU default")
            for name, logp in variant_logp.items():
                estimates, seconds = [], 0.0
                for seed in range(SEEDS):
                    started = time.perf_counter()
                    tail = tail_samples(base_logp.exp(), top_ids, samples, torch.Generator().manual_seed(seed))
                    seconds += time.perf_counter() - started
                    estimates.append(float(kl_to_base(top_logprobs, logp.gather(-1, top_ids),
                                                      base_logp.gather(-1, tail), logp.gather(-1, tail)).mean()))
                line += (f"\n      {name}: exact {exact[name].mean():.5f}, estimate over {SEEDS} seeds: bias "
                         f"{np.mean(estimates) / exact[name].mean() - 1:+.2%}, spread (std) "
                         f"{np.std(estimates) / exact[name].mean():.2%}; sampling {seconds / SEEDS / count * 1000:.0f} "
                         f"ms per window")
            print(line, flush=True)


if __name__ == "__main__":
    main()
