"""rule fetch_adapter: build resources/models/{model}/ of a peft adapter, checked against its base."""

from blockscope.checkpoint.adapter_fetch import fetch_adapter
from blockscope.runtime.run_step import run_step


def main(snakemake):
    model = snakemake.wildcards.model
    provenance = fetch_adapter(model, dict(snakemake.params.spec), snakemake.output[0], snakemake.input.base)
    merged = "merged into a checkpoint, " if provenance.get("merged") else ""
    print(f"[{model}] adapter of {provenance.get('base')} (r {provenance.get('r')}), {merged}"
          f"into {snakemake.output[0]}")


run_step(snakemake, main)
