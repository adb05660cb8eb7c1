"""Evaluation throughput against a plain transformers forward pass on the same windows.

Peer: `model(ids)` under torch.inference_mode over the windows (no loss, nothing kept).
Ours: blockscope.evaluate.Evaluator.score, first as the base (NLL, accuracy, log-prob cache),
then as a merged model (adds KL and agreement against the cached base). Prints tokens/s and
the ratios (goal: >= 0.9x of the peer).

    .venv/bin/python benchmarks/headmerge_eval_speed.py [checkpoint] [seq_len] [windows]
"""

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blockscope.evaluate import Evaluator, corpus_text, raw_file_rows, windows

    checkpoint = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "resources/models/smollm2-135m")
    seq_len = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(checkpoint).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    corpus = ROOT / "resources/corpus/wikitext-2-raw-test.txt"
    ids = np.asarray(tokenizer(corpus_text(raw_file_rows(corpus)))["input_ids"])
    batch = windows(ids, seq_len, seq_len * count)
    tokens = batch.size

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    evaluator = Evaluator(batch, device=device)
    with torch.inference_mode():  # warm-up
        model(torch.as_tensor(batch[:1]).to(device))
    sync()
    started = time.perf_counter()
    with torch.inference_mode():
        for row in batch:
            model(torch.as_tensor(row[None]).to(device))
    sync()
    peer = time.perf_counter() - started
    started = time.perf_counter()
    evaluator.score(model, base=True)
    sync()
    base = time.perf_counter() - started
    started = time.perf_counter()
    evaluator.score(model)
    sync()
    merged = time.perf_counter() - started
    print(f"{checkpoint} on {device}: {count} windows x {seq_len} tokens")
    print(f"peer plain forward:           {tokens / peer:8.0f} tokens/s")
    print(f"ours, base (NLL, acc, cache): {tokens / base:8.0f} tokens/s  ratio {peer / base:.2f}x")
    print(f"ours, merged (+ KL, agree):   {tokens / merged:8.0f} tokens/s  ratio {peer / merged:.2f}x")


if __name__ == "__main__":
    main()
