"""The shards run on datatrove's LocalPipelineExecutor with 2 worker processes against the TGI
stand-in (a deterministic responder: the recorded RLHN cascade), then merge: the output equals
a single-machine build byte for byte, and a rerun skips the finished shards."""

from pathlib import Path

import yaml

from builders.build import build
from builders.distributed import main, run_distributed
from builders.recipe import load_recipe
from tests.builders.methods.rlhn.test_rlhn_replay import replay_recipe_dict, stages_for
from tests.builders.scale.test_shard import folder_bytes

COMMAND = "python -m builders.distributed recipe.yaml --workers 2"


def test_two_local_workers_then_merge_equal_the_single_build(tgi_stand_in, tmp_path, monkeypatch, capsys):
    servers, _ = stages_for(tgi_stand_in, subsets=("fiqa",))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(replay_recipe_dict(servers[0].url, servers[1].url)))
    monkeypatch.chdir(tmp_path)

    build(load_recipe("recipe.yaml", [("output.folder", "single"), ("output.store", "single-store/j.sqlite")]), COMMAND, progress=False)
    single_calls = len(servers[0].requests), len(servers[1].requests)
    assert single_calls == (25, 17)

    report = run_distributed(load_recipe("recipe.yaml"), workers=2, root=tmp_path / "work", out_dir=tmp_path / "merged", command=COMMAND, progress=False)
    assert (len(servers[0].requests), len(servers[1].requests)) == (2 * single_calls[0], 2 * single_calls[1])
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["logs", "merge", "shard-00000-of-00002", "shard-00001-of-00002"]
    assert sorted(p.name for p in (tmp_path / "work" / "logs" / "completions").iterdir()) == ["00000", "00001"]
    single, merged = folder_bytes(tmp_path / "single"), folder_bytes(tmp_path / "merged")
    assert single.keys() == merged.keys() and all(single[k] == merged[k] for k in single)
    assert report["configs"]["default"] == 25

    # the CLI, rerun: datatrove skips both completed shards, the merge is redone, nobody is asked
    assert main(["recipe.yaml", "--workers", "2", "--root", "work", "--out", "merged", "--no-progress"]) == 0
    assert (len(servers[0].requests), len(servers[1].requests)) == (2 * single_calls[0], 2 * single_calls[1])
    assert folder_bytes(tmp_path / "merged").keys() == single.keys()
    assert Path(tmp_path / "work" / "merge" / "build_report.json").exists()
