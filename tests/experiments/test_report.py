"""The table's arithmetic on a hand-made run: means, stds, deltas, precision/recall, the paired lines."""

from __future__ import annotations

import pytest

from experiments.negatives.report import mean_std, paired_lines, precision_recall, table, verdicts


def m(ndcg):
    return {"ndcg@10": ndcg, "recall@100": 0.9, "mrr@10": 0.5}


def pair(mean, low, high, resolved):
    return {"queries": 3, "mean_diff": mean, "ci_low": low, "ci_high": high, "t_p": 0.01, "wilcoxon_p": 0.00001,
            "wins": 2, "losses": 1, "ties": 0, "resolved": resolved}


RAW = {
    "facts": {"seeds": [1, 2, 3]},
    "metrics": {"base": [m(0.60)], "default": [m(0.70), m(0.72), m(0.74)],
                "oracle_relabel": [m(0.71), m(0.74), m(0.77)]},
    "counts": {"default": {"rows": 4, "positives": 4, "negatives": 16, "judge_answers": 0},
               "oracle_relabel": {"rows": 4, "positives": 6, "negatives": 14, "judge_answers": 0}},
    "paired": {"base": pair(-0.12, -0.2, -0.05, True), "oracle_relabel": pair(0.02, -0.01, 0.05, False),
               "rlhn": pair(0.03, 0.01, 0.05, True)},
    "agreement": {"rlhn": {"overall": {"kappa": 0.25, "table": {"human_1": {"judge_1": 3, "judge_0": 1},
                                                                "human_0": {"judge_1": 6, "judge_0": 10}}}}},
}


def test_mean_and_sample_std():
    assert mean_std([0.70, 0.72, 0.74]) == (pytest.approx(0.72), pytest.approx(0.02))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_table_rows_and_deltas():
    lines = table(RAW)
    base, default, oracle = lines[2], lines[3], lines[4]
    assert base.startswith("| base (no fine-tuning) |") and "| -0.120 |" in base  # base - default mean
    assert "| 0.720 ± 0.020 |" in default and "| +0.120 | +0.000 |" in default
    assert "| 0.740 ± 0.030 |" in oracle and "| +0.140 | +0.020 |" in oracle and "0.710, 0.740, 0.770" in oracle


def test_precision_recall_from_the_confusion_table():
    t = {"human_1": {"judge_1": 3, "judge_0": 1}, "human_0": {"judge_1": 6, "judge_0": 10}}
    assert precision_recall(t) == (pytest.approx(3 / 9), pytest.approx(3 / 4))
    assert precision_recall({"human_1": {"judge_1": 0, "judge_0": 2}, "human_0": {"judge_1": 0, "judge_0": 5}}) == (None, 0.0)


def test_paired_lines_put_the_ci_beside_the_agreement():
    lines = paired_lines(RAW)
    rlhn = next(x for x in lines if x.startswith("| rlhn |"))
    assert "| +0.0300 | [+0.0100, +0.0500] | 0.0100 | < 0.0001 | 2 / 1 / 0 | yes | 0.250 | 0.333 | 0.750 |" in rlhn
    oracle = next(x for x in lines if x.startswith("| oracle_relabel |"))
    assert "| no | 1.000 | 1.000 | 1.000 |" in oracle  # the oracle is the known labels themselves
    assert lines[2].startswith("| base (no fine-tuning) | -0.1200 |")


def test_verdicts_say_which_differences_are_resolved():
    text = "\n".join(verdicts(RAW))
    assert "`rlhn` is **better** than `default`" in text
    assert "the base model is **worse** than `default`" in text
    assert "`oracle_relabel` vs `default` (+0.0200, CI [-0.0100, +0.0500]): **not resolved**" in text
    assert "One seed" not in text
    assert "One seed" in "\n".join(verdicts({**RAW, "facts": {"seeds": [1]}}))


def test_control_lines_pair_a_variant_with_its_control():
    from experiments.negatives.report import control_lines

    lines = control_lines({"controls": {"oracle_remove − random_remove": pair(0.009, 0.005, 0.013, True)}})
    assert lines == ["- Control, oracle_remove − random_remove (the same number of negatives dropped per row, the "
                     "variant's choice vs at random): +0.0090, CI [+0.0050, +0.0130], paired t p 0.0100, Wilcoxon p < 0.0001: resolved."]
    assert control_lines({}) == []
