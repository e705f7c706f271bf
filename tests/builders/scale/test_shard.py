"""Sharding by query_id hash, and the merge: N shards merged are byte-identical to a build made
from scratch on one machine (rows and order in every config, judgments, card counts), with no
judge call made by the merge and none paid twice across shards."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from builders.build import build
from builders.recipe import load_recipe
from builders.rows import md5
from builders.scale.shard import MergeError, build_shard, merge
from builders.sources.readers import RawRecord, SourceConfig, read_source
from builders.sources.shard_rows import Shard, parse_shard, record_query_id, shard_of
from tests.builders.methods.rlhn.test_rlhn_replay import FIXTURES, replay_recipe_dict, stages_for

ROOT = Path(__file__).resolve().parents[3]
COMMAND = "python -m builders.cli recipe.yaml"
SUBSETS = ("fiqa", "msmarco_passage")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shard_of_is_md5_based_and_stable_across_python_runs():
    ids = [md5(f"query {i}") for i in range(200)]
    here = [shard_of(q, 7) for q in ids]
    assert here == [int(hashlib.md5(q.encode()).hexdigest()[:16], 16) % 7 for q in ids]
    # a fresh interpreter with a different hash seed agrees (no use of hash())
    code = "import sys, json; from builders.sources.shard_rows import shard_of; print(json.dumps([shard_of(q, 7) for q in json.load(sys.stdin)]))"
    env = {"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1"}
    other = subprocess.run([sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True, env=env, check=True, timeout=120)
    assert json.loads(other.stdout) == here
    assert len(set(here)) == 7  # 200 ids spread over all shards


def test_parse_shard_and_records_without_query_go_to_shard_zero():
    assert parse_shard("2/8") == Shard(2, 8)
    for bad in ("8/8", "x/2", "1", "-1/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    assert record_query_id(RawRecord("f.jsonl", 1, "s", None, "malformed JSON")) is None
    assert record_query_id(RawRecord("f.jsonl", 2, "s", {"query": "  "})) is None
    assert record_query_id(RawRecord("f.jsonl", 3, "s", {"query": "q"})) == md5("q")
    assert record_query_id(RawRecord("f.jsonl", 4, "s", {"query": "q", "query_id": "id-7"})) == "id-7"
    assert Shard(0, 3).owns(None) and not Shard(1, 3).owns(None)


def test_every_fixture_row_lands_in_exactly_one_shard():
    records = [r for s in SUBSETS for r in read_source(SourceConfig(path=str(FIXTURES / f"{s}.stage_1.gpt-4o-mini.jsonl")))]
    owners = [[i for i in range(3) if Shard(i, 3).owns(record_query_id(r))] for r in records]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [i] for o in owners) for i in range(3)]
    assert sum(sizes) == 50 and min(sizes) > 5  # a real spread, not everything in one shard


def _recipe(tmp_path: Path, servers) -> Path:
    d = replay_recipe_dict(servers[0].url, servers[1].url, subsets=("fiqa",), concurrency=4)
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(d))
    return path


def test_three_shards_merged_equal_the_single_build(tgi_stand_in, tmp_path, monkeypatch):
    servers, _ = stages_for(tgi_stand_in, subsets=("fiqa",))
    recipe_path = _recipe(tmp_path, servers)
    monkeypatch.chdir(tmp_path)

    recipe = load_recipe(recipe_path, [("output.folder", "single"), ("output.store", "single-store/judgments.sqlite")])
    build(recipe, COMMAND, progress=False)
    single_calls = len(servers[0].requests), len(servers[1].requests)
    assert single_calls == (25, 17)  # the recorded cascade: 17 of 25 queries escalate

    recipe = load_recipe(recipe_path)
    sizes = []
    for i in range(3):
        report = build_shard(recipe, Shard(i, 3), tmp_path / "shards", COMMAND, progress=False)
        sizes.append(report["validation"]["rows_kept"])
    assert sum(sizes) == 25 and all(sizes)
    shard_calls = len(servers[0].requests) - single_calls[0], len(servers[1].requests) - single_calls[1]
    assert shard_calls == single_calls  # every call made once across the shards

    # a shard reruns from its own store: nothing is asked again
    build_shard(recipe, Shard(1, 3), tmp_path / "shards", COMMAND, progress=False)
    assert (len(servers[0].requests), len(servers[1].requests)) == (2 * single_calls[0], 2 * single_calls[1])

    shard_dirs = sorted((tmp_path / "shards").iterdir())
    report = merge(recipe, shard_dirs, tmp_path / "merged", COMMAND, progress=False)
    assert (len(servers[0].requests), len(servers[1].requests)) == (2 * single_calls[0], 2 * single_calls[1])  # the merge asked no one
    single, merged = folder_bytes(tmp_path / "single"), folder_bytes(tmp_path / "merged")
    assert sorted(single) == sorted(merged) and {"README.md", "rlhn/train-00000-of-00001.parquet", "judgments/train-00000-of-00001.parquet"} <= set(single)
    for name in single:
        assert single[name] == merged[name], f"{name} differs between the single build and the merge"
    assert report["configs"]["default"] == 25 and report["stats"]["fiqa"]["judge_calls_stage1"] == 25


def test_cli_shards_merge_only_and_merge_refuses_missing_incomplete_or_foreign_shards(tgi_stand_in, tmp_path, monkeypatch):
    from builders.cli import main as cli
    from builders.distributed import main as distributed

    servers, _ = stages_for(tgi_stand_in, subsets=("fiqa",))
    import yaml

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(replay_recipe_dict(servers[0].url, servers[1].url)))
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("recipe.yaml")
    for i in range(2):  # as on two machines: one shard each, then the merge
        assert cli(["recipe.yaml", "--shard", f"{i}/2", "--shard-root", "shards", "--no-progress"]) == 0
    assert distributed(["recipe.yaml", "--workers", "2", "--root", "shards", "--merge-only", "--out", "merged", "--no-progress"]) == 0
    assert (len(servers[0].requests), len(servers[1].requests)) == (25, 17)
    merged = pq.read_table(tmp_path / "merged" / "rlhn")
    assert merged.num_rows == 25 and merged.column("query_id").to_pylist() == [record_query_id(r) for r in read_source(SourceConfig(path=str(FIXTURES / "fiqa.stage_1.gpt-4o-mini.jsonl")))]
    dirs = sorted((tmp_path / "shards").iterdir())
    assert [d.name for d in dirs] == ["merge", "shard-00000-of-00002", "shard-00001-of-00002"]
    dirs = dirs[1:]
    with pytest.raises(MergeError, match=r"missing \[1\]"):
        merge(recipe, dirs[:1], tmp_path / "m", COMMAND, progress=False)
    other = load_recipe("recipe.yaml", [("rlhn.refine.max_flagged", "2")])
    with pytest.raises(MergeError, match="different recipe"):
        merge(other, dirs, tmp_path / "m", COMMAND, progress=False)
    manifest = dirs[1] / "shard.json"
    manifest.write_text(manifest.read_text().replace('"complete": true', '"complete": false'))
    with pytest.raises(MergeError, match="did not finish; rerun shard 1/2"):
        merge(recipe, dirs, tmp_path / "m", COMMAND, progress=False)
    assert not (tmp_path / "m" / "README.md").exists()


def test_sharded_arhn_build_merges_to_the_single_build(tgi_stand_in, tmp_path, monkeypatch):
    """ARHN asks its own judges (arhn_extract, arhn_rank): the merge stands in for those too."""
    from tests.builders.test_build_methods import ARHN, recipe_file
    from tests.builders.test_build_methods import respond as arhn_respond

    server = tgi_stand_in(arhn_respond)
    path = recipe_file(tmp_path, {"kind": "tgi", "url": server.url, "model": "judge-m"}, arhn=ARHN)
    monkeypatch.chdir(tmp_path)
    build(load_recipe(path, [("output.folder", "single")]), COMMAND, progress=False)
    single_calls = len(server.requests)
    assert single_calls == 4  # extract + rank for each of the two queries
    recipe = load_recipe(path, [("output.store", "shard-store.sqlite")])
    for i in range(3):
        build_shard(recipe, Shard(i, 3), tmp_path / "shards", COMMAND, progress=False)
    assert len(server.requests) == 2 * single_calls
    merge(recipe, sorted((tmp_path / "shards").iterdir()), tmp_path / "merged", COMMAND, progress=False)
    assert len(server.requests) == 2 * single_calls  # the merge asked no one
    single, merged = folder_bytes(tmp_path / "single"), folder_bytes(tmp_path / "merged")
    assert {"arhn_relabel/train-00000-of-00001.parquet", "judgments_arhn/train-00000-of-00001.parquet"} <= set(single)
    assert sorted(single) == sorted(merged) and all(single[k] == merged[k] for k in single)
