"""The WikiText articles the evaluation windows cover (blockscope.evaluation.corpus,
base_artifact.articles_covered), on a hand-made WikiText-shaped text with a real byte-level BPE
tokenizer, against a count made from how the text was built."""

import numpy as np
import pytest

from blockscope.evaluation.base_artifact import BaseEvaluation, articles_covered, load_base, save_base
from blockscope.evaluation.corpus import (
    article_starts,
    articles_in,
    corpus_text,
    raw_file_rows,
    token_ids_and_starts,
    window_articles,
    window_offsets,
    windows,
)

SEQ_LEN = 16
SENTENCES = [3, 0, 12, 1, 0, 0, 6, 2, 20, 0, 4]  # per article; 0: a title only, shorter than a window


def wikitext_rows(seed=0):
    """Rows the way `datasets` gives WikiText raw (a blank row between rows), per row the article
    it belongs to, and the title rows. Article k writes only the letter chr(97 + k), so that its
    words are its own; article lengths run from a title to many windows, with sections and
    subsections; the text before the first title counts as the first article's."""
    rng = np.random.default_rng(seed)
    rows, owner, titles = [""], [0], []
    for k, sentences in enumerate(SENTENCES):
        letter = chr(97 + k)
        title = " ".join(letter.upper() + letter * int(n) for n in rng.integers(1, 4, size=2))
        titles.append(len(rows))
        rows += [f" = {title} = \n", ""]
        for s in range(sentences):
            if s and s % 4 == 0:
                rows += [f" = = {letter.upper()}{letter} = = \n", "", f" = = = {letter * 3} = = = \n", ""]
            words = " ".join(letter * int(n) for n in rng.integers(1, 6, size=int(rng.integers(3, 12))))
            rows += [f" {words.capitalize()} , {words} . \n", ""]
        owner += [k] * (len(rows) - len(owner))
    return rows, owner, titles


def byte_level_tokenizer(text):
    """A real fast tokenizer (byte-level BPE, GPT-2's pre-tokenizer) trained on the text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, initial_alphabet=
                                                              pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def independent_window_ranges(tokenizer, ids, rows, owner, count):
    """[first, last] article per window, without offset_mapping or article_starts: each token's
    first character from the lengths of the decoded tokens before it, its article from the row
    that character lies in (the "\\n\\n" after a row belongs to that row's article)."""
    pieces = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    assert "".join(pieces) == corpus_text(rows)  # the decoding is lossless, so the lengths are exact
    article_of_char = [k for row, k in zip(rows, owner) for _ in range(len(row) + 2)]
    first_chars = np.cumsum([0] + [len(p) for p in pieces])[:-1]
    article = [article_of_char[c] for c in first_chars]
    return [[article[w * SEQ_LEN], article[w * SEQ_LEN + SEQ_LEN - 1]] for w in range(count)]


@pytest.fixture(scope="module")
def corpus():
    rows, owner, titles = wikitext_rows()
    text = corpus_text(rows)
    return rows, owner, titles, text, byte_level_tokenizer(text)


def test_article_starts_are_the_title_rows_only(corpus):
    rows, _, titles, text, _ = corpus
    starts = article_starts(rows)
    assert starts == [len(corpus_text(rows[:i])) + 2 for i in titles]  # after the "\n\n" ending row i - 1
    assert len(starts) == len(SENTENCES) and all(text[s:].startswith(" = ") and text[s + 3] != "=" for s in starts)
    # a raw file's rows (no blank rows, \r\n, sections) give the same titles
    raw = [" = Aa = \r\n", " = = Sec = = \n", " = = = Sub = = = \n", " x = 2 \n", " = B = \n", " = = \n"]
    assert article_starts(raw) == [0, len(corpus_text(raw[:4])) + 2]


def test_window_articles_match_an_independent_count(corpus):
    rows, owner, _, text, tokenizer = corpus
    ids, starts = token_ids_and_starts(tokenizer, text)
    batches = windows(ids, SEQ_LEN, None)
    ranges = window_articles(starts, article_starts(rows), SEQ_LEN, window_offsets(len(ids), SEQ_LEN, None))
    expected = independent_window_ranges(tokenizer, ids, rows, owner, len(batches))
    assert ranges == expected
    assert any(last - first >= 2 for first, last in ranges)   # some window spans three articles
    assert any(first == last for first, last in ranges)       # and some lie inside one
    for count in (1, 3, len(batches) // 2, len(batches)):
        covered = {k for w in range(count) for k in set(owner_range(expected[w]))}
        assert articles_in(ranges[:count]) == len(covered)


def owner_range(pair):
    return range(pair[0], pair[1] + 1)


def test_articles_covered_counts_the_kept_windows_and_survives_the_file(corpus, tmp_path):
    rows, _, _, text, tokenizer = corpus
    ids, starts = token_ids_and_starts(tokenizer, text)
    batches = windows(ids, SEQ_LEN, None)
    ranges = window_articles(starts, article_starts(rows), SEQ_LEN, window_offsets(len(ids), SEQ_LEN, None))
    n = len(batches)
    base = BaseEvaluation(nll=[1.0] * n, correct=[0] * n, tokens=[SEQ_LEN - 1] * n, windows=np.asarray(batches),
                          predicted=np.zeros((n, SEQ_LEN - 1), np.int32),
                          top_ids=np.zeros((n, SEQ_LEN - 1, 2), np.int32),
                          top_logprobs=np.zeros((n, SEQ_LEN - 1, 2), np.float32),
                          tail_ids=np.zeros((n, SEQ_LEN - 1, 1), np.int32),
                          tail_logprobs=np.zeros((n, SEQ_LEN - 1, 1), np.float32),
                          settings={"seq_len": SEQ_LEN, "window_articles": ranges})
    assert articles_covered(base) == len(SENTENCES)
    save_base(base, tmp_path / "base.safetensors")
    back = load_base(tmp_path / "base.safetensors")
    kept = back.spread_windows(3 * SEQ_LEN)  # the first, the middle and the last window
    picked = [ranges[i] for i in (0, round((n - 1) / 2), n - 1)]
    assert kept.settings["window_articles"] == picked and len(kept.nll) == 3
    assert articles_covered(kept) == len({k for pair in picked for k in owner_range(pair)})
    old = BaseEvaluation(nll=[1.0], correct=[0], tokens=[SEQ_LEN - 1], settings={"seq_len": SEQ_LEN})
    assert articles_covered(old) is None  # an artifact from before the articles were recorded


def test_wikitext_test_split_titles():
    """The local wiki.test.raw (when present): 60 article titles and the two equation fragments of
    "Constant k filter" that article_starts' docstring names."""
    from conftest import ROOT

    path = ROOT.parent / "shared/data/wikitext-2-raw/wiki.test.raw"
    if not path.exists():
        pytest.skip("no local wiki.test.raw")
    rows = raw_file_rows(path)
    text = corpus_text(rows)
    titles = [text[s:text.index("\n", s)].strip() for s in article_starts(rows)]
    assert len(titles) == 62 and titles[0] == "= Robert Boulter =" and titles[-1] == "= The Hustler ( film ) ="
    assert [t for t in titles if t.startswith("= 1 ")] == ["= 1 rad / s and a nominal impedance k =",
                                                           "= 1 henry and capacitance C ="]


def test_windows_are_spread_evenly_over_the_corpus():
    # 100 slots of 10 tokens, room for 3 windows: the first, the middle and the last slot
    assert window_offsets(1000, 10, 30).tolist() == [0, 500, 990]
    assert window_offsets(1005, 10, None).tolist() == list(range(0, 1000, 10))  # all slots, tail dropped
    ids = np.arange(1000)
    assert windows(ids, 10, 30)[:, 0].tolist() == [0, 500, 990] and windows(ids, 10, 30)[1].tolist() == \
        list(range(500, 510))
    for slots in range(1, 40):  # distinct, ascending, first and last slot for any count
        for count in range(1, slots + 1):
            picked = window_offsets(slots * 7, 7, count * 7) // 7
            assert len(set(picked)) == count and picked[0] == 0 and (count == 1 or picked[-1] == slots - 1)
