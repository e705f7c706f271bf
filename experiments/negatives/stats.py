"""Paired statistics over the test queries: is a variant's nDCG@10 different from ``default``'s?

Each (variant, seed) run writes every test query's metrics (``eval_per_query.json``). A variant's per-query
value is its mean over the seeds; the paired difference of a query is variant − default on that query. Over
the queries: the mean difference, a percentile bootstrap 95 % CI (queries resampled with replacement,
seeded), the paired t-test's two-sided p and the Wilcoxon signed-rank test's two-sided p (zero differences
dropped, as ``scipy.stats.wilcoxon`` does by default). A difference is **resolved** when its CI excludes 0.

Seeds average out the training noise per query; the queries carry the sampling noise a reviewer asks about
(would another draw of test queries give the same sign?). With one seed the test says nothing about training
noise, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP = 10_000
SEED = 0


@dataclass(frozen=True)
class Paired:
    queries: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t_p: float
    wilcoxon_p: float
    wins: int  # queries where the variant scores higher
    losses: int  # ... lower
    ties: int

    @property
    def resolved(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict:
        return {**asdict(self), "resolved": self.resolved}


def seed_mean(runs: list[dict[str, dict[str, float]]], metric: str = "ndcg@10") -> dict[str, float]:
    """Per query, the mean of ``metric`` over the runs (seeds); every run must hold the same queries."""
    if not runs:
        raise ValueError("no runs to average")
    queries = set(runs[0])
    for i, r in enumerate(runs[1:], 2):
        if set(r) != queries:
            raise ValueError(f"run {i} holds other queries than run 1 ({len(set(r) ^ queries)} differ)")
    return {q: sum(r[q][metric] for r in runs) / len(runs) for q in sorted(queries)}


def paired(variant: dict[str, float], default: dict[str, float], resamples: int = BOOTSTRAP, seed: int = SEED) -> Paired:
    """variant − default over the queries both hold (they must hold the same ones)."""
    if set(variant) != set(default):
        raise ValueError(f"the two sides hold different queries ({len(set(variant) ^ set(default))} differ)")
    qids = sorted(variant)
    d = np.array([variant[q] - default[q] for q in qids], dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("no queries to compare")
    mean = float(d.mean())
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return Paired(queries=n, mean_diff=mean, ci_low=low, ci_high=high, t_p=t_test_p(d), wilcoxon_p=wilcoxon_p(d),
                  wins=int((d > 0).sum()), losses=int((d < 0).sum()), ties=int((d == 0).sum()))


def t_test_p(d: np.ndarray) -> float:
    """Two-sided p of the paired t-test (one-sample t on the differences); 1.0 when they are all equal."""
    from scipy import stats

    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or sd == 0.0:
        return 1.0 if float(d.mean()) == 0.0 or n < 2 else 0.0
    t = float(d.mean()) / (sd / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), df=n - 1))


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided p of the Wilcoxon signed-rank test; 1.0 when every difference is zero."""
    from scipy import stats

    nonzero = d[d != 0]
    if len(nonzero) == 0:
        return 1.0
    return float(stats.wilcoxon(nonzero).pvalue)


def fmt_p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"
