"""Route handlers of the Hub stand-in (see hub_server.py for the route table and shapes)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from tests.stand_ins.hub_storage import Commit, HubError, Repo

if TYPE_CHECKING:
    from tests.stand_ins.hub_server import HubServer, _Handler

URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class RepoRoutes:
    """One request's view of the hub: who calls, and the handler that answers."""

    def __init__(self, hub: HubServer, handler: _Handler, caller: str | None, method: str):
        self.hub = hub
        self.http = handler
        self.caller = caller
        self.method = method

    @property
    def base_url(self) -> str:
        return f"http://{self.http.headers.get('Host')}"

    def api_route(self, method: str, action: str, nargs: int) -> Callable | None:
        table: dict[tuple[str, str, int], Callable] = {
            ("GET", "", 0): self.repo_info,
            ("GET", "revision", 1): self.repo_info,
            ("GET", "refs", 0): self.refs,
            ("POST", "branch", 1): self.create_branch,
            ("DELETE", "branch", 1): self.delete_branch,
            ("POST", "tag", 1): self.create_tag,
            ("DELETE", "tag", 1): self.delete_tag,
            ("POST", "paths-info", 1): self.paths_info,
            ("GET", "commits", 1): self.commits,
            ("POST", "preupload", 1): self.preupload,
            ("POST", "commit", 1): self.commit,
        }
        if method == "GET" and action == "tree" and nargs >= 1:
            return self.tree
        return table.get((method, action, nargs))

    # account and repos ---------------------------------------------------------------------------
    def whoami(self) -> dict:
        if self.caller is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return {
            "type": "user",
            "id": hashlib.sha1(self.caller.encode()).hexdigest()[:24],
            "name": self.caller,
            "fullname": self.caller,
            "orgs": [{"type": "org", "name": org, "roleInOrg": "write"} for org in self.hub.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": "write"}},
        }

    def create_repo(self, payload: dict) -> dict:
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.caller
        repo_id = f"{namespace}/{payload['name']}"
        if not self.hub.can_write(self.caller, repo_id):
            status = 401 if self.caller is None else 403
            raise HubError(status, f"You don't have the rights to create a {repo_type} under {namespace}")
        url = f"{self.base_url}/{URL_PREFIX[repo_type]}{repo_id}"
        if self.hub.storage.get(repo_type, repo_id) is not None:
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
        self.hub.storage.create(repo_type, repo_id, private=payload.get("visibility") == "private")
        return {"url": url, "name": repo_id, "id": repo_id}

    def repo_info(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        repo = self.hub.readable_repo(self.caller, repo_type, repo_id)
        commit = repo.resolve(args[0] if args else "main")
        blobs = _flag(self.http.query.get("blobs"))
        siblings = []
        for path, blob_id in sorted(commit.files.items()):
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(size=repo.blob_size(blob_id), blobId=blob_id)
            siblings.append(sibling)
        self.http.send_json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    # refs ----------------------------------------------------------------------------------------
    def refs(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        refs = self.hub.readable_repo(self.caller, repo_type, repo_id).refs()

        def entries(kind: str, prefix: str) -> list[dict]:
            return [{"name": n, "ref": f"{prefix}{n}", "targetCommit": sha} for n, sha in sorted(refs[kind].items())]

        self.http.send_json(
            {
                "branches": entries("branches", "refs/heads/"),
                "tags": entries("tags", "refs/tags/"),
                "converts": [],
                "pullRequests": [],
            }
        )

    def create_branch(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        payload = json.loads(self.http.body or b"{}")
        self.hub.writable_repo(self.caller, repo_type, repo_id).create_branch(args[0], payload.get("startingPoint"))
        self.http.send_json({})

    def delete_branch(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        self.hub.writable_repo(self.caller, repo_type, repo_id).delete_branch(args[0])
        self.http.send_json({})

    def create_tag(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        payload = json.loads(self.http.body or b"{}")
        self.hub.writable_repo(self.caller, repo_type, repo_id).create_tag(payload["tag"], args[0])
        self.http.send_json({})

    def delete_tag(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        self.hub.writable_repo(self.caller, repo_type, repo_id).delete_tag(args[0])
        self.http.send_json({})

    # listings ------------------------------------------------------------------------------------
    def tree(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        repo = self.hub.readable_repo(self.caller, repo_type, repo_id)
        commit = repo.resolve(args[0])
        path = "/".join(args[1:]).strip("/")
        recursive, expand = _flag(self.http.query.get("recursive")), _flag(self.http.query.get("expand"))
        prefix = f"{path}/" if path else ""
        if path in commit.files or (path and not any(p.startswith(prefix) for p in commit.files)):
            raise HubError(404, f"Entry not found: {path} is not a folder", code="EntryNotFound", commit=commit.sha)
        entries: dict[str, dict] = {}
        for file_path in sorted(commit.files):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if folder not in entries:
                    entries[folder] = self._entry(repo, commit, folder, expand)
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                entries[file_path] = self._entry(repo, commit, file_path, expand)
        self.http.send_json(list(entries.values()))

    def paths_info(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        repo = self.hub.readable_repo(self.caller, repo_type, repo_id)
        commit = repo.resolve(args[0])
        form = parse_qs(self.http.body.decode())
        expand = _flag(form.get("expand", ["false"])[-1])
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            is_folder = any(p.startswith(path + "/") for p in commit.files)
            if path in commit.files or is_folder:
                out.append(self._entry(repo, commit, path, expand))
        self.http.send_json(out)

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        if path in commit.files:
            blob_id = commit.files[path]
            entry = {"type": "file", "oid": blob_id, "size": repo.blob_size(blob_id), "path": path}
            touched = lambda c: c.files.get(path)  # noqa: E731
        else:
            under = sorted((p, b) for p, b in commit.files.items() if p.startswith(path + "/"))
            entry = {"type": "directory", "oid": hashlib.sha1(json.dumps(under).encode()).hexdigest(), "size": 0, "path": path}
            touched = lambda c: sorted((p, b) for p, b in c.files.items() if p.startswith(path + "/"))  # noqa: E731
        if expand:
            last = commit
            for older in repo.history(commit.sha)[1:]:
                if touched(older) != touched(commit):
                    break
                last = older
            entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return entry

    def commits(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        repo = self.hub.readable_repo(self.caller, repo_type, repo_id)
        history = repo.history(repo.resolve(args[0]).sha)
        self.http.send_json(
            [
                {"id": c.sha, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": self.hub.user}]}
                for c in history
            ]
        )

    # uploads ---------------------------------------------------------------------------------------
    def preupload(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        repo = self.hub.writable_repo(self.caller, repo_type, repo_id)
        commit = repo.resolve(args[0])
        files = json.loads(self.http.body)["files"]
        self.http.send_json(
            {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": commit.files.get(f["path"])}
                    for f in files
                ],
                "commitOid": commit.sha,
            }
        )

    def commit(self, repo_type: str, repo_id: str, args: list[str]) -> None:
        repo = self.hub.writable_repo(self.caller, repo_type, repo_id)
        if _flag(self.http.query.get("create_pr")):
            raise HubError(400, "The Hub stand-in does not support pull requests (create_pr)")
        branch = args[0].removeprefix("refs/heads/")
        header: dict = {}
        additions: dict[str, bytes] = {}
        deleted_files: list[str] = []
        deleted_folders: list[str] = []
        for line in self.http.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported encoding for {value['path']}: {value.get('encoding')}")
                additions[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                deleted_files.append(value["path"])
            elif key == "deletedFolder":
                deleted_folders.append(value["path"])
            else:
                raise HubError(400, f"The Hub stand-in only takes inline files (regular uploads), got {key!r}")
        if not header.get("summary"):
            raise HubError(400, "Commit header with a summary is required")
        commit = repo.apply_commit(
            branch,
            title=header["summary"],
            message=header.get("description", ""),
            additions=additions,
            deleted_files=deleted_files,
            deleted_folders=deleted_folders,
            parent_commit=header.get("parentCommit"),
        )
        url = f"{self.base_url}/{URL_PREFIX[repo_type]}{repo_id}/commit/{commit.sha}"
        self.http.send_json({"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None})

    # downloads -----------------------------------------------------------------------------------
    def resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self.hub.readable_repo(self.caller, repo_type, repo_id)
        commit = repo.resolve(revision)
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound", commit=commit.sha)
        blob_id = commit.files[path]
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob_id}"',
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        self.http.send_bytes(repo.blob(blob_id), headers)
