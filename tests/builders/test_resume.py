"""A build killed with SIGKILL in the middle of stage 1, rerun, gives output identical to an
uninterrupted build, and no answered judge call is paid twice."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from builders.build import build
from builders.judges.store import JudgmentStore
from builders.recipe import load_recipe
from tests.builders.methods.rlhn.test_rlhn_replay import replay_recipe_dict, stages_for

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "python -m builders.cli recipe.yaml"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stored(path: Path, stage: str) -> int:
    if not path.exists():
        return 0
    try:
        with JudgmentStore(path, readonly=True) as store:
            return sum(1 for _ in store.judgments(stage=stage))
    except Exception:  # noqa: BLE001 - the writer may be mid-commit; ask again
        return 0


@pytest.mark.parametrize(("chunk_rows", "kill_at_stage2"), [(None, 0), (4, 0), (None, 3)], ids=["one-chunk", "look-ahead", "stages-overlap"])
def test_sigkill_mid_stage_then_rerun_is_identical_and_pays_nothing_twice(tgi_stand_in, tmp_path, monkeypatch, chunk_rows, kill_at_stage2):
    """``look-ahead``: 4-row chunks, so the kill falls while one chunk is written and the next
    one's calls are in flight; ``stages-overlap``: the kill falls once stage 2 (asked while stage 1
    still asks) has stored answers, with stage 1 unfinished. The rerun asks only what was never
    answered, in either stage."""
    servers, _ = stages_for(tgi_stand_in, subsets=("fiqa",))
    servers[0].delay_s = 0.15  # slow enough to kill in the middle of stage 1
    recipe = replay_recipe_dict(servers[0].url, servers[1].url)
    recipe["judges"]["stage1"]["concurrency"] = 2
    if chunk_rows is not None:
        recipe.setdefault("output", {})["chunk_rows"] = chunk_rows
    for run in ("clean", "killed"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    # the killed run: a real process, SIGKILL once 8 stage-1 answers are stored
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    store = tmp_path / "killed" / ".hardneg-cache" / "replay" / "judgments.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "builders.cli", "recipe.yaml", "--no-progress"], cwd=tmp_path / "killed", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _stored(store, "rlhn/stage1") < 8 or _stored(store, "rlhn/stage2") < kill_at_stage2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the build never got going"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stored_at_kill, stage2_at_kill = _stored(store, "rlhn/stage1"), _stored(store, "rlhn/stage2")
    asked_before, asked_before2 = len(servers[0].requests), len(servers[1].requests)
    assert 8 <= stored_at_kill < 25 and not (tmp_path / "killed" / "out" / "README.md").exists()
    assert stage2_at_kill >= kill_at_stage2

    servers[0].delay_s = 0.0
    monkeypatch.chdir(tmp_path / "killed")
    report = build(load_recipe("recipe.yaml"), COMMAND, progress=False)
    resumed_calls = len(servers[0].requests) - asked_before
    assert resumed_calls == 25 - stored_at_kill  # only the never-answered windows are asked
    ledger = next(iter(report["judge_runs"]["stage1"].values()))
    assert ledger["cached"] == stored_at_kill and ledger["calls"] == resumed_calls
    assert len(servers[1].requests) - asked_before2 == 17 - stage2_at_kill  # stage 2 too: nothing asked twice

    before_clean = len(servers[0].requests), len(servers[1].requests)
    monkeypatch.chdir(tmp_path / "clean")
    build(load_recipe("recipe.yaml"), COMMAND, progress=False)
    assert len(servers[0].requests) - before_clean[0] == 25 and len(servers[1].requests) - before_clean[1] == 17

    clean, resumed = _files(tmp_path / "clean" / "out"), _files(tmp_path / "killed" / "out")
    assert clean.keys() == resumed.keys() and "rlhn/train-00000-of-00001.parquet" in clean
    for name in clean:
        assert clean[name] == resumed[name], name

    # a third run pays nothing at all
    asked = len(servers[0].requests), len(servers[1].requests)
    report = build(load_recipe("recipe.yaml"), COMMAND, progress=False)
    assert (len(servers[0].requests), len(servers[1].requests)) == asked
    assert _files(tmp_path / "clean" / "out") == clean
