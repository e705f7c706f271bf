"""A Hugging Face Hub stand-in on 127.0.0.1 for tests: real commits, branches, tags, downloads.

It answers the HTTP routes that the installed `huggingface_hub` (2.x) and `datasets` (5.x) call,
with the shapes read from their client code (`hf_api.py`, `_commit_api.py`, `file_download.py`,
`hf_file_system.py`, `utils/_http.py`, `datasets/load.py`):

    GET  /api/whoami-v2                                   user, orgs, token role
    POST /api/repos/create                                {name, organization, type, visibility}
    POST /api/validate-yaml                               card front matter must parse
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]        repo info (sha, private, siblings)
    GET  /api/{type}s/{ns}/{name}/refs                    branches, tags, converts
    POST|DELETE /api/{type}s/{ns}/{name}/branch/{branch}  {startingPoint}
    POST /api/{type}s/{ns}/{name}/tag/{rev}               {tag, message}; existing tag -> 409
    DELETE /api/{type}s/{ns}/{name}/tag/{tag}
    GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]     ?recursive=&expand=
    POST /api/{type}s/{ns}/{name}/paths-info/{rev}        form: paths=..., expand=
    GET  /api/{type}s/{ns}/{name}/commits/{rev}
    POST /api/{type}s/{ns}/{name}/preupload/{rev}         always "regular": no LFS / Xet involved
    POST /api/{type}s/{ns}/{name}/commit/{rev}            NDJSON header / file / deletedFile / deletedFolder
    HEAD|GET /{ns}/{name}/resolve/{rev}/{path}            models (X-Repo-Commit, ETag, Content-Length, Range)
    HEAD|GET /datasets/{ns}/{name}/resolve/{rev}/{path}   datasets, same headers

Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) and
`X-Error-Message` headers plus a `{"error": ...}` body, so the client raises its usual typed errors.
Auth: one token is valid (for one user and its orgs). Writes always need it; private repos need it
to read; a wrong token is a 401 everywhere, like the Hub.

Pointing the clients at it. `huggingface_hub.constants` and `datasets.config` read `HF_ENDPOINT`
and `HF_HUB_OFFLINE` once, at import, and `huggingface_hub`'s module-level functions
(`create_repo`, `snapshot_download`'s `resolve_revision`, ...) are bound to an `HfApi` built at
import. So setting `HF_ENDPOINT` works only in a fresh process that sets it before the first
import (what `point_clients_at` also does for subprocesses); inside a test process, where those
modules are already imported, `point_clients_at` patches the values that decide where requests go
and restores them on exit: `constants.ENDPOINT`, `constants.HUGGINGFACE_CO_URL_TEMPLATE`,
`constants.HF_HUB_OFFLINE` (off, since the tests otherwise run with `HF_HUB_OFFLINE=1`),
`constants.HF_URL_HOSTS`, `hf_api.api.endpoint`, `datasets.config.HF_ENDPOINT` /
`HUB_DATASETS_URL` / `HF_HUB_OFFLINE`, and it turns off the two calls `load_dataset` makes to other
hosts (`USE_PARQUET_EXPORT` -> datasets-server, `HF_UPDATE_DOWNLOAD_COUNTS` -> S3), so only
loopback traffic happens. Caches (`HF_HUB_CACHE`, `datasets` caches) go to a folder of the test.

Usage:

    from tests.stand_ins.hub_server import hub_stand_in
    with hub_stand_in(tmp_path) as hub:        # server up, clients pointed at it
        HfApi(token=hub.token).create_repo("org/x", repo_type="dataset")
        load_dataset("org/x", "rlhn", revision="v1.0", token=hub.token)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from tests.stand_ins.hub_routes import RepoRoutes
from tests.stand_ins.hub_storage import HubError, HubStorage, Repo

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:  # quiet: no stderr noise in tests
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # plumbing ----------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        segments = split.path.split("/")[1:]
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        hub = self.server.hub
        hub.requests.append((method, split.path))
        try:
            with hub.lock:
                caller = hub.caller(self.headers.get("Authorization"))
                routes = RepoRoutes(hub, self, caller, method)
                if segments[:1] == ["api"]:
                    self._api(routes, method, segments[1:])
                else:
                    self._resolve(routes, method, segments)
        except HubError as err:
            self.send_error_json(err)
        except Exception as err:  # a bug in the stand-in: answer 500 with the cause rather than hang up
            self.send_error_json(HubError(500, f"Hub stand-in error: {type(err).__name__}: {err}"))

    def _api(self, routes: RepoRoutes, method: str, seg: list[str]) -> None:
        if seg == ["whoami-v2"] and method == "GET":
            return self.send_json(routes.whoami())
        if seg == ["repos", "create"] and method == "POST":
            return self.send_json(routes.create_repo(json.loads(self.body)))
        if seg == ["validate-yaml"] and method == "POST":
            return self.send_json(validate_yaml(json.loads(self.body)))
        if len(seg) < 3 or seg[0] not in REPO_TYPES:
            raise HubError(404, f"No route for {method} /api/{'/'.join(seg)}")
        repo_type, repo_id, rest = REPO_TYPES[seg[0]], f"{unquote(seg[1])}/{unquote(seg[2])}", seg[3:]
        action, args = (rest[0], [unquote(s) for s in rest[1:]]) if rest else ("", [])
        handler = routes.api_route(method, action, len(args))
        if handler is None:
            raise HubError(404, f"No route for {method} /api/{'/'.join(seg)}")
        return handler(repo_type, repo_id, args)

    def _resolve(self, routes: RepoRoutes, method: str, seg: list[str]) -> None:
        repo_type = "model"
        if seg[:1] in (["datasets"], ["spaces"]):
            repo_type, seg = REPO_TYPES[seg[0]], seg[1:]
        if len(seg) < 5 or seg[2] != "resolve" or method not in ("GET", "HEAD"):
            raise HubError(404, f"No route for {method} {self.path}")
        repo_id = f"{unquote(seg[0])}/{unquote(seg[1])}"
        routes.resolve_file(repo_type, repo_id, unquote(seg[3]), unquote("/".join(seg[4:])))

    def send_json(self, payload: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error_json(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.commit:
            headers["X-Repo-Commit"] = err.commit
        self.send_json({"error": err.message, **err.body}, status=err.status, headers=headers)

    def send_bytes(self, data: bytes, headers: dict[str, str]) -> None:
        status, start, end = 200, 0, len(data)
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            first, _, last = range_header[len("bytes=") :].partition("-")
            start = int(first) if first else max(len(data) - int(last), 0)
            end = min(int(last) + 1, len(data)) if (first and last) else len(data)
            if start >= len(data) and len(data) > 0:
                raise HubError(416, f"Range not satisfiable: {range_header}")
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
        body = data[start:end]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def validate_yaml(payload: dict) -> dict:
    """Like the Hub: a README whose front matter does not parse as a YAML mapping is refused."""
    content: str = payload.get("content", "")
    if content.startswith("---"):
        front = content.split("\n---", 1)[0][3:]
        try:
            data = yaml.safe_load(front)
        except yaml.YAMLError as err:
            raise HubError(400, f"Invalid YAML in README.md: {err}") from err
        if data is not None and not isinstance(data, dict):
            raise HubError(400, "README.md front matter must be a YAML mapping")
    return {"errors": [], "warnings": []}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class HubServer:
    """The stand-in: storage + one valid token + an HTTP server thread on an ephemeral port."""

    def __init__(self, root: Path, token: str | None = None, user: str = "tester", orgs: tuple[str, ...] = ("org",)):
        self.storage = HubStorage(root)
        self.token = token or f"hf_standin_{secrets.token_hex(12)}"
        self.user = user
        self.orgs = orgs
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []  # (method, path); never headers, so never tokens
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # auth ----------------------------------------------------------------------------------------
    def caller(self, authorization: str | None) -> str | None:
        """The user behind the Authorization header, None when anonymous; a wrong token is a 401."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip(), self.token):
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.user

    def can_write(self, caller: str | None, repo_id: str) -> bool:
        return caller is not None and repo_id.split("/")[0] in (caller, *self.orgs)

    def readable_repo(self, caller: str | None, repo_type: str, repo_id: str) -> Repo:
        repo = self.storage.get(repo_type, repo_id)
        if repo is None or (repo.private and not self.can_write(caller, repo_id)):
            status = 401 if caller is None else 404
            raise HubError(status, "Repository not found", code="RepoNotFound")
        return repo

    def writable_repo(self, caller: str | None, repo_type: str, repo_id: str) -> Repo:
        if caller is None:
            raise HubError(401, "You must be authenticated to write to this repo", code="RepoNotFound")
        repo = self.readable_repo(caller, repo_type, repo_id)
        if not self.can_write(caller, repo_id):
            raise HubError(403, f"You don't have the rights to write to {repo_type} repo {repo_id}")
        return repo


@contextlib.contextmanager
def point_clients_at(endpoint: str, cache_dir: Path) -> Iterator[None]:
    """Send `huggingface_hub`, `datasets`, `transformers` and `sentence-transformers` traffic to
    `endpoint`, online, with caches under `cache_dir`; restore everything on exit."""
    import datasets.config as ds_config
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.hf_api as hf_api
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import HfFileSystem

    cache_dir = Path(cache_dir)
    host = urlsplit(endpoint).hostname
    patches: list[tuple[object, str, object]] = [
        (hf_constants, "ENDPOINT", endpoint),
        (hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
        (hf_constants, "HF_HUB_OFFLINE", False),
        (hf_constants, "HF_URL_HOSTS", frozenset(hf_constants.HF_URL_HOSTS | {host})),
        (hf_constants, "HF_HUB_CACHE", str(cache_dir / "hub")),
        (hf_constants, "HUGGINGFACE_HUB_CACHE", str(cache_dir / "hub")),
        (hf_constants, "HF_HUB_DISABLE_TELEMETRY", True),
        (hf_api.api, "endpoint", endpoint),
        # transformers keeps one HfApi, its endpoint read when first built: left as it was, a later stand-in's
        # tokenizer load listed files on an earlier, stopped one and sat ~2 min in huggingface_hub's backoff
        (transformers_hub, "_hf_api", None),
        (ds_config, "HF_ENDPOINT", endpoint),
        (ds_config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"),
        (ds_config, "HF_HUB_OFFLINE", False),
        (ds_config, "HF_DATASETS_OFFLINE", False),
        (ds_config, "USE_PARQUET_EXPORT", False),
        (ds_config, "HF_UPDATE_DOWNLOAD_COUNTS", False),
        (ds_config, "HF_DATASETS_CACHE", cache_dir / "datasets"),
        (ds_config, "DOWNLOADED_DATASETS_PATH", cache_dir / "datasets" / "downloads"),
        (ds_config, "EXTRACTED_DATASETS_PATH", cache_dir / "datasets" / "downloads" / "extracted"),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_CACHE": str(cache_dir / "hub")}
    saved_env = {key: os.environ.get(key) for key in env}
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        os.environ.update(env)
        HfFileSystem.clear_instance_cache()
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        HfFileSystem.clear_instance_cache()


@contextlib.contextmanager
def hub_stand_in(tmp_dir: Path, **server_kwargs) -> Iterator[HubServer]:
    """Start a stand-in storing under `tmp_dir/hub-storage`, point the clients at it, yield it."""
    tmp_dir = Path(tmp_dir)
    with HubServer(tmp_dir / "hub-storage", **server_kwargs) as server, point_clients_at(server.url, tmp_dir / "hf-cache"):
        yield server

