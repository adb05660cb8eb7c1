# Per causal LM: the base model scored once on the corpus windows (per encoder: its embeddings of the
# corpus's sentences); head merging (and the compression experiments) score their variants against
# this, never running the base again.

# The eval keys that change the base evaluation reach it, no others: a new threshold never
# reruns it. A model the evaluation cannot score needs no corpus (evaluation_corpus).
BASE_EVAL_KEYS = (
    "seq_len",
    "max_tokens",
    "gpu_seq_len",
    "gpu_max_tokens",
    "batch_size",
    "dtype",
    "kl_top_k",
    "kl_tail_samples",
    "encoder_sentences",
    "encoder_group",
    "encoder_batch_size",
    "encoder_per_article",
)


rule evaluate_base:
    input:
        checkpoint=layout.CHECKPOINT,
        dims=layout.MODEL_JSON,
        corpus=evaluation_corpus,
    output:
        base=layout.EVAL_BASE,
        windows=layout.EVAL_BASE_WINDOWS,
        summary=layout.EVAL_BASE_SUMMARY,
    log:
        "logs/{model}/evaluate_base.log",
    benchmark:
        benchmark("evaluate_base")
    priority: MINUTES_LONG
    conda:
        "../envs/blockscope.yaml"
    resources:
        gpu=GPU_CLAIM,
        mem_mb=12000,
    params:
        settings={key: EVALUATION[key] for key in BASE_EVAL_KEYS},
        device=BACKEND,
        code=code("evaluate_base"),
    script:
        "../workflow_scripts/evaluate_base.py"
