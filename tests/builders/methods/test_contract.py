"""Every method exposes the same names (``builders.methods.base``), and ``METHODS`` is the one list
the recipe, the run, the dry run, sharding and the cards read: a toy fifth method added to it
(and its BibTeX to ``cards/citations.py``) builds, dry-runs, shards and merges, and its card
cites it, without another file of the package changing."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import io
import json

import datasets
import pyarrow as pa
import yaml

import builders.methods
import cards.citations
from builders.methods import METHODS
from cards.citations import CITATIONS
from cards.model_card import METHOD_CITATIONS, detect_methods
from tests.builders.methods import toy_yesno
from tests.builders.test_build_methods import EIFFEL, HAMLET, write_rows
from tests.stand_ins.tgi_server import prompt_of

NAMES = ("NAME", "TITLE", "CITATION", "Settings", "DEFAULT", "STREAMS", "JUDGMENTS",
         "configs", "judgments_table", "judges", "run", "dry_run", "card_settings")


def test_every_method_exposes_the_contract():
    for m in METHODS + (toy_yesno,):
        missing = [n for n in NAMES if not hasattr(m, n)]
        assert not missing, f"{m.__name__} lacks {missing}"
        assert dataclasses.is_dataclass(m.Settings) and "never_edit_subsets" in {f.name for f in dataclasses.fields(m.Settings)}
        assert inspect.iscoroutinefunction(m.run), f"{m.__name__}.run must be async"
        assert list(inspect.signature(m.run).parameters) == ["rows", "settings", "judges", "store", "progress"]
        assert list(inspect.signature(m.dry_run).parameters) == ["rows", "settings", "specs", "dry", "result", "out"]
        assert isinstance(m.judgments_table([]), pa.Table)
        assert m.CITATION in CITATIONS or m is toy_yesno
    assert sum(m.DEFAULT for m in METHODS) == 1
    assert len({m.NAME for m in METHODS}) == len(METHODS) and len({m.JUDGMENTS for m in METHODS}) == len(METHODS)
    configs = [c for m in METHODS for c in m.configs(m.Settings())]
    assert len(configs) == len(set(configs)), configs


def test_a_model_card_cites_the_method_a_config_came_from():
    """The model card finds the method from the dataset config name (cards stay free of builders):
    every config every method writes must lead to that method's own citation."""
    for m in METHODS:
        for config in m.configs(m.Settings()):
            if config == "default":
                continue
            (title,) = detect_methods("org/data", config)
            assert METHOD_CITATIONS[title] == CITATIONS[m.CITATION], (m.NAME, config, title)


def respond(request: dict) -> str:
    prompt = prompt_of(request)
    assert "Reply yes or no" in prompt, prompt[:200]
    return "yes" if EIFFEL["query"] in prompt else "no"


def _recipe(tmp_path, url):
    data = write_rows(tmp_path / "data")
    recipe = {
        "name": "toy",
        "sources": [{"path": str(data / "nq.jsonl"), "subset": "nq"}, {"path": str(data / "msmarco.jsonl"), "subset": "msmarco_passage"}],
        "judges": {"stage1": {"kind": "tgi", "url": url, "model": "judge-m"}},
        "yesno": {},
        "output": {"folder": str(tmp_path / "out"), "store": str(tmp_path / "cache" / "j.sqlite")},
        "card": {"license": "mit"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_a_fifth_method_touches_only_its_folder_the_list_and_the_citations(tgi_stand_in, tmp_path, monkeypatch):
    from builders.build import build, dry_run
    from builders.cli import main
    from builders.recipe import load_recipe, selected
    from builders.scale.shard import build_shard, merge
    from builders.sources.shard_rows import Shard
    from tests.builders.scale.test_shard import folder_bytes

    monkeypatch.setattr(builders.methods, "METHODS", METHODS + (toy_yesno,))
    monkeypatch.setitem(cards.citations.CITATIONS, "toy", "@misc{toy2026, title={A toy method}}")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    server = tgi_stand_in(respond)
    path = _recipe(tmp_path, server.url)
    recipe = load_recipe(path)
    assert [m.NAME for m, _ in selected(recipe)] == ["yesno"] and recipe.methods["yesno"] == toy_yesno.Settings()

    printed = io.StringIO()
    estimate = dry_run(recipe, progress=False, out=printed)
    assert estimate["stages"]["yesno/ask"]["prompts"] == 2 and "yesno/ask [judge-m]: 2 prompts" in printed.getvalue()
    assert not server.requests  # the dry run asked no one

    assert main([str(path), "--no-progress"]) == 0
    assert len(server.requests) == 2
    out = tmp_path / "out"
    rows = {r["query"]: r for r in datasets.load_dataset(str(out), "yesno", split="train")}
    assert len(rows[EIFFEL["query"]]["negative_passages"]) == len(EIFFEL["neg"]) - 1  # the judge said yes
    assert len(rows[HAMLET["query"]]["negative_passages"]) == len(HAMLET["neg"])
    judged = datasets.load_dataset(str(out), "judgments_yesno", split="train")
    assert sorted(judged["answer"]) == ["no", "yes"]
    card = (out / "README.md").read_text()
    assert "@misc{toy2026" in card and "thakur2025rlhn" not in card and "| yesno | nq |" in card
    report = json.loads((tmp_path / "cache" / "build_report.json").read_text())
    assert report["ledger"]["rows"] and report["recipe"]["yesno"] == {"never_edit_subsets": ["arguana"], "max_new_tokens": 4}

    # sharded: two shards then the merge, byte-identical to the single build, no call paid again
    for i in range(2):
        build_shard(recipe, Shard(i, 2), tmp_path / "shards", "cmd", progress=False)
    assert len(server.requests) == 4
    single = tmp_path / "single"
    build(load_recipe(path, [("output.folder", str(single))]), "cmd", progress=False)  # answered from the store
    merge(recipe, sorted((tmp_path / "shards").iterdir()), tmp_path / "merged", "cmd", progress=False)
    assert len(server.requests) == 4
    a, b = folder_bytes(single), folder_bytes(tmp_path / "merged")
    assert sorted(a) == sorted(b) and all(a[k] == b[k] for k in a)


def test_the_toy_run_is_the_contract_run_without_the_build(tgi_stand_in, tmp_path):
    """The contract's ``run`` is usable alone: a judge dict, a store, rows."""
    from builders.judges.endpoints import make_backend
    from builders.judges.endpoints.spec import EndpointSpec
    from builders.judges.store import JudgmentStore
    from builders.rows import Passage, QueryRow

    server = tgi_stand_in(respond)
    rows = [QueryRow.from_query(q["query"], [Passage.from_text(t) for t in q["pos"]], [Passage.from_text(t) for t in q["neg"]], "nq")
            for q in (EIFFEL, HAMLET)]

    async def go():
        judge = make_backend(EndpointSpec(kind="tgi", url=server.url, model="judge-m"))
        try:
            with JudgmentStore(tmp_path / "s.sqlite") as store:
                return await toy_yesno.run(rows, toy_yesno.Settings(), {"stage1": judge}, store, False)
        finally:
            await judge.aclose()

    result = asyncio.run(go())
    assert result.ledgers["yesno/ask"].calls == 2 and result.stage_judges == {"yesno/ask": "stage1"}
    assert result.stats["nq"]["negatives_removed"] == 1


def test_one_never_edit_rule_and_one_backend_name_style():
    from builders.judges.endpoints import make_backend
    from builders.judges.endpoints.spec import EndpointSpec
    from builders.judges.fleet import Fleet
    from builders.methods.base import judge_kind, never_edits

    assert never_edits("ArguAna", ("arguana",)) and never_edits("beir-arguana", ["ARGUANA"])
    assert not never_edits("fiqa", ("arguana",)) and not never_edits("arguana", ())
    tgi = EndpointSpec(kind="tgi", url="http://127.0.0.1:9", model="m")
    oai = EndpointSpec(kind="openai", url="http://127.0.0.1:9", model="m")
    assert judge_kind(make_backend(tgi)) == "tgi" and judge_kind(make_backend(oai)) == "openai"
    assert judge_kind(Fleet.from_specs([tgi, oai, tgi])) == "openai+tgi"
