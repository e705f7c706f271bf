"""Chunked (streaming) builds equal the all-at-once build: same rows in the same order in every
config and parquet shard, same card; only the judgments table is ordered chunk by chunk."""

import pyarrow.parquet as pq
import pytest
import yaml

from builders.build import build
from builders.output.writers import write_dataset_repo
from builders.recipe import load_recipe
from builders.rows import Passage, QueryRow
from builders.streaming import ConfigSpool, chunks
from tests.builders.methods.rlhn.test_rlhn_replay import replay_recipe_dict, stages_for

COMMAND = "python -m builders.cli recipe.yaml"


def test_chunks_cut_a_stream_and_keep_one_empty_chunk():
    assert [len(c) for c in chunks(iter(range(10)), 4)] == [4, 4, 2]
    assert list(chunks(iter([]), 4)) == [[]] and list(chunks(iter(range(3)), None)) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="chunk_rows"):
        list(chunks(iter(range(3)), 0))


def _row(i: int, scored: bool, prompt: str | None = None) -> QueryRow:
    s = 0.5 if scored else None
    return QueryRow.from_query(f"q{i}", [Passage.from_text(f"pos {i}", score=s)], [Passage.from_text(f"neg {i} {j}", score=s) for j in range(3)], "nq", prompt=prompt)


@pytest.mark.parametrize("scored,prompt", [(True, None), (False, "Represent: "), (True, "Represent: ")])
def test_spool_writes_what_write_dataset_repo_writes(tmp_path, scored, prompt):
    rows = [_row(i, scored, prompt if i % 2 else None) for i in range(23)]
    configs = {"default": rows, "remove": rows[::3], "hn_remove": []}
    write_dataset_repo(tmp_path / "once", configs, rows_per_shard=10)
    spool = ConfigSpool(tmp_path / "spooled", scratch=tmp_path / "scratch")
    for c in chunks(iter(range(23)), 5):
        spool.add({"default": [rows[i] for i in c], "remove": [rows[i] for i in c if i % 3 == 0], "hn_remove": []}, [])
    written = spool.finish(rows_per_shard=10)
    assert written == {"default": 23, "remove": 8}
    once = sorted(p.relative_to(tmp_path / "once") for p in (tmp_path / "once").rglob("*.parquet"))
    spooled = sorted(p.relative_to(tmp_path / "spooled") for p in (tmp_path / "spooled").rglob("*.parquet"))
    assert once == spooled and len(once) == 4  # default in 3 shards of 8/8/7, remove in 1
    for rel in once:
        a, b = pq.read_table(tmp_path / "once" / rel), pq.read_table(tmp_path / "spooled" / rel)
        assert a.schema == b.schema and a.equals(b), rel
    assert not list((tmp_path / "scratch").iterdir())  # the spool cleans up


def test_a_row_in_several_configs_is_spooled_once(tmp_path, monkeypatch):
    """RLHN's configs share their unchanged rows: each distinct row object of a chunk is converted
    once; a changed row (false negatives moved or removed) is another row. The shards are what a
    one-shot write makes, in every config."""
    import builders.streaming as streaming

    converted = []
    real = streaming.tevatron_table
    monkeypatch.setattr(streaming, "tevatron_table", lambda rows, **kw: converted.extend(rows) or real(rows, **kw))
    monkeypatch.setattr(streaming, "SPOOL_SLICE_ROWS", 4)  # several row groups per chunk
    rows = [_row(i, scored=False) for i in range(30)]
    moved = {i: rows[i].with_passages(positives=[*rows[i].positive_passages, rows[i].negative_passages[0]],
                                      negatives=rows[i].negative_passages[1:]) for i in range(0, 30, 4)}
    kept = {i: rows[i].with_passages(negatives=rows[i].negative_passages[1:]) for i in moved}
    configs = {"default": rows, "remove": [r for i, r in enumerate(rows) if i not in moved],
               "hn_remove": [kept.get(i, r) for i, r in enumerate(rows)], "rlhn": [moved.get(i, r) for i, r in enumerate(rows)]}
    write_dataset_repo(tmp_path / "once", configs, rows_per_shard=7)
    spool = ConfigSpool(tmp_path / "spooled", scratch=tmp_path / "scratch")
    for c in chunks(iter(range(30)), 9):
        spool.add({name: [r for r in config_rows if int(r.query[1:]) in c] for name, config_rows in configs.items()}, [])
    assert spool.finish(rows_per_shard=7) == {name: len(config_rows) for name, config_rows in configs.items()}
    assert len(converted) == 30 + 2 * len(moved)  # not 4 x 30
    files = {p.relative_to(tmp_path / "once") for p in (tmp_path / "once").rglob("*.parquet")}
    assert files == {p.relative_to(tmp_path / "spooled") for p in (tmp_path / "spooled").rglob("*.parquet")} and len(files) == 4 * 5 - 1
    for path in (tmp_path / "once").rglob("*.parquet"):
        rel = path.relative_to(tmp_path / "once")
        assert pq.read_table(path).equals(pq.read_table(tmp_path / "spooled" / rel)), rel


def test_chunked_build_equals_the_build_in_one_chunk(tgi_stand_in, tmp_path, monkeypatch):
    servers, _ = stages_for(tgi_stand_in, subsets=("fiqa",))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(replay_recipe_dict(servers[0].url, servers[1].url)))
    monkeypatch.chdir(tmp_path)
    for name, chunk in (("whole", "null"), ("chunked", "7")):
        recipe = load_recipe("recipe.yaml", [("output.folder", name), ("output.chunk_rows", chunk), ("output.rows_per_shard", "10")])
        report = build(recipe, COMMAND, progress=False)
        assert report["judge_runs"]["stage1"][next(iter(report["judge_runs"]["stage1"]))]["items"] == 25
    assert len(servers[0].requests) == 25  # the second build answered everything from the store
    whole = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*") if p.is_file())
    chunked = sorted(p.relative_to(tmp_path / "chunked") for p in (tmp_path / "chunked").rglob("*") if p.is_file())
    assert whole == chunked
    # the cards are the same but for what describes the judgments' bytes (their size and sha256)
    cards = [(tmp_path / name / "README.md").read_text(encoding="utf-8").split("---\n", 2) for name in ("whole", "chunked")]
    assert cards[0][2] == cards[1][2]
    metas = [yaml.safe_load(card[1]) for card in cards]
    for meta in metas:
        next(i for i in meta["dataset_info"] if i["config_name"] == "judgments").pop("download_size")
        next(c for c in meta["configs"] if c["config_name"] == "judgments").pop("description")
    assert metas[0] == metas[1]
    for rel in whole:
        if rel.suffix == ".parquet" and rel.parts[0] != "judgments":
            assert pq.read_table(tmp_path / "whole" / rel).equals(pq.read_table(tmp_path / "chunked" / rel)), rel
    # judgments are ordered per chunk: the same rows, in another order
    key = [(k, "ascending") for k in ("stage", "query_id", "window_start")]
    a, b = (pq.read_table(tmp_path / name / "judgments") for name in ("whole", "chunked"))
    assert a.num_rows == 42 and a.sort_by(key).equals(b.sort_by(key))


def test_scores_are_decided_per_config_by_the_positives(tmp_path):
    """CLEAR's clear_threshold keeps per-positive confidences (negatives unscored) while other
    configs of the same build have no scores: each config gets the writers' rule."""

    scored = QueryRow.from_query("q", [Passage.from_text("p", score=0.8)], [Passage.from_text("n")], "s")
    plain = QueryRow.from_query("q", [Passage.from_text("p")], [Passage.from_text("n")], "s")
    spool = ConfigSpool(tmp_path / "out", scratch=tmp_path / "scratch")
    spool.add({"default": [plain], "clear_threshold": [scored]}, [])
    spool.finish(None)
    threshold = pq.read_table(next((tmp_path / "out" / "clear_threshold").glob("*.parquet")))
    default = pq.read_table(next((tmp_path / "out" / "default").glob("*.parquet")))
    assert threshold.column("positive_scores").to_pylist() == [[0.8]]
    assert threshold.column("negative_scores").to_pylist() == [[None]]
    assert "positive_scores" not in default.column_names


_MEMORY_SETTINGS = """
import json
import pyarrow as pa
from builders.streaming import arrow_system_pool, limit_malloc_arenas
print(json.dumps({"arenas": limit_malloc_arenas(), "pool_switched": arrow_system_pool(),
                  "pool": pa.default_memory_pool().backend_name}))
"""


@pytest.mark.parametrize("env", [{}, {"ARROW_DEFAULT_MEMORY_POOL": "mimalloc", "MALLOC_ARENA_MAX": "4"}], ids=["defaults", "user-set"])
def test_memory_settings_take_the_system_pool_unless_the_user_chose(env):
    """A build's flat-memory settings (``bench/memory_rows.py`` measures them): glibc's arenas
    capped and Arrow on the system allocator, each unless the user's environment set it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    clean = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "MALLOC_ARENA_MAX")}
    out = subprocess.run([sys.executable, "-c", _MEMORY_SETTINGS], env=dict(clean, PYTHONPATH=str(root), **env),
                         capture_output=True, text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    if env:
        assert got == {"arenas": False, "pool_switched": False, "pool": "mimalloc"}
    else:
        assert got == {"arenas": True, "pool_switched": True, "pool": "system"}
