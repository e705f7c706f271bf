import re
import sys
import types
from pathlib import Path

import datasets
import pytest
import yaml

from builders.cli import main, parse_args
from builders.recipe import load_recipe
from builders.sources.readers import RLHN_SOURCES, expand_names
from tests.builders.methods.rlhn.test_rlhn_replay import replay_recipe_dict, stages_for

ROOT = Path(__file__).resolve().parents[2]


def test_overrides_from_set_and_dotted_flags():
    args, over = parse_args(["r.yaml", "--set", "rlhn.refine.max_flagged=4", "--rlhn.negatives_per_prompt", "5", "--validation.policy=fail", "--out", "o"])
    assert over == [("rlhn.refine.max_flagged", "4"), ("rlhn.negatives_per_prompt", "5"), ("validation.policy", "fail"), ("output.folder", "o")]
    r = load_recipe(ROOT / "recipes" / "sample.yaml", over + [("rlhn.refine.max_flagged", "null"), ("sources.0.limit", "3")])
    assert r.methods["rlhn"].negatives_per_prompt == 5 and r.methods["rlhn"].refine.max_flagged is None and r.output.folder == "o"
    assert r.sources[0].limit == 3 and r.validation.policy == "fail"
    with pytest.raises(ValueError, match="rlhn.max_flaged"):
        load_recipe(ROOT / "recipes" / "sample.yaml", [("rlhn.max_flaged", "3")])


def test_old_recipe_names_say_what_to_write_instead():
    with pytest.raises(ValueError, match=r"rlhn.refine.untouched_subsets was renamed: write rlhn.never_edit_subsets"):
        load_recipe(ROOT / "recipes" / "sample.yaml", [("rlhn.refine.untouched_subsets", "[arguana]")])
    with pytest.raises(ValueError, match="'never' is now spelled 'off'"):
        load_recipe(ROOT / "recipes" / "sample.yaml", [("rlhn.constrained", "never")])
    for method in ("rlhn", "arhn", "clear", "percpos"):  # one never-edit key for every method
        r = load_recipe(ROOT / "recipes" / "sample.yaml", [(f"{method}.never_edit_subsets", "ArguAna")])
        assert r.methods[method].never_edit_subsets == ("ArguAna",)


def test_a_judge_may_be_a_file_of_endpoints(tmp_path, monkeypatch):
    (tmp_path / "fleet.yaml").write_text(
        "endpoints:\n"
        "  - {kind: tgi, url: 'http://10.0.0.1:8080', model: judge}\n"
        "  - {kind: openai, url: 'http://10.0.0.2:8000', model: judge, api_key_env: JUDGE_KEY}\n")
    (tmp_path / "one.json").write_text('{"kind": "tgi", "url": "http://10.0.0.3:8080"}')
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("judges: {stage1: fleet.yaml, stage2: one.json}\n")
    monkeypatch.chdir(ROOT)  # relative paths: the working directory first, then the recipe's folder
    loaded = load_recipe(recipe)
    assert [(e.kind, e.url) for e in loaded.judges.stage1] == [("tgi", "http://10.0.0.1:8080"), ("openai", "http://10.0.0.2:8000")]
    assert loaded.judges.stage1[1].api_key_env == "JUDGE_KEY"
    assert loaded.judges.stage2.url == "http://10.0.0.3:8080"
    overridden = load_recipe(recipe, [("judges.stage2", str(tmp_path / "fleet.yaml"))])
    assert len(overridden.judges.stage2) == 2
    with pytest.raises(ValueError, match=r"judges.stage1: endpoint file 'missing.yaml' not found"):
        load_recipe(recipe, [("judges.stage1", "missing.yaml")])
    (tmp_path / "bad.yaml").write_text("- just a url\n")
    with pytest.raises(ValueError, match="must hold an endpoint mapping"):
        load_recipe(recipe, [("judges.stage1", "bad.yaml")])


def test_shipped_recipes_load():
    sample = load_recipe(ROOT / "recipes" / "sample.yaml")
    assert sample.judges.stage1.kind == "local" and sample.card.license == "mit" and len(sample.sources) == 3
    real = load_recipe(ROOT / "recipes" / "rlhn-680k.yaml")
    assert expand_names(real.sources[0].names) == list(RLHN_SOURCES)
    assert (real.judges.stage1.model, real.judges.stage2.model) == ("gpt-4o-mini", "gpt-4o")
    assert real.judges.stage1.api_key_env == "OPENAI_API_KEY" and real.methods["rlhn"].temperature == 0.1


def test_dry_run_prints_counts_prompt_and_token_estimates(capsys):
    main([str(ROOT / "recipes" / "sample.yaml"), "--dry-run", "--no-progress",
          "--set", "judges.stage1={kind: tgi, url: 'http://127.0.0.1:9'}", "--set", "judges.stage2={kind: tgi, url: 'http://127.0.0.1:9', model: big}"])
    out = capsys.readouterr().out
    assert "rows: 30 read, 30 kept" in out and "duplicate_passage:repaired: 2" in out
    assert "nq: 10 rows, 10 positives, 977 negatives" in out
    assert "Doc (3):" in out and "Doc (4):" not in out and "<verdict><better>" in out
    s1 = re.search(r"stage1 \[.*\]: ~(\d+) prompts, ~([\d,]+) prompt tokens", out)
    s2 = re.search(r"stage2 \[big\]: ~(\d+) prompts, ~([\d,]+) prompt tokens", out)
    assert s1 and s2 and int(s1.group(1)) == 30 and int(s2.group(1)) == int(30 * 0.72)
    assert "characters / 4" in out


def test_cli_builds_prints_load_line_and_pushes(tgi_stand_in, tmp_path, monkeypatch, capsys):
    servers, _ = stages_for(tgi_stand_in, subsets=("fiqa",))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(replay_recipe_dict(servers[0].url, servers[1].url)))
    calls = []
    fake = types.ModuleType("builders.output.publish")
    fake.push_dataset = lambda folder, repo_id, **kw: calls.append((folder, repo_id, kw))
    monkeypatch.setitem(sys.modules, "builders.output.publish", fake)
    monkeypatch.chdir(tmp_path)
    assert main(["recipe.yaml", "--no-progress", "--out", "built", "--push", "org/rlhn-sample", "--version", "v1.0"]) == 0
    out = capsys.readouterr().out
    line = re.search(r"ds = (datasets\.load_dataset\(.*\))", out).group(1)
    ds = eval(line, {"datasets": datasets})  # the exact line we print works
    assert ds.num_rows == 25 and f"dataset: {tmp_path / 'built'}" in out
    report = str(Path(".hardneg-cache") / "replay" / "build_report.json")  # the build report, for the changelog
    assert calls == [("built", "org/rlhn-sample", {"version": "v1.0", "private": False, "token": None, "build_report": report})]
    card = (tmp_path / "built" / "README.md").read_text()
    assert "python -m builders.cli recipe.yaml --out built --push org/rlhn-sample --version v1.0" in card
    assert yaml.safe_load(card.split("---\n")[1])["license"] == "apache-2.0"
    for config, n in {"default": 25, "remove": 15, "hn_remove": 25}.items():
        assert datasets.load_dataset(str(tmp_path / "built"), config, split="train").num_rows == n


def test_bad_row_under_fail_policy_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["a"], "neg": ["b"]}\n{"query": "", "pos": ["a"], "neg": []}\n')
    code = main([str(ROOT / "recipes" / "sample.yaml"), "--dry-run", "--no-progress", "--set", f"sources=[{{path: '{bad}'}}]", "--set", "validation.policy=fail"])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2" in err and "missing_query" in err and "Traceback" not in err
