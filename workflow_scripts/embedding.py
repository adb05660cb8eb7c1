"""rule embedding: k-means structure of the token embedding (and of an untied output head)."""

from pathlib import Path

import pandas as pd

from blockscope import read_unit
from blockscope.analysis.embedding import TOKEN_CLUSTER_COLUMNS, analyse_embedding
from blockscope.checkpoint.selection import embedding_tensors
from blockscope.io.atomic import atomic_path, write_json, write_parquet
from blockscope.runtime.run_step import run_step

NOT_FOUND = ("no token embedding found: no 2-D tensor in the embed or lm_head unit that the naming rules "
             "call an embedding or output head")


def token_decoder(checkpoint: Path):
    """id -> token text through tokenizer.json (no transformers import), or None."""
    path = checkpoint / "tokenizer.json"
    if not path.exists():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return lambda i: tokenizer.decode([i])


def main(snakemake):
    model, settings = snakemake.wildcards.model, snakemake.params.settings
    inventory = pd.read_parquet(snakemake.input.inventory)
    ks = range(settings["k_min"], settings["k_max"] + 1, settings["k_step"])
    decode = token_decoder(Path(snakemake.input.checkpoint))
    matrices = {}  # the token embedding and, when untied, the output head (the rule's inputs: the same units)
    for unit, name in embedding_tensors(inventory).items():
        matrices[name] = read_unit(snakemake.input[unit], names=[name])[name]
    elbows, points, summary, clusters, tokens = {}, {}, {}, [], []
    for name, matrix in matrices.items():
        elbow, table, pts, info, labels = analyse_embedding(
            matrix, ks, seed=settings["seed"], sample_size=settings["sample"],
            silhouette_sample=settings["silhouette_sample"], nearest=settings["nearest_tokens"], decode=decode)
        summary[name] = info
        tokens.append(labels.assign(matrix=name))
        if info["status"] != "ok":
            print(f"[{model}] {name} {matrix.shape}: {info['status']}: {info['reason']}")
            continue
        elbows[name], points[name] = elbow.assign(matrix=name), pts
        clusters.append(table.assign(matrix=name))
        dropped = f"; {info['dropped_rows']} rows with NaN or Inf left out" if info["dropped_rows"] else ""
        clamped = f"; {info['k_clamped']}" if info["k_clamped"] else ""
        print(f"[{model}] {name} {matrix.shape}: k = {info['k']} ({info['algorithm']}), "
              f"silhouette {info['silhouette_at_k']:.3f}{dropped}{clamped}")
        print(table[["cluster", "size", "nearest_tokens"]].to_string(index=False))
    result = {"model": model, "matrices": summary}
    if not matrices:
        result["reason"] = NOT_FOUND
        print(f"[{model}] empty embedding outputs: {NOT_FOUND}")
    write_json(result, snakemake.output.summary)
    write_parquet(pd.concat(elbows.values()) if elbows else pd.DataFrame(), snakemake.output.elbow)
    write_parquet(pd.concat(clusters) if clusters else pd.DataFrame(), snakemake.output.clusters)
    token_table = (pd.concat(tokens, ignore_index=True) if tokens
                   else pd.DataFrame(columns=[*TOKEN_CLUSTER_COLUMNS, "matrix"]))
    write_parquet(token_table, snakemake.output.token_clusters)
    with atomic_path(snakemake.output.token_clusters_csv) as tmp:
        token_table.to_csv(tmp, index=False)
    write_parquet(pd.concat(p.assign(matrix=n) for n, p in points.items()) if points else pd.DataFrame(),
                  snakemake.output.points)

run_step(snakemake, main)
