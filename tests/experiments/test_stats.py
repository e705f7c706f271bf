"""The paired statistics on hand-made cases: the mean difference, the bootstrap CI, the t and Wilcoxon p."""

from __future__ import annotations

import pytest

from experiments.negatives.stats import paired, seed_mean


def test_seed_mean_averages_each_query_over_the_runs():
    runs = [{"q1": {"ndcg@10": 0.2}, "q2": {"ndcg@10": 0.6}}, {"q1": {"ndcg@10": 0.4}, "q2": {"ndcg@10": 0.8}}]
    assert seed_mean(runs) == {"q1": pytest.approx(0.3), "q2": pytest.approx(0.7)}
    with pytest.raises(ValueError, match="other queries"):
        seed_mean([{"q1": {"ndcg@10": 0.1}}, {"q2": {"ndcg@10": 0.1}}])


def test_a_consistent_gain_is_resolved_with_exact_t_and_wilcoxon_values():
    # differences 0.1, 0.2, 0.3, 0.4 on four queries: mean 0.25, sd 0.1291, t = 3.873 with 3 df
    default = {f"q{i}": 0.5 for i in range(4)}
    variant = {f"q{i}": 0.5 + 0.1 * (i + 1) for i in range(4)}
    p = paired(variant, default)
    assert p.queries == 4 and p.mean_diff == pytest.approx(0.25)
    assert p.t_p == pytest.approx(0.030466, abs=1e-5)  # scipy.stats.ttest_rel on the same numbers
    assert p.wilcoxon_p == pytest.approx(0.125)  # exact: all 4 signs positive, 2 / 2**4
    assert 0.1 <= p.ci_low < 0.25 < p.ci_high <= 0.4 and p.resolved
    assert (p.wins, p.losses, p.ties) == (4, 0, 0)


def test_differences_that_cancel_are_not_resolved():
    default = {f"q{i}": 0.5 for i in range(20)}
    variant = {f"q{i}": 0.5 + (0.1 if i % 2 else -0.1) for i in range(20)}
    p = paired(variant, default)
    assert p.mean_diff == pytest.approx(0.0, abs=1e-12)
    assert p.ci_low < 0 < p.ci_high and not p.resolved
    assert p.t_p == pytest.approx(1.0) and p.wilcoxon_p > 0.9
    assert (p.wins, p.losses) == (10, 10)


def test_identical_runs_and_a_loss():
    same = {"a": 0.3, "b": 0.7}
    p = paired(same, same)
    assert p.mean_diff == 0 and p.t_p == 1.0 and p.wilcoxon_p == 1.0 and not p.resolved and p.ties == 2
    worse = paired({f"q{i}": 0.2 - 0.01 * (i % 3) for i in range(30)}, {f"q{i}": 0.5 for i in range(30)})
    assert worse.resolved and worse.ci_high < 0 and worse.t_p < 1e-6


def test_the_bootstrap_is_seeded_and_the_sides_must_match():
    a = {f"q{i}": (i * 7 % 10) / 10 for i in range(50)}
    b = {f"q{i}": (i * 3 % 10) / 10 for i in range(50)}
    assert paired(a, b) == paired(a, b)
    with pytest.raises(ValueError, match="different queries"):
        paired({"q1": 0.1}, {"q2": 0.1})
