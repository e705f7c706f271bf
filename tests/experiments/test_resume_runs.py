"""A finished (variant, seed) run is reused by its stamp; a variant with byte-identical rows reuses another's run;
changed rows train again (``experiments.negatives.run.train``, with the training subprocess replaced)."""

from __future__ import annotations

import json

from experiments.negatives import run as runner
from experiments.negatives.datasets import DATASETS


def settings(tmp_path):
    return runner.Settings(dataset=DATASETS["nfcorpus"], out=tmp_path, seeds=[1], train_rows=4, judged_rows=1, arhn_rows=1)


def fake_training(calls):
    def run(cmd, log):
        out = runner.Path(cmd[cmd.index("--output_dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        calls.append(out.name)
        (out / "train_summary.json").write_text(json.dumps({"metrics": {"ndcg@10": 0.1 * len(calls)}}))
        (out / "eval_per_query.json").write_text(json.dumps({"queries": {"q1": {"ndcg@10": 0.1 * len(calls)}}}))
        return 1.0
    return run


def test_finished_runs_are_reused_and_identical_rows_share_a_run(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(runner, "run", fake_training(calls))
    s = settings(tmp_path)
    rows = tmp_path / "default.jsonl"
    rows.write_text('{"query": "q"}\n')
    same = tmp_path / "clear.jsonl"
    same.write_text(rows.read_text())
    other = tmp_path / "rlhn.jsonl"
    other.write_text('{"query": "q", "changed": true}\n')

    reused: dict = {}
    first = runner.train(s, "default", rows, 1, {}, reused)
    assert calls == ["default-s1"] and first[0]["ndcg@10"] == 0.1
    assert runner.train(s, "default", rows, 1, {}, reused) == first and calls == ["default-s1"]  # a rerun: reused
    assert runner.train(s, "clear", same, 1, {}, reused) == first and calls == ["default-s1"]  # same bytes: shared
    assert reused == {"clear seed 1": "default"}
    runner.train(s, "rlhn", other, 1, {}, reused)
    assert calls == ["default-s1", "rlhn-s1"]  # other rows: trained
    rows.write_text('{"query": "q2"}\n')
    runner.train(s, "default", rows, 1, {}, reused)
    assert calls == ["default-s1", "rlhn-s1", "default-s1"]  # changed rows: the stale run is not reused
