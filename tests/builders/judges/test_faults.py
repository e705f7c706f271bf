"""429, 503, 422, timeouts and garbage from the judge: the build finishes, nothing is lost,
every failure is counted in the report."""

import json
from collections import Counter

import datasets

from builders.build import build
from builders.recipe import load_recipe
from tests.builders.methods.rlhn.test_rlhn_replay import EXPECTED, recorded, replay_recipe_dict, stages_for
from tests.stand_ins.tgi_server import GARBAGE, OVERLOADED, UNAVAILABLE, VALIDATION, Fault, FaultRule


def _queries():
    r1 = recorded("fiqa", 1)
    flagged = [q for q in r1 if q in recorded("fiqa", 2)]
    clean = [q for q in r1 if q not in recorded("fiqa", 2)]
    return flagged, clean


def _recipe(tmp_path, servers, **over):
    import yaml

    path = tmp_path / "recipe.yaml"
    d = replay_recipe_dict(servers[0].url, servers[1].url, **over)
    d["output"] = {"folder": str(tmp_path / "out"), "store": str(tmp_path / "store.sqlite")}
    d["judges"]["stage1"]["timeout_s"] = 1.0
    path.write_text(yaml.safe_dump(d))
    return load_recipe(path)


def test_faults_are_survived_and_counted(tgi_stand_in, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("builders.judges.annotate.RetryPolicy.base_delay_s", 0.01)
    flagged, clean = _queries()
    a, d = flagged[0], flagged[1]  # 422 for a (never retried), garbage forever for d: stage 2 decides both
    b, c = clean[0], clean[1]  # a timeout for b, one garbage answer for c: retried, then fine
    faults1 = [
        FaultRule(OVERLOADED, at=0),
        FaultRule(UNAVAILABLE, at=1),
        FaultRule(OVERLOADED, at=2),
        FaultRule(VALIDATION, match=a, times=None),
        FaultRule(GARBAGE, match=d, times=None),
        FaultRule(Fault(delay_s=2.5), match=b, times=1),
        FaultRule(GARBAGE, match=c, times=1),
    ]
    servers, _ = stages_for(tgi_stand_in, subsets=("fiqa",), faults1=faults1, faults2=[FaultRule(UNAVAILABLE, at=0)])
    recipe = _recipe(tmp_path, servers)
    report = build(recipe, "python -m builders.cli recipe.yaml", progress=False)
    st = report["stats"]["fiqa"]
    assert (st["judged_stage1"], st["flagged_stage1"], st["failed_stage1"], st["unparsed_stage1"]) == (25, 15, 1, 1)
    assert (st["judged_stage2"], st["flagged_stage2"]) == (17, 10)  # a and d escalated, judged by stage 2
    assert st["parse_failures"] == 1
    f = report["failures"]
    assert f["failed:validation"] == 1 and f["unparseable"] == 1
    # every judge is a fleet: each failed attempt is counted by the endpoint it met, whether the fleet
    # re-sent it (429, 503 beside answers) or the annotator backed off and retried it
    met = sum((Counter(e["failures_by_kind"]) for stage in report["fleets"].values() for e in stage), Counter())
    assert (met["overloaded"], met["server"], met["timeout"]) == (2, 2, 1)
    assert all(f.get(f"retried:{kind}", 0) <= met[kind] for kind in ("overloaded", "server", "timeout"))
    assert f["parse_retries"] == 2  # c once (then fine), d once (still garbage)
    # nothing lost: every row in `default`, the edited configs as in the undisturbed replay
    for tech, (n, pos, neg) in EXPECTED["fiqa"].items():
        assert report["configs"].get(tech, 0) == n and st[f"{tech}:positives"] == pos and st[f"{tech}:negatives"] == neg
    judg = datasets.load_dataset(str(tmp_path / "out"), "judgments", split="train")
    s1 = [r for r in judg if r["stage"] == "stage1"]
    assert len(s1) == 25 and sum(r["status"] == "call_failed" for r in s1) == 1 and sum(r["status"] == "parse_failure" for r in s1) == 1
    assert next(r for r in s1 if r["status"] == "parse_failure")["raw_response"] == GARBAGE.text
    on_disk = json.loads(open(report["report"]).read())
    assert on_disk["failures"] == f
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| fiqa |" in card and "failed_stage1" in card


def test_a_query_no_stage_can_judge_is_excluded_and_counted(tgi_stand_in, tmp_path, monkeypatch):
    monkeypatch.setattr("builders.judges.annotate.RetryPolicy.base_delay_s", 0.01)
    flagged, _ = _queries()
    a = flagged[0]
    servers, _ = stages_for(tgi_stand_in, subsets=("fiqa",), faults1=[FaultRule(VALIDATION, match=a, times=None)], faults2=[FaultRule(VALIDATION, match=a, times=None)])
    report = build(_recipe(tmp_path, servers), "cmd", progress=False)
    st = report["stats"]["fiqa"]
    assert st["rows_failed"] == 1 and report["failures"]["failed:validation"] == 2
    assert report["configs"]["default"] == 25
    rl = datasets.load_dataset(str(tmp_path / "out"), "rlhn", split="train")
    from builders.rows import md5

    assert md5(a) not in set(rl["query_id"]) and len(rl) == 24
