"""The Hub stand-in answers stock `huggingface_hub` / `datasets` calls the way the Hub does."""

from __future__ import annotations

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.stand_ins.hub_server import hub_stand_in
from tests.stand_ins.hub_storage import git_blob_id


@pytest.fixture
def hub(tmp_path):
    with hub_stand_in(tmp_path) as server:
        yield server


@pytest.fixture
def api(hub):
    return HfApi(token=hub.token)


def _add(path: str, data: bytes) -> CommitOperationAdd:
    return CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)


def test_whoami_and_wrong_token(hub, api):
    me = api.whoami()
    assert me["name"] == "tester" and [o["name"] for o in me["orgs"]] == ["org"]
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        HfApi(token="hf_wrong").whoami()
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong").create_repo("org/x")
    assert err.value.response.status_code == 401


def test_create_repo_types_visibility_and_rights(hub, api, tmp_path):
    url = api.create_repo("org/data", repo_type="dataset", private=True)
    assert url.repo_id == "org/data" and url.repo_type == "dataset"
    assert api.create_repo("org/data", repo_type="dataset", exist_ok=True).repo_id == "org/data"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("org/data", repo_type="dataset")
    assert err.value.response.status_code == 409
    api.create_repo("tester/model")  # own namespace, model, public
    assert api.model_info("tester/model").private is False
    assert api.dataset_info("org/data").private is True
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("someone-else/model")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError):
        HfApi(token=False).create_repo("org/anon")


def test_private_repo_needs_the_token(hub, api, tmp_path):
    api.create_repo("org/secret", repo_type="dataset", private=True)
    api.create_commit("org/secret", [_add("a.txt", b"hidden")], commit_message="add", repo_type="dataset")
    assert api.file_exists("org/secret", "a.txt", repo_type="dataset")
    anonymous = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.dataset_info("org/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/secret", "a.txt", repo_type="dataset", token=False, cache_dir=tmp_path / "c1")
    with pytest.raises(RepositoryNotFoundError):
        anonymous.create_commit("org/secret", [_add("b.txt", b"x")], commit_message="no", repo_type="dataset")


def test_commits_are_snapshots_with_parent_check(hub, api):
    api.create_repo("org/m")
    first = api.create_commit("org/m", [_add("a.txt", b"1"), _add("dir/b.txt", b"2")], commit_message="one")
    second = api.create_commit(
        "org/m", [_add("a.txt", b"1 changed"), CommitOperationDelete("dir/")], commit_message="two", parent_commit=first.oid
    )
    assert api.list_repo_files("org/m", revision=first.oid) == [".gitattributes", "a.txt", "dir/b.txt"]
    assert api.list_repo_files("org/m", revision=second.oid) == [".gitattributes", "a.txt"]
    assert [c.title for c in api.list_repo_commits("org/m")] == ["two", "one", "initial commit"]
    with pytest.raises(HfHubHTTPError) as err:  # the head moved on since `first`
        api.create_commit("org/m", [_add("c.txt", b"3")], commit_message="stale", parent_commit=first.oid)
    assert err.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        api.create_commit("org/m", [CommitOperationDelete("nope.txt")], commit_message="delete missing")
    # Unchanged content is skipped by the client thanks to the preupload oid: no empty commit.
    again = api.create_commit("org/m", [_add("a.txt", b"1 changed")], commit_message="same")
    assert again.oid == second.oid


def test_branches_tags_refs_and_revisions(hub, api):
    api.create_repo("org/d", repo_type="dataset")
    one = api.create_commit("org/d", [_add("f.txt", b"v1")], commit_message="v1", repo_type="dataset")
    api.create_tag("org/d", tag="v1.0", revision=one.oid, repo_type="dataset")
    api.create_branch("org/d", branch="dev", repo_type="dataset")
    two = api.create_commit("org/d", [_add("f.txt", b"dev")], commit_message="dev", repo_type="dataset", revision="dev")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag("org/d", tag="v1.0", revision="dev", repo_type="dataset")
    assert err.value.response.status_code == 409 and "v1.0 already exists" in str(err.value)
    api.create_tag("org/d", tag="v1.0", revision="dev", repo_type="dataset", exist_ok=True)  # still untouched
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch("org/d", branch="dev", repo_type="dataset")
    assert err.value.response.status_code == 409
    api.create_branch("org/d", branch="dev", repo_type="dataset", exist_ok=True)
    refs = api.list_repo_refs("org/d", repo_type="dataset")
    assert {b.name: b.target_commit for b in refs.branches} == {"main": one.oid, "dev": two.oid}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0", "refs/tags/v1.0", one.oid)]
    assert api.dataset_info("org/d", revision="v1.0").sha == one.oid
    assert api.dataset_info("org/d", revision=two.oid[:10]).sha == two.oid
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info("org/d", revision="v9.9")
    api.delete_tag("org/d", tag="v1.0", repo_type="dataset")
    assert api.list_repo_refs("org/d", repo_type="dataset").tags == []


def test_tree_and_paths_info(hub, api):
    api.create_repo("org/t", repo_type="dataset")
    api.create_commit(
        "org/t", [_add("a/x.parquet", b"xx"), _add("a/b/y.txt", b"yyy"), _add("z.md", b"z")], commit_message="c", repo_type="dataset"
    )
    top = {e.path: type(e).__name__ for e in api.list_repo_tree("org/t", repo_type="dataset")}
    assert top == {".gitattributes": "RepoFile", "a": "RepoFolder", "z.md": "RepoFile"}
    deep = [e.path for e in api.list_repo_tree("org/t", "a", repo_type="dataset", recursive=True)]
    assert sorted(deep) == ["a/b", "a/b/y.txt", "a/x.parquet"]
    expanded = next(iter(api.list_repo_tree("org/t", "a/b", repo_type="dataset", expand=True)))
    assert expanded.size == 3 and expanded.blob_id == git_blob_id(b"yyy") and expanded.last_commit.title == "c"
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/t", "missing", repo_type="dataset"))
    info = api.get_paths_info("org/t", ["a", "z.md", "missing"], repo_type="dataset")
    assert [(type(i).__name__, i.path) for i in info] == [("RepoFolder", "a"), ("RepoFile", "z.md")]


def test_resolve_headers_downloads_and_ranges(hub, api, tmp_path):
    api.create_repo("org/r")
    data = bytes(range(256)) * 40
    commit = api.create_commit("org/r", [_add("w/blob.bin", data)], commit_message="blob")
    api.create_tag("org/r", tag="v1.0")
    meta = get_hf_file_metadata(hf_hub_url("org/r", "w/blob.bin", revision="v1.0"), token=hub.token)
    assert (meta.commit_hash, meta.etag, meta.size) == (commit.oid, git_blob_id(data), len(data))
    path = hf_hub_download("org/r", "w/blob.bin", revision="v1.0", cache_dir=tmp_path / "c")
    assert open(path, "rb").read() == data
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/r", "nope.bin", cache_dir=tmp_path / "c")
    snapshot = snapshot_download("org/r", revision="v1.0", cache_dir=tmp_path / "s")
    assert commit.oid in snapshot and open(f"{snapshot}/w/blob.bin", "rb").read() == data
    fs = HfFileSystem(token=hub.token)
    with fs.open("org/r/w/blob.bin", "rb", block_size=100) as handle:  # ranged GETs
        handle.seek(1000)
        assert handle.read(50) == data[1000:1050]
    assert fs.ls("org/r/w", detail=False) == ["org/r/w/blob.bin"]


def test_upload_folder(hub, api, tmp_path):
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    (folder / "b.txt").write_text("b")
    api.create_repo("org/up")
    info = api.upload_folder(repo_id="org/up", folder_path=folder, commit_message="folder")
    assert api.list_repo_files("org/up", revision=info.oid) == [".gitattributes", "b.txt", "sub/a.txt"]
    (folder / "b.txt").write_text("b2")
    again = api.upload_folder(repo_id="org/up", folder_path=folder, commit_message="again", delete_patterns="sub/*")
    assert api.list_repo_files("org/up", revision=again.oid) == [".gitattributes", "b.txt", "sub/a.txt"]
    assert open(hf_hub_download("org/up", "b.txt", cache_dir=tmp_path / "c"), "rb").read() == b"b2"


def test_fresh_process_only_needs_hf_endpoint(hub, api, tmp_path):
    """Outside this process, setting HF_ENDPOINT (+ HF_HUB_OFFLINE=0) before the import is enough."""
    import os
    import subprocess
    import sys

    api.create_repo("org/env", repo_type="dataset", private=True)
    api.create_commit("org/env", [_add("hello.txt", b"from the stand-in")], commit_message="c", repo_type="dataset")
    assert os.environ["HF_ENDPOINT"] == hub.url and os.environ["HF_HUB_OFFLINE"] == "0"  # set by hub_stand_in
    script = (
        "from huggingface_hub import hf_hub_download\n"
        "print(open(hf_hub_download('org/env', 'hello.txt', repo_type='dataset'), encoding='utf-8').read())\n"
    )
    env = {**os.environ, "HF_TOKEN": hub.token, "HF_HUB_CACHE": str(tmp_path / "sub-cache")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "from the stand-in"
