"""The shared base evaluation: its file round trip, variants scored against it, KL's estimate."""

import copy

import numpy as np
import pytest

from blockscope import layout
from blockscope.errors import BlockscopeError
from blockscope.evaluation import base_artifact, corpus, forward, kl
from blockscope.evaluation.scores import perplexity_change_ci

from conftest import TINY_LLAMA, save_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, windows, base): a tiny real Llama scored as the base on random token windows."""
    model = save_tiny("LlamaForCausalLM", TINY_LLAMA, tmp_path_factory.mktemp("tiny")).eval()
    ids = np.random.default_rng(0).integers(0, TINY_LLAMA["vocab_size"], 5 * 24)
    batches = corpus.windows(ids, 24, None)
    return model, batches, forward.evaluate_base(model, batches, batch_size=2, top_k=16, settings={"seq_len": 24})


def perturbed(model, scale=0.3, seed=0):
    """A copy with noise on every attention and MLP weight: a variant that predicts differently."""
    import torch

    variant = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in variant.named_parameters():
            if p.ndim == 2 and "layers" in name:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=generator))
    return variant


def exact_kl(base_model, variant, batches):
    """KL(base || variant) per prediction from the full vocabulary, summed: the peer of kl_top_k."""
    import torch

    with torch.inference_mode():
        ids = torch.as_tensor(batches)
        log_b = torch.log_softmax(forward.next_token_logits(base_model, ids).double(), -1)
        log_v = torch.log_softmax(forward.next_token_logits(variant, ids).double(), -1)
        return float((log_b.exp() * (log_b - log_v)).sum())


def test_the_base_file_round_trips(tiny, tmp_path):
    import torch

    _, batches, base = tiny
    assert base.top_ids.shape == base.top_logprobs.shape == (5, 23, 16) and base.predicted.shape == (5, 23)
    assert base.tail_ids.shape == base.tail_logprobs.shape == (5, 23, kl.DEFAULT_TAIL_SAMPLES)
    assert base.settings == {"seq_len": 24, "top_k": 16, "tail_samples": 32} and base.tokens == [23] * 5
    assert not (base.tail_ids[..., :, None] == base.top_ids[..., None, :]).any()  # the tail is outside the top k
    assert torch.all(base.top_logprobs[..., :-1] >= base.top_logprobs[..., 1:])  # most probable first
    path = tmp_path / "eval/base.safetensors"
    base_artifact.save_base(base, path)
    back = base_artifact.load_base(path)
    assert (back.nll, back.correct, back.tokens, back.settings) == (base.nll, base.correct, base.tokens, base.settings)
    assert all(torch.equal(getattr(back, name), torch.as_tensor(getattr(base, name)))
               for name in base_artifact.PREDICTION_FIELDS)
    assert back.summary() == base.summary() and back.skipped is None
    table = base_artifact.base_windows_table(back)
    assert list(table.columns) == layout.EVAL_WINDOW_COLUMNS and list(table["first_token"]) == [0, 24, 48, 72, 96]
    assert np.exp(table["nll"].sum() / table["tokens"].sum()) == pytest.approx(base.summary()["perplexity"])
    record = base_artifact.base_record(back, path)
    assert record["tokens_evaluated"] == 5 * 23 and record["bytes"] == path.stat().st_size
    assert 0 < record["rest_mass_mean"] < 1


def test_a_skipped_base_round_trips_and_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "base.safetensors"
    base_artifact.save_base(base_artifact.skipped_base("not a causal LM (BertForMaskedLM)"), path)
    back = base_artifact.load_base(path)
    assert back.skipped == "not a causal LM (BertForMaskedLM)" and back.nll == []
    assert base_artifact.base_windows_table(back).empty and base_artifact.base_record(back) == {"skipped": back.skipped}
    (tmp_path / "other.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BlockscopeError, match="not a base evaluation.*rerun the evaluate_base rule"):
        base_artifact.load_base(tmp_path / "other.safetensors")


def test_the_unchanged_model_scores_as_the_base(tiny):
    model, _, base = tiny
    again = forward.evaluate_variant(model, base, batch_size=3)  # another batching: the same per-window sums
    assert again.nll == pytest.approx(base.nll, rel=1e-6) and again.correct == base.correct
    summary = again.summary()
    assert summary["kl_divergence"] == pytest.approx(0.0, abs=1e-6) and summary["top1_agreement"] == 1.0
    assert summary["perplexity"] == pytest.approx(base.summary()["perplexity"], rel=1e-6)
    assert perplexity_change_ci(base, again, samples=200) == pytest.approx((0.0, 0.0), abs=1e-4)


def exact_bootstrap_interval(base, variant, level=0.95):
    """The 2.5 % and 97.5 % points of perplexity(variant) - perplexity(base) over every one of the
    n^n equally likely resamples of n windows (itertools.product), as numpy's default quantile."""
    import itertools

    nll_b, nll_v, tokens = (np.asarray(x, float) for x in (base.nll, variant.nll, base.tokens))
    n = len(tokens)
    changes = [np.exp(nll_v[list(pick)].sum() / tokens[list(pick)].sum())
               - np.exp(nll_b[list(pick)].sum() / tokens[list(pick)].sum())
               for pick in itertools.product(range(n), repeat=n)]
    tail = (1 - level) / 2
    return float(np.quantile(changes, tail)), float(np.quantile(changes, 1 - tail))


def test_a_perturbed_model_diverges_and_its_kl_estimate_matches_the_exact_kl(tiny):
    model, batches, base = tiny
    variant = perturbed(model)
    scores = forward.evaluate_variant(variant, base, batch_size=2)
    summary = scores.summary()
    exact = exact_kl(model, variant, batches)
    assert sum(scores.kl) == pytest.approx(exact, rel=0.05)  # k = 16 of 256 tokens, the rest sampled
    assert summary["top1_agreement"] < 1 and summary["perplexity"] != base.summary()["perplexity"]
    # the paired bootstrap against its exact distribution: all 5^5 resamples of the 5 windows
    low, high = perplexity_change_ci(base, scores, samples=20000)
    exact_low, exact_high = exact_bootstrap_interval(base, scores)
    spread = exact_high - exact_low
    assert low == pytest.approx(exact_low, abs=0.05 * spread) and high == pytest.approx(exact_high, abs=0.05 * spread)
    # with every token of the vocabulary kept it is the exact KL, up to the float32 logsumexp
    # (about 1e-6 nats per prediction; the peer works in float64)
    whole = forward.evaluate_base(model, batches, top_k=TINY_LLAMA["vocab_size"])
    assert whole.tail_ids.shape[-1] == 0
    assert sum(forward.evaluate_variant(variant, whole).kl) == pytest.approx(exact, abs=2e-6 * sum(base.tokens))


def test_kl_to_base_by_hand_is_exact_in_expectation_over_the_tail_draws():
    import torch

    # base (0.5, 0.3 | c 0.15, d 0.05) against variant (0.25, 0.25 | c 0.25, d 0.25), k = 2
    p_b, p_m = np.array([0.5, 0.3, 0.15, 0.05]), np.array([0.25, 0.25, 0.25, 0.25])
    exact = float(np.sum(p_b * np.log(p_b / p_m)))
    top_b, top_m = torch.tensor(p_b[:2]).log(), torch.tensor(p_m[:2]).log()

    def drawn(token):  # the estimate when the one tail draw is this token (c = 2, d = 3)
        return float(kl.kl_to_base(top_b, top_m, torch.tensor([p_b[token]]).log(), torch.tensor([p_m[token]]).log()))

    # draws follow the base's tail (0.75, 0.25): the expectation is the exact KL
    assert 0.75 * drawn(2) + 0.25 * drawn(3) == pytest.approx(exact, rel=1e-9)
    assert drawn(2) != pytest.approx(exact) and float(kl.rest_mass(top_b)) == pytest.approx(0.2, rel=1e-9)
    assert float(kl.kl_to_base(top_b, top_b, top_b[:1], top_b[:1])) == 0.0


def test_tail_samples_follow_the_distribution_outside_the_top_k():
    import torch

    logits = torch.tensor([[0.5, 0.3, 0.12, 0.06, 0.02]]).log()
    top_ids = torch.tensor([[0]])
    generator = torch.Generator().manual_seed(0)
    draws = kl.tail_samples(logits.exp(), top_ids, 50, generator)[0]
    counts = torch.bincount(draws, minlength=5).tolist()
    # systematic sampling: each count within one of 50 x (0.6, 0.24, 0.12, 0.04), none of the top k
    assert counts[0] == 0 and all(abs(c - 50 * q) <= 1 for c, q in zip(counts[1:], (0.6, 0.24, 0.12, 0.04)))


def test_chunks_of_positions_give_the_same_evaluation(tiny, monkeypatch):
    import torch

    model, batches, base = tiny
    monkeypatch.setattr(forward, "CPU_CHUNK_BYTES", 4 * TINY_LLAMA["vocab_size"] * 5)  # 5 positions a piece
    chunked = forward.evaluate_base(model, batches, batch_size=2, top_k=16)
    assert chunked.nll == pytest.approx(base.nll, rel=1e-6) and chunked.correct == base.correct
    assert torch.equal(chunked.top_ids, base.top_ids) and torch.equal(chunked.predicted, base.predicted)
    again = forward.evaluate_variant(model, chunked, batch_size=2).summary()
    assert again["kl_divergence"] == 0.0 and again["top1_agreement"] == 1.0
