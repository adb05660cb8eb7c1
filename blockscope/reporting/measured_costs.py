"""Where a run's time and memory went, from Snakemake's benchmark files (one per job, at
results/{model}/benchmarks/{rule}/{job}.tsv: wall seconds `s`, peak resident `max_rss` in MB,
`cpu_time` in seconds)."""

from pathlib import Path

import pandas as pd

COST_COLUMNS = ["s", "max_rss", "cpu_time"]


def read_benchmarks(paths) -> pd.DataFrame:
    """One row per job: rule, job, s, max_rss, cpu_time (the mean over a job's repeats)."""
    rows = []
    for path in map(Path, paths):
        table = pd.read_csv(path, sep="\t")
        costs = table[COST_COLUMNS].apply(pd.to_numeric, errors="coerce").mean()  # "NA" for jobs too short to sample
        rows.append({"rule": path.parent.name, "job": path.stem, **costs.to_dict()})
    return pd.DataFrame(rows, columns=["rule", "job", *COST_COLUMNS])


def cost_by_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, total and longest wall seconds, share of the total, CPU seconds, peak RSS."""
    grouped = jobs.groupby("rule")
    table = pd.DataFrame({"jobs": grouped.size(), "seconds": grouped["s"].sum(), "longest_s": grouped["s"].max(),
                          "cpu_s": grouped["cpu_time"].sum(), "peak_rss_mb": grouped["max_rss"].max()})
    table.insert(2, "share", table["seconds"] / table["seconds"].sum() if table["seconds"].sum() else float("nan"))
    return table.sort_values("seconds", ascending=False).reset_index()


def costliest_jobs(jobs: pd.DataFrame, count: int = 10) -> pd.DataFrame:
    """The jobs that took longest, with their memory."""
    return jobs.sort_values("s", ascending=False).head(count).reset_index(drop=True)
