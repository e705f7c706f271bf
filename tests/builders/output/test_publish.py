"""push_dataset against the Hub stand-in, and the sharded parquet writer."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi

import builders.output.hub
from builders.output.hub import HubPushError, TagExistsError
from builders.output.parquet_shards import rows_per_shard, write_sharded_parquet
from builders.output.publish import (
    CHANGELOG_END,
    CHANGELOG_START,
    changelog_entries,
    merge_changelog,
    push_dataset,
)
from tests.stand_ins.hub_samples import make_dataset_folder
from tests.stand_ins.hub_server import hub_stand_in

REPO = "org/sample"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with hub_stand_in(tmp_path) as server:
        monkeypatch.setenv("HF_TOKEN", server.token)
        yield server


def _card(api: HfApi, revision: str) -> str:
    return open(api.hf_hub_download(REPO, "README.md", repo_type="dataset", revision=revision), encoding="utf-8").read()


def test_write_sharded_parquet_budget_names_and_stale_shards(tmp_path):
    rows = [{"query_id": f"q{i}", "query": "x" * 100} for i in range(50)]
    table = pa.Table.from_pylist(rows)
    per_shard = rows_per_shard(table, 1000)
    assert per_shard == int(1000 // (table.nbytes / 50))
    paths = write_sharded_parquet(rows, tmp_path / "rlhn", max_shard_size=1000)
    total = len(paths)
    assert total == -(-50 // per_shard) > 1
    assert [p.name for p in paths] == [f"train-{i:05d}-of-{total:05d}.parquet" for i in range(total)]
    assert pa.concat_tables([pq.read_table(p) for p in paths]).to_pylist() == rows
    (tmp_path / "rlhn" / "notes.txt").write_text("kept")
    again = write_sharded_parquet(table, tmp_path / "rlhn", max_shard_size="1GB")
    assert sorted(p.name for p in (tmp_path / "rlhn").iterdir()) == ["notes.txt", "train-00000-of-00001.parquet"]
    assert pq.read_table(again[0]).to_pylist() == rows
    with pytest.raises(ValueError, match="positive"):
        write_sharded_parquet(rows, tmp_path / "x", max_shard_size=0)


def test_changelog_merge_keeps_earlier_entries():
    local = f"# card\n\n## Changelog\n\n{CHANGELOG_START}\n{CHANGELOG_END}\n\nfooter\n"
    remote = f"# old card\n{CHANGELOG_START}\n### v1.0 (2026-01-01)\n- rows: `rlhn` 5\n{CHANGELOG_END}\n"
    merged = merge_changelog(local, remote, "### v1.1 (2026-02-01)\n- rows: `rlhn` 7")
    assert [e.splitlines()[0] for e in changelog_entries(merged)] == ["### v1.1 (2026-02-01)", "### v1.0 (2026-01-01)"]
    assert merged.startswith("# card\n") and merged.endswith("\n\nfooter\n")
    no_markers = merge_changelog("# bare card\n", None, "### v1.0 (2026-01-01)\n- rows: `a` 1")
    assert "## Changelog" in no_markers and changelog_entries(no_markers) == ["### v1.0 (2026-01-01)\n- rows: `a` 1"]


def test_push_is_one_commit_with_stale_shards_deleted(hub, tmp_path):
    make_dataset_folder(tmp_path / "b1", {"rlhn": 10}, max_shard_size="3KB")
    make_dataset_folder(tmp_path / "b2", {"rlhn": 6})
    first = push_dataset(tmp_path / "b1", REPO, version="v1.0")
    api = HfApi()
    n_shards = len([p for p in api.list_repo_files(REPO, repo_type="dataset") if p.startswith("rlhn/")])
    assert n_shards > 1
    commits_before = len(api.list_repo_commits(REPO, repo_type="dataset"))
    second = push_dataset(tmp_path / "b2", REPO, version="v1.1")
    assert len(api.list_repo_commits(REPO, repo_type="dataset")) == commits_before + 1
    assert second.deleted == [f"rlhn/train-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
    files = api.list_repo_files(REPO, repo_type="dataset", revision="v1.1")
    assert files == [".gitattributes", "README.md", "hardneg_build.json", "rlhn/train-00000-of-00001.parquet"]
    assert len(api.list_repo_files(REPO, repo_type="dataset", revision=first.commit_sha)) == 3 + n_shards


def test_changelog_counts_from_parquet_without_report_and_untagged_push(hub, tmp_path):
    make_dataset_folder(tmp_path / "b", {"rlhn": 4, "default": 3}, with_report=False)
    result = push_dataset(tmp_path / "b", REPO)  # no version: a commit, no tag
    api = HfApi()
    assert result.version is None and api.list_repo_refs(REPO, repo_type="dataset").tags == []
    (entry,) = changelog_entries(_card(api, "main"))
    assert entry.startswith("### untagged build (") and "`rlhn` 4, `default` 3" in entry and "`unknown`" in entry


def test_existing_tag_is_refused_before_upload(hub, tmp_path):
    make_dataset_folder(tmp_path / "b", {"rlhn": 3})
    push_dataset(tmp_path / "b", REPO, version="v2.3.4")
    files_before = sorted(p.stat().st_mtime_ns for p in hub.storage.files())
    requests_before = len(hub.requests)
    with pytest.raises(TagExistsError) as err:
        push_dataset(tmp_path / "b", REPO, version="v2.3.4")
    assert "org/sample" in str(err.value) and "v2.3.4" in str(err.value) and "--version v2.3.5" in str(err.value)
    assert sorted(p.stat().st_mtime_ns for p in hub.storage.files()) == files_before
    assert not any(m == "POST" for m, _ in hub.requests[requests_before:]), "nothing may be written"


def test_token_rules(hub, tmp_path, monkeypatch):
    make_dataset_folder(tmp_path / "b", {"rlhn": 3})
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(builders.output.hub, "get_token", lambda: None)  # no env token, no saved login
    with pytest.raises(HubPushError, match="No Hugging Face token found.*HF_TOKEN.*hf auth login"):
        push_dataset(tmp_path / "b", REPO)
    assert push_dataset(tmp_path / "b", REPO, token=hub.token).commit_sha  # the argument works alone
    (tmp_path / "b" / "notes.md").write_text(f"debug: token={hub.token}\n")
    requests_before = len(hub.requests)
    with pytest.raises(HubPushError, match="notes.md contains your Hugging Face token") as err:
        push_dataset(tmp_path / "b", REPO, token=hub.token, version="v1.0")
    assert hub.token not in str(err.value)
    assert hub.requests[requests_before:] == [], "a leaky folder is refused before any request"


def test_bad_inputs_fail_clearly(hub, tmp_path):
    make_dataset_folder(tmp_path / "b", {"rlhn": 3})
    with pytest.raises(HubPushError, match="not of the form vX.Y"):
        push_dataset(tmp_path / "b", REPO, version="1.0")
    report = json.loads((tmp_path / "b" / "hardneg_build.json").read_text())
    report["rows"]["rlhn"] = 99
    (tmp_path / "b" / "hardneg_build.json").write_text(json.dumps(report))
    with pytest.raises(HubPushError, match="config 'rlhn' has 99 rows but its parquet files hold 3"):
        push_dataset(tmp_path / "b", REPO)
    with pytest.raises(HubPushError, match="has no README.md"):
        push_dataset(tmp_path / "nothing", REPO)


def test_branch_push_and_large_folder_path(hub, tmp_path):
    make_dataset_folder(tmp_path / "b1", {"rlhn": 5})
    make_dataset_folder(tmp_path / "b2", {"rlhn": 8}, max_shard_size="3KB")
    push_dataset(tmp_path / "b1", REPO, version="v1.0")
    # Above the threshold the data files go up through the resumable multi-commit upload, then one
    # commit with the card; the tag is on that last commit, which holds the whole build.
    result = push_dataset(tmp_path / "b2", REPO, version="v1.1", revision="dev", large_upload_bytes=1)
    api = HfApi()
    refs = api.list_repo_refs(REPO, repo_type="dataset")
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert {t.name: t.target_commit for t in refs.tags}["v1.1"] == result.commit_sha
    assert api.dataset_info(REPO, revision="main").sha != result.commit_sha  # main untouched
    titles = [c.title for c in api.list_repo_commits(REPO, repo_type="dataset", revision="dev")]
    assert titles[0].startswith("hardneg build v1.1") and titles[1].endswith("(data files)")
    tagged = api.list_repo_files(REPO, repo_type="dataset", revision="v1.1")
    local = sorted(f"rlhn/{p.name}" for p in (tmp_path / "b2" / "rlhn").glob("*.parquet"))
    assert [p for p in tagged if p.startswith("rlhn/")] == local and len(local) > 1
    assert [e.splitlines()[0].split(" (")[0] for e in changelog_entries(_card(api, "v1.1"))] == ["### v1.1", "### v1.0"]


def test_large_push_resumes_after_an_interrupted_upload(hub, tmp_path):
    """Re-running a big push after an interruption sends only the data files the Hub lacks."""
    make_dataset_folder(tmp_path / "b", {"rlhn": 12}, max_shard_size="3KB")
    shards = sorted(p.name for p in (tmp_path / "b" / "rlhn").glob("*.parquet"))
    assert len(shards) >= 3
    api = HfApi()
    api.create_repo(REPO, repo_type="dataset")
    done = shards[: len(shards) // 2]  # what the interrupted run got onto the Hub
    api.upload_folder(
        repo_id=REPO, repo_type="dataset", folder_path=tmp_path / "b", allow_patterns=[f"rlhn/{n}" for n in done],
        commit_message="interrupted run (data files)",
    )
    result = push_dataset(tmp_path / "b", REPO, version="v1.0", large_upload_bytes=1)
    repo = hub.storage.get("dataset", REPO)
    data_commit, before = repo.history(result.commit_sha)[1:3]
    sent = sorted(p for p, blob in data_commit.files.items() if before.files.get(p) != blob)
    assert sent == [f"rlhn/{n}" for n in shards[len(shards) // 2 :]]
    assert sorted(p for p in api.list_repo_files(REPO, repo_type="dataset", revision="v1.0") if p.startswith("rlhn/")) == [
        f"rlhn/{n}" for n in shards
    ]


def test_card_configs_in_every_data_files_form(tmp_path):
    from builders.output.publish import read_card_configs

    readme = tmp_path / "README.md"
    readme.write_text(
        "---\nconfigs:\n- config_name: a\n  data_files: a/*.parquet\n"
        "- config_name: b\n  data_files:\n  - split: train\n    path: [b/x-*.parquet, b/y-*.parquet]\n"
        "- config_name: c\n  data_files:\n  - split: train\n    path: c/*.parquet\n---\n"
    )
    assert read_card_configs(readme) == {"a": ["a/*.parquet"], "b": ["b/x-*.parquet", "b/y-*.parquet"], "c": ["c/*.parquet"]}
    readme.write_text("# no front matter\n")
    with pytest.raises(HubPushError, match="no YAML front matter"):
        read_card_configs(readme)


def test_builder_report_beside_the_store_is_read(hub, tmp_path):
    """The builder's own report shape (configs, judges as dicts, recipe sources), kept outside the folder."""
    make_dataset_folder(tmp_path / "b", {"rlhn": 4, "judgments": 6}, with_report=False)
    report = {
        "configs": {"rlhn": 4, "judgments": 6},
        "judges": [{"stage": "rlhn/stage1", "model": "gpt-4o-mini", "prompt_version": "p3", "backend": "openai"}],
        "recipe": {"sources": [{"hub": "castorini/rlhn-sample", "revision": "feedbee"}], "card": {}},
    }
    (tmp_path / "build_report.json").write_text(json.dumps(report))
    push_dataset(tmp_path / "b", REPO, version="v1.0", build_report=tmp_path / "build_report.json")
    (entry,) = changelog_entries(_card(HfApi(), "v1.0"))
    assert "`castorini/rlhn-sample` @ `feedbee`" in entry and "rlhn/stage1: gpt-4o-mini (prompt p3)" in entry
    assert "`rlhn` 4, `judgments` 6" in entry
    report["configs"]["judgments"] = 7
    (tmp_path / "build_report.json").write_text(json.dumps(report))
    with pytest.raises(HubPushError, match=r"build_report.json says config 'judgments' has 7 rows .* hold 6"):
        push_dataset(tmp_path / "b", REPO, version="v1.1", build_report=tmp_path / "build_report.json")
    with pytest.raises(HubPushError, match="does not exist"):
        push_dataset(tmp_path / "b", REPO, build_report=tmp_path / "missing.json")


def test_command_line_version_flag(hub, tmp_path, capsys):
    from builders.output.publish import main

    make_dataset_folder(tmp_path / "b", {"rlhn": 3})
    assert main([str(tmp_path / "b"), REPO, "--version", "v1.0", "--private"]) == 0
    assert "tagged v1.0" in capsys.readouterr().out
    assert main([str(tmp_path / "b"), REPO, "--version", "v1.0"]) == 1
    err = capsys.readouterr().err
    assert "already has tag v1.0" in err and hub.token not in err
    assert HfApi().dataset_info(REPO).private is True
