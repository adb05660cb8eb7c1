"""Evaluation throughput against a plain transformers forward pass on the same windows.

Peer: `model(ids).logits` under torch.inference_mode over the windows, one window per batch
(as the evaluation's default batch_size), nothing kept. Ours: blockscope.evaluation.forward.evaluate_base
(NLL, accuracy, argmax, top-k log-probabilities kept) and evaluate_variant (NLL, accuracy, KL
and top-1 agreement against that base) on the same windows. The three run interleaved for
`rounds` rounds and each keeps its fastest round; on a shared machine the ratios of CPU
seconds (process time, all threads) are the steadier ones. Prints tokens/s, both ratios
(best round against best round, and the median of each round's ratio to the peer's run just
before it, which cancels slow drifts of a shared machine)
(goal: >= 0.9x of the peer) and where the time after the forward pass goes.

    .venv/bin/python benchmarks/headmerge_eval_speed.py [checkpoint] [seq_len] [windows] [rounds] [corpus]
"""

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def timed(step, sync, repeat=1) -> float:
    """Wall seconds per call."""
    return clocked(step, sync, repeat)[0]


def clocked(step, sync, repeat=1) -> tuple:
    """(wall seconds, CPU seconds of this process) per call."""
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        step()
    sync()
    return (time.perf_counter() - started) / repeat, (time.process_time() - cpu) / repeat


def profile(logits, ids, base, device, sync):
    """Seconds per window of each step after the forward pass, over the pieces the evaluation
    works on (chunks of positions on the CPU)."""
    import torch

    from blockscope.evaluation.forward import _pieces, next_token_scores
    from blockscope.evaluation.kl import kl_to_base, tail_samples

    generator = torch.Generator(device=device).manual_seed(0)
    pieces = list(_pieces(logits, device))
    top = [z.topk(base.top_k, -1) for _, _, z in pieces]
    targets = [ids[window, 1:][where] for window, where, _ in pieces]
    steps = {
        "max + exp, sum (vocab)": lambda: [next_token_scores(z, t) for (_, _, z), t in zip(pieces, targets)],
        "topk (vocab, base only)": lambda: [z.topk(base.top_k, -1) for _, _, z in pieces],
        "exp + tail_samples (base)": lambda: [tail_samples((z - z.amax(-1, keepdim=True)).exp_(), i,
                                                           base.settings["tail_samples"], generator)
                                           for (_, _, z), (_, i) in zip(pieces, top)],
        "gathers + kl_to_base": lambda: [kl_to_base(v, z.gather(-1, i), v[..., :32], z.gather(-1, i[..., :32]))
                                      for (_, _, z), (v, i) in zip(pieces, top)],
        "old: logsumexp, one piece": lambda: torch.logsumexp(logits, -1),
        "old: softmax, one piece": lambda: torch.softmax(logits, -1),
    }
    with torch.inference_mode():
        return {name: timed(step, sync, repeat=5) for name, step in steps.items()}


def main():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blockscope.evaluation.corpus import corpus_text, raw_file_rows, windows
    from blockscope.evaluation.forward import evaluate_base, evaluate_variant, next_token_logits

    checkpoint = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "resources/models/smollm2-135m")
    seq_len = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    corpus = sys.argv[5] if len(sys.argv) > 5 else str(ROOT / "resources/corpus/wikitext-2-raw-test.txt")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(checkpoint).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = np.asarray(tokenizer(corpus_text(raw_file_rows(corpus)))["input_ids"])
    batch = windows(ids, seq_len, seq_len * count)
    tokens = batch.size

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def peer():
        with torch.inference_mode():
            for row in batch:
                model(torch.as_tensor(row[None]).to(device)).logits

    base = evaluate_base(model, batch[:1], device)  # warm-up (and the profile's base)
    kept = {}

    def base_eval():
        kept["base"] = evaluate_base(model, batch, device)

    steps = {"peer": peer, "base": base_eval, "variant": lambda: evaluate_variant(model, kept["base"], device)}
    runs = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            runs[name].append(clocked(step, sync))
    print(f"{checkpoint} on {device} ({torch.get_num_threads()} threads): {count} windows x {seq_len} tokens, "
          f"best of {rounds} interleaved rounds")
    labels = {"base": f"evaluate_base (NLL, acc, top-{base.top_k})", "variant": "evaluate_variant (+ KL, agreement)"}
    for clock, column in (("wall", 0), ("CPU", 1)):
        best = {name: min(run[column] for run in runs[name]) for name in steps}
        print(f"{clock} clock: peer plain forward (model(ids).logits) {tokens / best['peer']:8.0f} tokens/s")
        for name, label in labels.items():
            paired = np.median([p[column] / o[column] for p, o in zip(runs["peer"], runs[name])])
            print(f"  ours, {label:38s} {tokens / best[name]:8.0f} tokens/s  ratio {best['peer'] / best[name]:.3f}x "
                  f"(best of each), {paired:.3f}x (median of the rounds' own ratios)")
    print("every round (wall s, CPU s): " + "; ".join(
        f"{name} {[(round(w, 2), round(c, 2)) for w, c in runs[name]]}" for name in steps))
    forward = min(run[0] for run in runs["peer"]) / count
    window = torch.as_tensor(batch[:1]).to(device)
    with torch.inference_mode():
        logits = next_token_logits(model, window)
    print(f"after the forward pass ({forward * 1000:.1f} ms per window), per window:")
    for name, seconds in profile(logits, window, base, device, sync).items():
        print(f"  {name:26s} {seconds * 1000:7.2f} ms  ({seconds / forward:.1%} of the forward pass)")


if __name__ == "__main__":
    main()
