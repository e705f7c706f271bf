"""Storage behind the loopback Hub stand-in: repos with real commits, branches and tags, on disk.

Everything the stand-in keeps lives as plain files under one root folder, so a test can scan all
of it (for instance for a token that must never be written anywhere):

    <root>/<type>s/<namespace>/<name>/repo.json          visibility, creation date
    <root>/<type>s/<namespace>/<name>/refs.json          {"branches": {name: sha}, "tags": {name: sha}}
    <root>/<type>s/<namespace>/<name>/commits/<sha>.json  parent, message, date, {path: blob id}
    <root>/<type>s/<namespace>/<name>/blobs/<blob id>     file contents (blob id = git blob sha1)

A commit is a full snapshot of the tree (path -> blob id), so any commit sha, branch or tag
resolves to exactly the files of that version. Not thread safe by itself: the server serialises
access with one lock.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(data: bytes) -> str:
    """The git blob sha1 of `data` (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An error the server turns into an HTTP answer shaped like the Hub's."""

    def __init__(
        self, status: int, message: str, code: str | None = None, commit: str | None = None, body: dict | None = None
    ):
        super().__init__(message)
        self.body = body or {}  # extra fields of the JSON answer (e.g. "url" of an existing repo)
        self.status = status
        self.message = message
        self.code = code  # X-Error-Code: RepoNotFound, RevisionNotFound, EntryNotFound
        self.commit = commit  # X-Repo-Commit on EntryNotFound answers


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, str] = field(default_factory=dict)  # path -> blob id


class Repo:
    """One repo: its folder, refs and commits."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "repo.json").read_text())
        self.repo_type: str = meta["type"]
        self.repo_id: str = meta["id"]
        self.private: bool = meta["private"]
        self.created_at: str = meta["createdAt"]

    # refs ------------------------------------------------------------------------------------
    def refs(self) -> dict[str, dict[str, str]]:
        return json.loads((self.folder / "refs.json").read_text())

    def _write_refs(self, refs: dict[str, dict[str, str]]) -> None:
        (self.folder / "refs.json").write_text(json.dumps(refs, indent=1, sort_keys=True))

    def resolve(self, revision: str) -> Commit:
        """Branch, tag, full commit sha or a unique sha prefix (>= 7 chars) -> commit."""
        refs = self.refs()
        for kind, prefix in (("branches", "refs/heads/"), ("tags", "refs/tags/")):
            name = revision[len(prefix) :] if revision.startswith(prefix) else revision
            if name in refs[kind]:
                return self.commit(refs[kind][name])
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            matches = [p.stem for p in (self.folder / "commits").glob(f"{revision}*.json")]
            if len(matches) == 1:
                return self.commit(matches[0])
        raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def create_branch(self, branch: str, starting_point: str | None) -> None:
        refs = self.refs()
        if branch in refs["branches"]:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        refs["branches"][branch] = self.resolve(starting_point or "main").sha
        self._write_refs(refs)

    def delete_branch(self, branch: str) -> None:
        refs = self.refs()
        if branch not in refs["branches"] or branch == "main":
            raise HubError(404 if branch != "main" else 403, f"Cannot delete branch {branch}")
        del refs["branches"][branch]
        self._write_refs(refs)

    def create_tag(self, tag: str, revision: str) -> None:
        refs = self.refs()
        if tag in refs["tags"]:
            raise HubError(409, f"Tag {tag} already exists on {self.repo_type} {self.repo_id}")
        refs["tags"][tag] = self.resolve(revision).sha
        self._write_refs(refs)

    def delete_tag(self, tag: str) -> None:
        refs = self.refs()
        if tag not in refs["tags"]:
            raise HubError(404, f"Tag {tag} not found", code="RevisionNotFound")
        del refs["tags"][tag]
        self._write_refs(refs)

    # commits and blobs ---------------------------------------------------------------------
    def commit(self, sha: str) -> Commit:
        data = json.loads((self.folder / "commits" / f"{sha}.json").read_text())
        return Commit(**data)

    def blob(self, blob_id: str) -> bytes:
        return (self.folder / "blobs" / blob_id).read_bytes()

    def blob_size(self, blob_id: str) -> int:
        return (self.folder / "blobs" / blob_id).stat().st_size

    def history(self, sha: str) -> list[Commit]:
        out, current = [], self.commit(sha)
        while True:
            out.append(current)
            if current.parent is None:
                return out
            current = self.commit(current.parent)

    def apply_commit(
        self,
        branch: str,
        title: str,
        message: str,
        additions: dict[str, bytes],
        deleted_files: list[str],
        deleted_folders: list[str],
        parent_commit: str | None,
    ) -> Commit:
        """Write a new snapshot on `branch`: the head's files, minus deletions, plus additions."""
        refs = self.refs()
        if branch not in refs["branches"]:
            raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        head = self.commit(refs["branches"][branch])
        if parent_commit is not None and not head.sha.startswith(parent_commit):
            raise HubError(412, f"A commit has happened since. Please refresh and try again. (parent {parent_commit})")
        files = dict(head.files)
        for path in deleted_files:
            if path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
            del files[path]
        for folder in deleted_folders:
            prefix = folder.rstrip("/") + "/"
            doomed = [p for p in files if p.startswith(prefix)]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {folder}", code="EntryNotFound")
            for path in doomed:
                del files[path]
        for path, data in additions.items():
            blob_id = git_blob_id(data)
            blob_path = self.folder / "blobs" / blob_id
            if not blob_path.exists():
                blob_path.write_bytes(data)
            files[path] = blob_id
        commit = self._new_commit(head.sha, title, message, files)
        refs["branches"][branch] = commit.sha
        self._write_refs(refs)
        return commit

    def _new_commit(self, parent: str | None, title: str, message: str, files: dict[str, str]) -> Commit:
        date = now_iso()
        payload = json.dumps([parent, title, message, date, sorted(files.items()), time.perf_counter_ns()])
        sha = hashlib.sha1(payload.encode()).hexdigest()
        commit = Commit(sha=sha, parent=parent, title=title, message=message, date=date, files=files)
        (self.folder / "commits" / f"{sha}.json").write_text(json.dumps(commit.__dict__, indent=1))
        return commit

    # creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: Path, repo_type: str, repo_id: str, private: bool) -> Repo:
        for sub in ("commits", "blobs"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        meta = {"type": repo_type, "id": repo_id, "private": private, "createdAt": now_iso()}
        (folder / "repo.json").write_text(json.dumps(meta))
        (folder / "refs.json").write_text(json.dumps({"branches": {}, "tags": {}}))
        repo = cls(folder)
        blob_id = git_blob_id(GITATTRIBUTES)
        (folder / "blobs" / blob_id).write_bytes(GITATTRIBUTES)
        first = repo._new_commit(None, "initial commit", "", {".gitattributes": blob_id})
        repo._write_refs({"branches": {"main": first.sha}, "tags": {}})
        return repo


class HubStorage:
    """All repos of the stand-in, under one root folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _folder(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def get(self, repo_type: str, repo_id: str) -> Repo | None:
        folder = self._folder(repo_type, repo_id)
        return Repo(folder) if (folder / "repo.json").exists() else None

    def create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        if self.get(repo_type, repo_id) is not None:
            raise HubError(409, f"You already created this {repo_type} repo")
        return Repo.create(self._folder(repo_type, repo_id), repo_type, repo_id, private)

    def files(self) -> list[Path]:
        """Every file the stand-in has written (for scans of what it stores)."""
        return sorted(p for p in self.root.rglob("*") if p.is_file())
