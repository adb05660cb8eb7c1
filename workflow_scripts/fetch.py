"""rule fetch: build resources/models/{model}/ from the model's source."""

from blockscope.checkpoint.sources import fetch
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model = snakemake.wildcards.model
    like = snakemake.input.get("like") if hasattr(snakemake.input, "get") else None
    provenance = fetch(model, dict(snakemake.params.spec), snakemake.output[0], like_checkpoint=like)
    print(f"[{model}] fetched from {provenance['source']} into {snakemake.output[0]}")


run_step(snakemake, main)
