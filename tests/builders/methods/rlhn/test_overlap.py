"""The cascade's two stages at once: stage 2 asks about a row as soon as stage 1 escalates it,
when stage 2 is another remote judge. The output is the same as with the stages one after the
other; only when the calls go out differs."""

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from builders.build import build
from builders.recipe import load_recipe
from tests.builders.methods.rlhn.test_rlhn_replay import recorded, replay_recipe_dict, replayer
from tests.stand_ins.tgi_server import UNAVAILABLE, FaultRule


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _clocked(answers: dict[str, str], times: list[float]):
    respond = replayer(answers)

    def clocked(request: dict) -> str:
        times.append(time.monotonic())
        return respond(request)

    return clocked


def _build(tmp_path: Path, name: str, servers, **rlhn) -> dict:
    recipe = replay_recipe_dict(servers[0].url, servers[1].url, **rlhn)
    recipe["judges"]["stage1"]["concurrency"] = 2
    recipe["output"] = {"folder": str(tmp_path / name / "out"), "store": str(tmp_path / name / "store.sqlite")}
    (tmp_path / name).mkdir()
    path = tmp_path / name / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return build(load_recipe(path), "python -m builders.cli recipe.yaml", progress=False)


@pytest.mark.parametrize("stage2_faults", [None, [FaultRule(UNAVAILABLE, at=0), FaultRule(UNAVAILABLE, at=3)]], ids=["clean", "stage2-503s"])
def test_stage2_starts_before_stage1_ends_and_the_output_is_unchanged(tgi_stand_in, tmp_path, monkeypatch, stage2_faults):
    monkeypatch.setattr("builders.methods.rlhn.cascade.STAGE2_LINGER_S", 0.05)
    big = dict(max_input_tokens=200_000, max_total_tokens=300_000)
    runs = {}
    for name, overlap in (("overlapped", True), ("one-after-the-other", False)):
        t1, t2 = [], []
        s1 = tgi_stand_in(_clocked(recorded("fiqa", 1), t1), **big)
        s2 = tgi_stand_in(_clocked(recorded("fiqa", 2), t2), faults=stage2_faults and [FaultRule(f.fault, at=f.at) for f in stage2_faults], **big)
        s1.delay_s = 0.1  # 25 windows, 2 at a time: stage 1 takes ~1.3 s
        report = _build(tmp_path, name, (s1, s2), overlap_stages=overlap)
        runs[name] = (report, t1, t2, _files(tmp_path / name / "out"))
        assert len(t1) == 25 and len(t2) == 17 and len(s2.requests) == 17 + (2 if stage2_faults else 0)  # 503s re-sent
    overlapped, sequential = runs["overlapped"], runs["one-after-the-other"]
    # when: with the overlap, stage 2 answers while stage 1 still has most of its calls to make
    first2, last1 = min(overlapped[2]), max(overlapped[1])
    assert sum(t > first2 for t in overlapped[1]) >= 10, (first2, sorted(overlapped[1]))
    assert min(sequential[2]) > max(sequential[1])  # off: stage 2 only after stage 1's last answer
    assert last1 - first2 > 0.5
    # what: byte for byte the same dataset, judgments and card (with 503s, which call met one and
    # whether the fleet re-sent it or the annotator retried it depends on timing, in either mode:
    # the attempts recorded per answer may differ, nothing else)
    assert overlapped[3].keys() == sequential[3].keys() and "judgments/train-00000-of-00001.parquet" in overlapped[3]
    timing = {"README.md", "judgments/train-00000-of-00001.parquet"} if stage2_faults else set()
    for name in set(overlapped[3]) - timing:
        assert overlapped[3][name] == sequential[3][name], name
    if stage2_faults:
        tables = [pq.read_table(tmp_path / name / "out" / "judgments").drop(["attempts"]) for name in runs]
        assert tables[0].equals(tables[1]) and tables[0].num_rows == 25 + 17
    card = overlapped[3]["README.md"].decode()
    assert "Order and resume: when stage 2 is another remote judge" in card and "asks, in either stage, only what was never answered" in card
    a, b = overlapped[0], sequential[0]
    drop = ("judge_calls_stage2",) if stage2_faults else ()
    assert {k: v for k, v in a["stats"]["fiqa"].items() if k not in drop} == {k: v for k, v in b["stats"]["fiqa"].items() if k not in drop}
    assert a["stats"]["fiqa"]["judged_stage2"] == 17
    for stage in ("stage1", "stage2"):
        la, lb = (next(iter(r["judge_runs"][stage].values())) for r in (a, b))
        keys = ("items", "ok", "cached") + (() if stage2_faults else ("calls",))
        assert {k: la[k] for k in keys} == {k: lb[k] for k in keys}

