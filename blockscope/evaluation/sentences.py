"""The evaluation corpus as sentences, for an encoder (blockscope.evaluation.encoder), each with
the index of the WikiText article it comes from.

The rule, on WikiText raw rows (corpus.raw_file_rows), in order:
  - a heading line (" = Title = ", " = = Section = = ", ...) is no text; an article heading (one
    "=" on each side) starts the next article (the text before the first one is article 0 too);
  - WikiText's split markers are joined back: "@-@" -> "-", "@,@" -> ",", "@.@" -> ".";
  - a paragraph (a non-empty line) is cut after each standalone ".", "?" or "!" token (WikiText
    puts spaces around sentence punctuation; "U.S." stays one token); what follows the last of
    them is a sentence too;
  - a sentence is kept when it has at least `min_words` words (tokens holding a letter or a
    digit), was not kept before (an exact repeat would make its nearest neighbour ambiguous) and,
    with `per_article`, its article has given fewer than that many (so that the sentences span
    many articles: WikiText-2's test split has 62, and its first 512 sentences come from 5);
  - the first `count` kept sentences are the evaluation's.
"""

from blockscope.errors import BlockscopeError
from blockscope.evaluation.corpus import ARTICLE_HEADING

# Sentences shorter than this (in words) are mostly captions, list items and fragments.
MIN_WORDS = 8
SENTENCE_END = frozenset({".", "?", "!"})
SPLIT_MARKERS = (("@-@", "-"), ("@,@", ","), ("@.@", "."))


def is_heading(line: str) -> bool:
    """A WikiText heading line, of an article or of a section at any depth."""
    text = line.strip()
    return len(text) > 1 and text.startswith("=") and text.endswith("=")


def is_article_heading(line: str) -> bool:
    """A WikiText article heading: " = Title = " (one "=" on each side; sections have two or more),
    as corpus.article_starts finds them."""
    return ARTICLE_HEADING.fullmatch(line) is not None


def join_split_markers(text: str) -> str:
    """WikiText's " @-@ " (and @,@ @.@) joined back: "1 @.@ 5" -> "1.5", "well @-@ known" -> "well-known"."""
    for marker, joined in SPLIT_MARKERS:
        text = text.replace(f" {marker} ", joined)
    return text


def split_sentences(paragraph: str) -> list:
    """A paragraph's sentences: cut after each standalone ".", "?" or "!" token; tokens joined by
    one space."""
    sentences, current = [], []
    for token in paragraph.split():
        current.append(token)
        if token in SENTENCE_END:
            sentences.append(" ".join(current))
            current = []
    if current:
        sentences.append(" ".join(current))
    return sentences


def word_count(sentence: str) -> int:
    """Tokens that hold a letter or a digit (punctuation tokens are no words)."""
    return sum(any(c.isalnum() for c in token) for token in sentence.split())


def corpus_sentences(rows, count: int, min_words: int = MIN_WORDS, per_article: int | None = None,
                     model=None) -> tuple:
    """(sentences, articles): the first `count` sentences of the rows by the module's rule (at
    most per_article from each article; None: no limit), and per sentence the index of its
    article (0 for the first). BlockscopeError when the rows hold fewer than `count`."""
    sentences, articles, seen, article, taken = [], [], set(), -1, 0
    for line in rows:
        if is_article_heading(line):
            article, taken = article + 1, 0
        if is_heading(line) or not line.strip():
            continue
        for sentence in split_sentences(join_split_markers(" " + line.strip() + " ")):
            if word_count(sentence) < min_words or sentence in seen or (per_article and taken >= per_article):
                continue
            taken += 1
            seen.add(sentence)
            sentences.append(sentence)
            articles.append(max(article, 0))
            if len(sentences) == count:
                return sentences, articles
    limit = f", at most {per_article} per article," if per_article else ""
    raise BlockscopeError(f"the corpus holds {len(sentences)} sentences of at least {min_words} words{limit} fewer "
                          f"than the {count} asked for", model=model, path="eval.encoder_sentences",
                          fix="lower eval.encoder_sentences, raise eval.encoder_per_article or use a longer corpus")
