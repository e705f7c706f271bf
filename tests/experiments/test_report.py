"""The table's arithmetic on a hand-made run: means, stds, deltas, precision/recall, the noise rule."""

from __future__ import annotations

import pytest

from experiments.scifact_negatives.report import mean_std, noise_note, precision_recall, table


def m(ndcg):
    return {"ndcg@10": ndcg, "recall@100": 0.9, "mrr@10": 0.5}


RAW = {
    "metrics": {"base": [m(0.60)], "default": [m(0.70), m(0.72), m(0.74)], "oracle": [m(0.71), m(0.74), m(0.77)]},
    "counts": {"default": {"rows": 4, "positives": 4, "negatives": 16, "judge_answers": 0},
               "oracle": {"rows": 4, "positives": 6, "negatives": 14, "judge_answers": 0}},
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


def test_noise_rule():
    assert "within seed noise" in noise_note(RAW["metrics"])  # +0.02 < 2 x 0.03
    wide = {"default": [m(0.70), m(0.701), m(0.702)], "oracle": [m(0.75), m(0.751), m(0.752)]}
    assert "larger than twice" in noise_note(wide)
