# blockscope: the spectral anatomy of transformer checkpoints.
# Layout and contracts: see README.md and docs/. This file only wires the stages together.

from snakemake.utils import min_version
from blockscope.config.config_files import readable_config  # not UTF-8: one line, not a traceback

min_version("9.0")


configfile: readable_config("config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/resources.smk"
include: "rules/inputs.smk"
include: "rules/targets.smk"
include: "rules/run.smk"
include: "rules/fetch.smk"
include: "rules/extract.smk"
include: "rules/plan.smk"
include: "rules/anatomy.smk"
include: "rules/heads.smk"
include: "rules/embedding.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"
include: "rules/evaluate.smk"
include: "rules/headmerge.smk"
include: "rules/detail_tables.smk"
include: "rules/compress.smk"
include: "rules/sensitivity.smk"
include: "rules/deltas.smk"


rule all:
    default_target: True
    input:
        all_targets,
