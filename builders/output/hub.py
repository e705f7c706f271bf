"""What dataset and model pushes share: the token, version tags, one commit + its tag.

Rules both pushes follow:
- The token comes from the `token` argument, else `HF_TOKEN`, else the HF login
  (`huggingface_hub.get_token()`); it is never logged, printed or written into a file we push.
- A version (`vX.Y` or `vX.Y.Z`) becomes a git tag on the pushed commit. An existing tag is never
  moved: the check runs BEFORE anything is uploaded, and `create_tag(..., exist_ok=False)` still
  refuses if another push took the tag in between.
- Everything of one build lands in one commit (`create_commit`), parented on the head we read, so
  a concurrent push to the same branch fails instead of being silently merged. Folders bigger
  than `LARGE_UPLOAD_BYTES` go through `upload_folder`'s streamed multi-commit upload first
  (resumable: re-running skips what the Hub already has), then one final commit with the card.
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile

logger = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^v\d+\.\d+(\.\d+)?$")
LARGE_UPLOAD_BYTES = 2 * 1024**3  # above this, data files go through the resumable multi-commit upload
TEXT_SUFFIXES = {".md", ".json", ".jsonl", ".yaml", ".yml", ".txt", ".cfg", ".ini", ".toml", ".py", ".csv", ".tsv"}


class HubPushError(RuntimeError):
    """A push that cannot go ahead; the message says what to do."""


class TagExistsError(HubPushError):
    """The version's tag already exists: published versions are never overwritten."""


@dataclass
class PushResult:
    repo_id: str
    repo_type: str
    revision: str  # the branch pushed to
    commit_sha: str
    commit_url: str
    version: str | None  # the tag on commit_sha, if any
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


    def summary(self) -> str:
        """The line a publish command prints."""
        tag = f", tagged {self.version}" if self.version else ""
        return f"pushed {self.repo_id}@{self.revision}: {self.commit_url}{tag}"


def add_push_options(parser: argparse.ArgumentParser, what: str) -> None:
    """The options every publish command takes (``what``: "build", "model")."""
    parser.add_argument("--version", help=f"tag this {what} vX.Y (never overwrites an existing tag)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", default="main", help="branch to push to (created if missing)")
    parser.add_argument("--message", help="commit message")


def push_options(args: argparse.Namespace) -> dict:
    """``add_push_options``' values as the push functions' keyword arguments."""
    return dict(version=args.version, private=args.private, commit_message=args.message, revision=args.revision)


def resolve_token(token: str | None) -> str:
    """The write token: argument, else HF_TOKEN, else the saved HF login. Never printed."""
    resolved = token or get_token()
    if not resolved:
        raise HubPushError(
            "No Hugging Face token found. Pass token=..., set the HF_TOKEN environment variable, "
            "or log in once with `hf auth login`; pushing needs a token with write access."
        )
    return resolved


def check_version(version: str | None) -> None:
    if version is not None and not VERSION_PATTERN.match(version):
        raise HubPushError(f"Version {version!r} is not of the form vX.Y or vX.Y.Z (for example v1.0).")


def next_version(version: str) -> str:
    """v1.0 -> v1.1, v2.3.4 -> v2.3.5: the suggestion in the existing-tag error."""
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}"


def ensure_tag_free(api: HfApi, repo_id: str, repo_type: str, version: str | None) -> None:
    """Fail before uploading anything when `version` is already a tag of the repo."""
    if version is None:
        return
    try:
        refs = api.list_repo_refs(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return  # a repo that does not exist yet has no tags
    for tag in refs.tags:
        if tag.name == version:
            raise TagExistsError(
                f"The {repo_type} repo {repo_id} already has tag {version} (commit {tag.target_commit[:12]}). "
                f"Published versions are never overwritten, so nothing was uploaded. "
                f"Push this build as a new version, e.g. --version {next_version(version)}."
            )


def prepare_repo(api: HfApi, repo_id: str, repo_type: str, private: bool, revision: str) -> str:
    """Create the repo (and branch) when missing; return the head commit of `revision`."""
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    sha = api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    assert sha is not None, f"The Hub returned no commit sha for {repo_type} {repo_id}@{revision}"
    return sha


def remote_files(api: HfApi, repo_id: str, repo_type: str, revision: str) -> list[str]:
    """Paths of every file at `revision`."""
    entries = api.list_repo_tree(repo_id, repo_type=repo_type, revision=revision, recursive=True)
    return sorted(e.path for e in entries if isinstance(e, RepoFile))


def read_remote_text(api: HfApi, repo_id: str, repo_type: str, path: str, revision: str) -> str | None:
    """The text of `path` at `revision`, or None when the repo has no such file."""
    with tempfile.TemporaryDirectory() as cache:
        try:
            local = api.hf_hub_download(repo_id, path, repo_type=repo_type, revision=revision, cache_dir=cache)
        except (EntryNotFoundError, RevisionNotFoundError):
            return None
        return Path(local).read_text(encoding="utf-8")


def assert_no_token(files: dict[str, Path | bytes], token: str) -> None:
    """Refuse to push a text file that contains the token (names the file, never the token)."""
    needle = token.encode()
    for path_in_repo, source in files.items():
        if Path(path_in_repo).suffix.lower() not in TEXT_SUFFIXES:
            continue
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if needle in data:
            raise HubPushError(
                f"{path_in_repo} contains your Hugging Face token; refusing to push it. "
                "Remove the token from that file (tokens belong in HF_TOKEN or the HF login only)."
            )


def local_files(folder: Path) -> dict[str, Path]:
    """Every file under `folder` by its path in the repo, hidden files and folders left out."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = path
    return out


def commit_and_tag(
    api: HfApi,
    repo_id: str,
    repo_type: str,
    *,
    files: dict[str, Path | bytes],
    deletions: Iterable[str],
    message: str,
    revision: str,
    parent_commit: str,
    version: str | None,
) -> PushResult:
    """One commit with `files` added and `deletions` removed, then the version tag on it."""
    deleted = sorted(deletions)
    operations: list = [CommitOperationDelete(path_in_repo=p) for p in deleted]
    operations += [
        CommitOperationAdd(path_in_repo=p, path_or_fileobj=src if isinstance(src, bytes) else str(src))
        for p, src in sorted(files.items())
    ]
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=message,
        repo_type=repo_type,
        revision=revision,
        parent_commit=parent_commit,
    )
    logger.info("Pushed %s %s@%s: commit %s", repo_type, repo_id, revision, info.oid)
    if version is not None:
        try:
            api.create_tag(repo_id, tag=version, tag_message=message, revision=info.oid, repo_type=repo_type)
        except HfHubHTTPError as err:
            if err.response is None or err.response.status_code != 409:
                raise
            raise TagExistsError(
                f"Commit {info.oid[:12]} was pushed to {repo_type} {repo_id}@{revision}, but tag {version} was "
                f"taken by another push in the meantime and is never overwritten. Tag this commit as a new "
                f"version, e.g. --version {next_version(version)}."
            ) from err
        logger.info("Tagged %s %s@%s as %s", repo_type, repo_id, info.oid[:12], version)
    return PushResult(
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit_sha=info.oid,
        commit_url=info.commit_url,
        version=version,
        uploaded=sorted(files),
        deleted=deleted,
    )


def upload_resumable(
    api: HfApi,
    repo_id: str,
    repo_type: str,
    folder: Path,
    paths: list[str],
    *,
    message: str,
    revision: str,
    parent_commit: str,
) -> str:
    """Upload `paths` of a big folder with `upload_folder`'s streamed multi-commit upload.

    Interrupted? Run the same push again: files the Hub already has at `revision` are skipped
    (same content, same blob id), so only what is missing is sent. Returns the new head sha.
    """
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type=repo_type,
        revision=revision,
        allow_patterns=paths,
        commit_message=f"{message} (data files)",
        parent_commit=parent_commit,
    )
    sha = api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    assert sha is not None
    return sha
