"""rule fetch_corpus: the evaluation corpus (WikiText-2 raw test) under resources/, from a local file or
`datasets`; run only when some model will be evaluated."""

from pathlib import Path

from blockscope.errors import BlockscopeError
from blockscope.io.atomic import atomic_path
from blockscope.runtime.run_step import run_step


def main(snakemake):
    corpus = snakemake.params.corpus
    local = Path(corpus["path"]).expanduser() if corpus.get("path") else None
    if local is not None and local.is_file():
        text = local.read_text(encoding="utf-8")
        origin = str(local)
    elif corpus["source"] == "datasets":
        try:
            import datasets

            rows = datasets.load_dataset(corpus["dataset"], corpus["config"], split=corpus["split"])["text"]
        except Exception as exc:
            absent = f" and eval.corpus.path {local} does not exist" if local is not None else ""
            raise BlockscopeError(f"cannot load {corpus['dataset']}/{corpus['config']} through datasets "
                                  f"({type(exc).__name__}){absent}", path="eval.corpus",
                                  fix="check the network, or place wiki.test.raw somewhere and set "
                                      "eval.corpus.path to it") from None
        text, origin = "".join(rows), f"datasets:{corpus['dataset']}/{corpus['config']}/{corpus['split']}"
    else:
        raise BlockscopeError("the corpus file does not exist", path=local,
                              fix="set eval.corpus.path to a text file")
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"corpus from {origin}: {len(text)} characters")


run_step(snakemake, main)
