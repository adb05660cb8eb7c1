"""The comparisons table of the compression experiments (layout.COMPARISON_COLUMNS): each spectral
plan against its controls, paired by window (blockscope.evaluation.paired_tests), in mean NLL per
token (nats; negative: the plan is better), or for an encoder in mean embedding loss per sentence
(1 - cosine to the base's embedding; metric "embedding_loss", evaluation.variants.comparison_metric).

Quantisation, per preset: the hint plan against its mirror, the uniform plan at the same or a lower
budget (the uniform plan with the most bits per weight not above the hint's), the mean of its
within-shape random plans and the mean of its budget-matched random plans (p_value: the hint's
rank among them), and the oracle plan when there is one. Pruning, per target: the alpha allocation
against its mirror, the uniform allocation and the mean of the random ones (p_value likewise).
A control that does not exist gets a row all the same: its against_plan says why, its estimate,
interval and verdict are NaN.
"""

import numpy as np
import pandas as pd

from blockscope.compression.controls import uniform_at_or_below
from blockscope.evaluation.paired_tests import comparison_row, paired_difference, rank_p_value
from blockscope.evaluation.scores import WindowScores
from blockscope.layout import COMPARISON_COLUMNS

FIELD = "nll"  # the WindowScores field compared: an encoder's holds its embedding loss (metric names which)
CONTROL_WORDS = {"random": "random plans", "budget_random": "budget-matched random plans"}


def mean_nll(scores: WindowScores) -> float:
    """A plan's mean NLL per token over all its windows (what its rank among random plans compares)."""
    return float(np.sum(scores.nll) / np.sum(scores.tokens))


class Comparer:
    """Rows of one experiment's comparisons: the model, the experiment, the scores by plan name,
    the interval level, the minimum effect a verdict names, the articles the windows cover and
    the metric the field nll holds ("nll", or "embedding_loss" for an encoder)."""

    def __init__(self, model: str, experiment: str, scores: dict, level: float, min_effect: float,
                 articles: int | None, metric: str = "nll"):
        self.model, self.experiment, self.scores = model, experiment, scores
        self.level, self.min_effect, self.articles, self.metric = level, min_effect, articles, metric

    def missing(self, plan: str, against: str, why: str) -> dict:
        """A control that does not exist: against_plan says why; estimate, interval, verdict NaN."""
        scores = self.scores[plan]
        row = {"model": self.model, "experiment": self.experiment, "plan": plan, "against": against,
               "against_plan": why, "metric": self.metric, "level": self.level, "min_effect": self.min_effect,
               "windows": len(scores.tokens), "tokens": int(np.sum(scores.tokens)),
               "articles": np.nan if self.articles is None else self.articles}
        return {column: row.get(column, np.nan) for column in COMPARISON_COLUMNS}

    def paired(self, plan: str, against: str, other: str) -> dict:
        """The plan against one other plan."""
        result = paired_difference(self.scores[plan], self.scores[other], level=self.level, field=FIELD)
        return comparison_row(self.model, self.experiment, plan, against, other, result, self.min_effect,
                              articles=self.articles, metric=self.metric)

    def random_mean(self, plan: str, against: str, others: list) -> dict:
        """The plan against the per-window mean of random plans; p_value its rank among them."""
        if not others:
            return self.missing(plan, against, f"no distinct {CONTROL_WORDS[against][:-1]}")
        controls = [self.scores[other] for other in others]
        result = paired_difference(self.scores[plan], controls, level=self.level, field=FIELD)
        p_value = rank_p_value(mean_nll(self.scores[plan]), [mean_nll(c) for c in controls])
        return comparison_row(self.model, self.experiment, plan, against,
                              f"mean of {len(others)} {CONTROL_WORDS[against]}", result, self.min_effect,
                              p_value=p_value, n_random=len(others), articles=self.articles, metric=self.metric)


def frame(rows: list) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def named(table: pd.DataFrame, kind: str, **where) -> list:
    """The plan names of `kind` in the summary table (rows matching `where` too), in table order."""
    rows = table[table["kind"] == kind]
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return rows["plan"].tolist()


def quant_comparisons(table: pd.DataFrame, scores: dict, model: str, level: float, min_effect: float,
                      articles: int | None, missing: dict = None, metric: str = "nll") -> pd.DataFrame:
    """Per hint plan: against its mirror, the uniform plan at or below its budget, the random and
    budget_random plans' means, and the oracle plan (when there is one, or when `missing`,
    {(plan, against): why}, says why not). metric: what the scores' nll holds (Comparer)."""
    compare, rows = Comparer(model, "quant", scores, level, min_effect, articles, metric), []
    missing = missing or {}
    uniform = table[table["kind"] == "uniform"].set_index("plan")["bits_per_weight"].to_dict()
    for hint in table[table["kind"] == "hint"].itertuples(index=False):
        preset = hint.of
        for mirror in named(table, "mirror", of=preset):
            rows.append(compare.paired(hint.plan, "mirror", mirror))
        control = uniform_at_or_below(uniform, hint.bits_per_weight)
        rows.append(compare.paired(hint.plan, "uniform", control) if control else
                    compare.missing(hint.plan, "uniform", "none at or below this budget"))
        for kind in ("random", "budget_random"):
            rows.append(compare.random_mean(hint.plan, kind, named(table, kind, of=preset)))
        for oracle in named(table, "oracle", of=preset):
            rows.append(compare.paired(hint.plan, "oracle", oracle))
        if (hint.plan, "oracle") in missing:
            rows.append(compare.missing(hint.plan, "oracle", missing[(hint.plan, "oracle")]))
    return frame(rows)


def prune_comparisons(table: pd.DataFrame, scores: dict, model: str, level: float, min_effect: float,
                      articles: int | None, metric: str = "nll") -> pd.DataFrame:
    """Per target: the alpha allocation against its mirror, the uniform one and the random ones' mean."""
    compare, rows = Comparer(model, "prune", scores, level, min_effect, articles, metric), []
    for alpha in table[table["kind"] == "alpha"].itertuples(index=False):
        for kind in ("mirror", "uniform"):
            others = named(table, kind, target=alpha.target)
            rows += [compare.paired(alpha.plan, kind, other) for other in others]
            rows += [] if others else [compare.missing(alpha.plan, kind, f"no {kind} allocation")]
        rows.append(compare.random_mean(alpha.plan, "random", named(table, "random", target=alpha.target)))
    return frame(rows)
