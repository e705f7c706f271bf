"""A build that runs several methods on the same rows, end to end through recipe -> build ->
outputs -> card, with scripted judges on the TGI stand-in: RLHN + ARHN + PercPos (row teacher
scores), CLEAR (prefill log-probabilities), and a judge served by a fleet of two stand-ins."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import datasets
import pytest
import yaml

from builders.build import build
from builders.cli import main
from builders.methods.base import BuildError
from builders.recipe import load_recipe
from builders.rows import md5
from tests.stand_ins.tgi_server import prompt_of

EIFFEL = {
    "query": "Who designed the Eiffel Tower?",
    "pos": ["The Eiffel Tower was designed by the engineering firm of Gustave Eiffel. It opened in 1889."],
    "neg": ["Gustave Eiffel's company designed and built the tower in Paris.",
            "The tower is repainted every seven years.",
            "Bananas are rich in potassium.",
            "Maurice Koechlin drew the first sketch of the tower. He worked for Eiffel."],
    "pos_scores": [0.9], "neg_scores": [0.95, 0.5, 0.1, 0.6],
}
HAMLET = {
    "query": "Who wrote Hamlet?",
    "pos": ["Hamlet is a tragedy written by William Shakespeare."],
    "neg": ["Shakespeare wrote Hamlet around 1600.", "Macbeth is set in Scotland."],
    "pos_scores": [0.8], "neg_scores": [0.7, 0.2],
}
EXTRACT = {  # ARHN stage 1: Eiffel's doc3 snippet is not in the document (a hallucination), doc4 NO_ANSWER
    EIFFEL["query"]: ("[[[doc1]]]The Eiffel Tower was designed by the engineering firm of Gustave Eiffel.[[[/doc1]]]\n"
                      "[[[doc2]]]Gustave Eiffel's company designed and built the tower in Paris.[[[/doc2]]]\n"
                      "[[[doc3]]]The tower was designed by Stephen Sauvestre.[[[/doc3]]]\n"
                      "[[[doc4]]]NO_ANSWER[[[/doc4]]]\n"
                      "[[[doc5]]]Maurice Koechlin drew the first sketch of the tower.[[[/doc5]]]"),
    HAMLET["query"]: ("[[[doc1]]]Hamlet is a tragedy written by William Shakespeare.[[[/doc1]]]"
                      "[[[doc2]]]Shakespeare wrote Hamlet around 1600.[[[/doc2]]][[[doc3]]]NO_ANSWER[[[/doc3]]]"),
}
RANK = {EIFFEL["query"]: "[2] > [1] > [3]", HAMLET["query"]: "[1] > [2]"}  # Eiffel: neg1 relabel, neg4 filter; Hamlet: neg1 filter
VERDICT = {  # RLHN (one stage): Eiffel's Doc (1) is a false negative, Hamlet has none
    EIFFEL["query"]: "Doc (1) names the designer. <verdict><better> [Doc (1)] </better>, <worse> [] </worse></verdict>",
    HAMLET["query"]: "Neither answers better. <verdict><better> [] </better>, <worse> [] </worse></verdict>",
}


def respond(request: dict) -> str:
    prompt = prompt_of(request)
    if "Reply with exactly" in prompt:  # ARHN extract (and CLEAR's answer extraction)
        table = EXTRACT
    elif "<verdict>" in prompt:  # RLHN
        table = VERDICT
    else:
        table = RANK
    for query, answer in table.items():
        if query in prompt:
            return answer
    raise AssertionError(f"unscripted prompt: {prompt[:300]}")


def write_rows(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nq.jsonl").write_text(json.dumps(EIFFEL) + "\n", encoding="utf-8")
    (folder / "msmarco.jsonl").write_text(json.dumps(HAMLET) + "\n", encoding="utf-8")
    return folder


def recipe_file(tmp_path: Path, judge, **extra) -> Path:
    data = write_rows(tmp_path / "data")
    recipe = {
        "name": "methods",
        "sources": [{"path": str(data / "nq.jsonl"), "subset": "nq"}, {"path": str(data / "msmarco.jsonl"), "subset": "msmarco_passage"}],
        "validation": {"policy": "fail"},
        "judges": {"stage1": judge},
        "output": {"folder": str(tmp_path / "out"), "store": str(tmp_path / "cache" / "j.sqlite")},
        "card": {"license": "mit"},
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


ARHN = {"max_negatives": 4, "constrained": "off", "positive_without_snippet": "skip"}


def load(folder: Path, name: str):
    return datasets.load_dataset(str(folder), name, split="train")


def card_row(card: str, method: str, subset: str) -> list[str]:
    lines = [x for x in card.splitlines() if x.startswith(f"| {method} | {subset} |")]
    assert lines, f"no side-by-side row for {method}/{subset}"
    return [c.strip() for c in lines[0].strip("|").split("|")]


def test_rlhn_arhn_percpos_on_the_same_rows(tgi_stand_in, tmp_path):
    server = tgi_stand_in(respond)
    judge = {"kind": "tgi", "url": server.url, "model": "stand-in/judge", "concurrency": 2}
    path = recipe_file(tmp_path, judge, rlhn={"negatives_per_prompt": 4}, arhn=ARHN,
                       percpos={"teacher": "row-scores", "margin": 0.95, "top_k": 2},
                       prices={"stand-in/judge": {"prompt": 1.0, "completion": 2.0}})
    report = build(load_recipe(path), "python -m builders.cli recipe.yaml", progress=False)
    out = tmp_path / "out"
    for name in ("default", "rlhn", "hn_remove", "arhn_relabel", "arhn_filter", "arhn_rf", "percpos",
                 "judgments", "judgments_arhn", "judgments_percpos"):
        assert load(out, name).num_rows > 0, name

    eiffel = {r["subset"]: r for r in load(out, "arhn_rf")}["nq"]
    negs = [md5(t) for t in EIFFEL["neg"]]
    assert [p["docid"] for p in eiffel["positive_passages"]] == [md5(EIFFEL["pos"][0]), negs[0]]
    assert [p["docid"] for p in eiffel["negative_passages"]] == [negs[1], negs[2]]
    pp = {r["subset"]: r for r in load(out, "percpos")}
    assert [p["docid"] for p in pp["nq"]["negative_passages"]] == [negs[3], negs[1]]  # 0.95 > 0.855 dropped, top 2 kept

    arhn_j = load(out, "judgments_arhn")
    extract = [r for r in arhn_j if r["stage"] == "arhn/extract" and r["subset"] == "nq"][0]
    assert extract["hallucinated"] == [False, False, True, False, False] and extract["snippets"][3] == "NO_ANSWER"
    rank = [r for r in arhn_j if r["stage"] == "arhn/rank" and r["subset"] == "nq"][0]
    assert {d["docid"]: d["decision"] for d in rank["decisions"]} == {negs[0]: "relabel", negs[1]: "keep", negs[2]: "keep", negs[3]: "filter"}
    assert set(load(out, "judgments_percpos").column_names) >= {"teacher_score", "cutoff", "decision"}
    from builders.agreement import decisions_from_configs, decisions_from_judgments
    by_judgments = decisions_from_judgments(out, "arhn_rf")  # the agreement command finds judgments_arhn
    assert by_judgments[md5(EIFFEL["query"])][1] == {negs[0]: 1, negs[1]: 0, negs[2]: 0, negs[3]: 1}
    by_configs, dropped = decisions_from_configs(out, "arhn_rf")  # ... and `default` to compare against
    assert by_configs[md5(EIFFEL["query"])][1] == by_judgments[md5(EIFFEL["query"])][1] and not dropped
    assert set(load(out, "judgments").column_names) >= {"better_docids", "raw_response", "prompt_version"}

    # 2 RLHN verdicts + 2 ARHN extracts + 2 ARHN rankings; PercPos calls no judge
    assert len([r for r in server.requests if r.path in ("/generate", "/")]) == 6
    card = (out / "README.md").read_text(encoding="utf-8")
    by_hand = {  # method, subset -> rows, positives added (per query), negatives removed (per query), hallucinated, parse failures, judge calls
        ("rlhn", "nq"): ["1", "1 (1.00)", "1 (1.00)", "0", "0", "1"],
        ("rlhn", "msmarco_passage"): ["1", "0 (0.00)", "0 (0.00)", "0", "0", "1"],
        ("arhn", "nq"): ["1", "1 (1.00)", "2 (2.00)", "1", "0", "2"],
        ("arhn", "msmarco_passage"): ["1", "0 (0.00)", "1 (1.00)", "0", "0", "2"],
        ("percpos", "nq"): ["1", "0 (0.00)", "1 (1.00)", "0", "0", "0"],
        ("percpos", "msmarco_passage"): ["1", "0 (0.00)", "0 (0.00)", "0", "0", "0"],
    }
    stats = report["method_stats"]
    for (method, subset), expected in by_hand.items():
        row = card_row(card, method, subset)
        assert row[2:8] == expected, (method, subset, row)
        tokens = [int(x.replace(",", "")) for x in row[8:10]]
        if method == "percpos":
            assert tokens == [0, 0]
        else:  # tokens as the stand-in reported them for the calls of that subset
            counters = stats[method][subset]
            want = [sum(v for k, v in counters.items() if k.startswith(t)) for t in ("prompt_tokens", "completion_tokens")]
            assert tokens == want and all(t > 0 for t in tokens)
    assert "@article{choi2026arhn" in card and "## Cost ledger" in card

    # the ledger (report and card) adds up to what the stand-in saw and is priced
    led = report["ledger"]
    assert led["total"]["requests"] == 6 and led["total"]["lost"] == 0
    assert led["total"]["completion_tokens"] == sum(
        v for m in ("rlhn", "arhn") for c in stats[m].values() for k, v in c.items() if k.startswith("completion_tokens"))
    assert led["total"]["usd"] == pytest.approx((led["total"]["prompt_tokens"] * 1.0 + led["total"]["completion_tokens"] * 2.0) / 1e6)


def test_clear_threshold_keeps_positive_confidences(tgi_stand_in, tmp_path):
    server = tgi_stand_in(respond, logprob_fn=lambda text, pos: math.log(0.8))
    rows = [dict(EIFFEL), dict(HAMLET)]
    for r in rows:
        r.pop("pos_scores"), r.pop("neg_scores")
    data = tmp_path / "data"
    data.mkdir()
    (data / "nq.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    recipe = {
        "name": "clear", "sources": [{"path": str(data / "nq.jsonl"), "subset": "nq"}],
        "judges": {"stage1": {"kind": "tgi", "url": server.url, "model": "stand-in/judge"}},
        "clear": {"tau": 0.01, "phi": 0.3, "max_pfn": 2, "extract_answers": True},
        "output": {"folder": str(tmp_path / "out"), "store": str(tmp_path / "j.sqlite")},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    report = build(load_recipe(tmp_path / "r.yaml"), "cmd", progress=False)
    out = tmp_path / "out"
    for name in ("default", "clear_llm", "clear_augment", "clear_threshold", "judgments_clear"):
        assert load(out, name).num_rows > 0, name
    threshold = load(out, "clear_threshold")
    assert "positive_scores" in threshold.column_names
    for r in threshold:  # every positive keeps its confidence: 0.8 per answer token -> cs = 1 - sqrt(0.2^2) = 0.8
        assert len(r["positive_scores"]) == len(r["positive_passages"])
        assert all(s == pytest.approx(0.8) for s in r["positive_scores"])
    assert "positive_scores" not in load(out, "default").column_names
    assert {"answer", "answer_source"} <= set(load(out, "judgments_clear").column_names)
    assert report["ledger"]["total"]["requests"] == len([r for r in server.requests if r.path in ("/generate", "/")])


def test_clear_without_prefill_logprobs_names_the_flag(tgi_stand_in, tmp_path, capsys):
    server = tgi_stand_in(respond, prefill_logprobs=False)
    path = recipe_file(tmp_path, {"kind": "tgi", "url": server.url, "model": "m"}, clear={"tau": 0.01, "max_pfn": 1})
    with pytest.raises(BuildError, match="--enable-prefill-logprobs"):
        build(load_recipe(path), "cmd", progress=False)
    assert main([str(path), "--no-progress"]) == 2  # the CLI says it in one line, no traceback
    assert "--enable-prefill-logprobs" in capsys.readouterr().err


def test_fleet_judge_ledger_matches_the_stand_ins(tgi_stand_in, tmp_path, capsys):
    a, b = tgi_stand_in(respond), tgi_stand_in(respond)
    fleet = [{"kind": "tgi", "url": s.url, "model": "stand-in/judge", "concurrency": 1} for s in (a, b)]
    path = recipe_file(tmp_path, fleet, rlhn={"negatives_per_prompt": 4}, arhn=ARHN, fleet={"default_limit": 1})
    report = build(load_recipe(path), "cmd", progress=False)
    calls = {s.url: len([r for r in s.requests if r.path in ("/generate", "/")]) for s in (a, b)}
    assert sum(calls.values()) == 6
    rows = report["ledger"]["rows"]
    per_endpoint = {}
    for r in rows:
        if r["endpoint"] != "(annotator)":
            per_endpoint[r["endpoint"]] = per_endpoint.get(r["endpoint"], 0) + r["requests"]
    assert sum(per_endpoint.values()) == 6 == report["ledger"]["total"]["requests"]
    assert sorted(per_endpoint.values()) == sorted(v for v in calls.values() if v)
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    total = [x for x in card.splitlines() if x.startswith("| all | all | all |")][0]
    assert total.split("|")[4].strip() == "6"  # requests behind the stored answers

    capsys.readouterr()
    main([str(path), "--dry-run", "--no-progress", "--set", "dry_run.tokenizer=null",
          "--set", "prices={stand-in/judge: {prompt: 1.0, completion: 2.0}}"])
    printed = capsys.readouterr().out
    assert "--- rendered prompt" in printed and "Estimated cost (dry run, before any call)" in printed
    assert re.search(r"rlhn/stage1\s+stand-in/judge\s+\(estimate\)\s+2\s+2", printed)
    assert re.search(r"arhn/extract\s+stand-in/judge\s+\(estimate\)\s+2\s+2", printed)  # one extract prompt per query


def test_push_changelog_carries_the_build_report(tgi_stand_in, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from tests.stand_ins.hub_server import hub_stand_in

    server = tgi_stand_in(respond)
    path = recipe_file(tmp_path, {"kind": "tgi", "url": server.url, "model": "stand-in/judge"}, arhn=ARHN,
                       card={"license": "mit", "source_dataset": "cfli/bge-full-data", "source_revision": "abc123"})
    with hub_stand_in(tmp_path) as hub:
        monkeypatch.setenv("HF_TOKEN", hub.token)
        assert main([str(path), "--no-progress", "--push", "org/methods", "--version", "v1.0"]) == 0
        card = open(HfApi().hf_hub_download("org/methods", "README.md", repo_type="dataset", revision="v1.0"), encoding="utf-8").read()
    entry = card.split("<!-- hardneg:changelog:start -->")[1].split("<!-- hardneg:changelog:end -->")[0]
    assert "- source: `cfli/bge-full-data` @ `abc123`" in entry
    assert "stand-in/judge" in entry and "none recorded" not in entry
    assert "`arhn_rf` 2" in entry and "`default` 2" in entry
