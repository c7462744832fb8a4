"""A small, test-only Hugging Face Hub API server that runs on loopback.

It speaks just enough of the Hub's HTTP API for the real ``huggingface_hub`` client
(2.4.x) and ``transformers`` to create repos, push commits and download files.
Repos live in memory; file contents are stored content-addressed (git blob sha1)
in a temporary folder. Every commit keeps its full file table, so any commit sha
can be used as a revision, and branch ``main`` always points at the newest one.

Endpoints (``{type}`` is ``models``, ``datasets`` or ``spaces``):

    GET    /api/whoami-v2                               who owns the bearer token
    POST   /api/repos/create                            create a repo (409 + url if it exists)
    DELETE /api/repos/delete                            delete a repo
    POST   /api/validate-yaml                           README.md front-matter check (no auth)
    GET    /api/{type}/{ns}/{name}[/revision/{rev}]     repo info: sha, siblings, private, ...
    GET    /api/{type}/{ns}/{name}/tree/{rev}[/{path}]  file/folder listing (?recursive=true)
    GET    /api/{type}/{ns}/{name}/refs                 branches (only ``main``)
    GET    /api/{type}/{ns}/{name}/commits/{rev}        commit history, newest first
    POST   /api/{type}/{ns}/{name}/preupload/{rev}      answers uploadMode "regular" for every file
    POST   /api/{type}/{ns}/{name}/commit/{rev}         NDJSON commit: header, file, deletedFile, deletedFolder
    HEAD   /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}   file metadata headers
    GET    /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}   file content

Because preupload never answers "lfs", the client sends every file inline (base64) in the
commit payload and never uses the LFS batch API or hf-xet; this server implements neither.
Download responses carry no ``X-Xet-Hash`` header, so downloads are plain HTTP GETs.

Auth: write endpoints need ``Authorization: Bearer <token>`` with a known token (401 otherwise)
and the repo namespace must be the token's user or one of its orgs (403 otherwise). Reads of
public repos need no token; private repos answer 401/404 with ``X-Error-Code: RepoNotFound``
to anyone but their owner, like the Hub. Errors carry the ``X-Error-Code`` header the client
maps to its exceptions (RepoNotFound, RevisionNotFound, EntryNotFound).

Failure simulation: set ``server.fail_commits`` to an HTTP status (e.g. 500) and every commit
is refused with it before anything is stored (``commit_attempts`` counts the tries). Beware that
``upload_folder`` (hf_xet installed => its pipelined path) retries 408/429/500/502/503/504 commits
with backoff for ~23 s; ``upload_file``/``create_commit`` do not retry. Any other status
(e.g. 403, 501, 507) makes every path fail at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub) gives a file's content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An HTTP error answer, with the ``X-Error-Code`` the client understands."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, str]  # path in repo -> blob sha1


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid

    def resolve(self, revision: str) -> Commit:
        oid = self.branches.get(revision, revision)
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]


class HubServer:
    """Threaded loopback Hub. Use as a context manager or call ``start()``/``stop()``."""

    def __init__(self, storage: Path, *, user: str = "test-user", orgs: tuple[str, ...] = ("test-org",)):
        self.blob_dir = Path(storage) / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.orgs = tuple(orgs)
        self.token = f"hf_test_{uuid.uuid4().hex}"
        self.tokens = {self.token: user}  # add entries to simulate other users
        self.repos: dict[tuple[str, str], Repo] = {}
        self.fail_commits: int | None = None  # HTTP status to refuse every commit with
        self.commit_attempts = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request received
        self.cache_dir: Path | None = None  # set by the pytest fixture
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- helpers for tests -------------------------------------------------------------------

    def api(self, token: str | bool | None = None):
        """An ``HfApi`` bound to this server (with the valid token unless another is given)."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token if token is None else token)

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Path -> bytes of every file at ``revision`` (branch or commit sha)."""
        repo = self.repo(repo_id, repo_type)
        if repo is None:
            raise KeyError(repo_id)
        return {path: self.read_blob(blob) for path, blob in repo.resolve(revision).files.items()}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        """Commits reachable from ``main``, newest first."""
        repo = self.repos[(repo_type, repo_id)]
        chain, oid = [], repo.branches["main"]
        while oid is not None:
            chain.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return chain

    # -- storage -----------------------------------------------------------------------------

    def write_blob(self, data: bytes) -> str:
        blob = git_blob_sha1(data)
        path = self.blob_dir / blob
        if not path.exists():
            tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return blob

    def read_blob(self, blob: str) -> bytes:
        return (self.blob_dir / blob).read_bytes()

    def blob_size(self, blob: str) -> int:
        return (self.blob_dir / blob).stat().st_size

    def url_for(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def add_commit(self, repo: Repo, branch: str, title: str, message: str, author: str, files: dict) -> Commit:
        parent = repo.branches.get(branch)
        seed = f"{parent}\n{title}\n{json.dumps(files, sort_keys=True)}\n{uuid.uuid4()}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, author, _now(), files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


class _Handler(BaseHTTPRequestHandler):
    """Parses the request, dispatches it to a route method and writes the JSON/bytes answer."""

    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    server_version = "LoopbackHub/1.0"

    _REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
    _FILE = r"/(?:(?P<type>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)"
    ROUTES = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", _REPO + r"(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", _REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("GET", _REPO + r"/refs", "refs"),
        ("GET", _REPO + r"/commits/(?P<rev>[^/]+)", "commit_list"),
        ("POST", _REPO + r"/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", _REPO + r"/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", _FILE, "resolve"),
    ]

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # keep test output quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""  # always drain the body (keep-alive)
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.hub.requests.append((method, url.path))
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", ""):
                self.close_connection = True  # the unread body makes the connection unusable
                raise HubError(411, "Chunked request bodies are not supported; send a Content-Length")
            for route_method, pattern, name in self.ROUTES:
                match = re.fullmatch(pattern, url.path)
                if match and (route_method == method or (method == "HEAD" and route_method == "GET")):
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    with self.hub._lock:
                        getattr(self, name)(method, **args)
                    return
            raise HubError(404, f"No route for {method} {url.path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
            if err.code:
                headers["X-Error-Code"] = err.code
            if "commit" in err.extra:
                headers["X-Repo-Commit"] = err.extra.pop("commit")
            self._send_json({"error": err.message, **err.extra}, err.status, headers, head_only=method == "HEAD")
        except Exception as exc:  # a server bug or a malformed request: answer instead of dropping the socket
            message = f"Loopback hub failed: {exc!r}"
            header = message[:200].encode("ascii", "replace").decode()
            self._send_json({"error": message}, 500, {"X-Error-Message": header}, head_only=method == "HEAD")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None, head_only=False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _send_json(self, data, status: int = 200, headers: dict | None = None, head_only=False):
        self._send(status, json.dumps(data).encode(), "application/json", headers, head_only)

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Request body is not valid JSON") from None

    # -- auth and lookup ---------------------------------------------------------------------

    def _caller(self) -> str | None:
        """The user owning the bearer token, None without one; 401 for an unknown token."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.hub.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.tokens[token]

    def _require_writer(self, namespace: str) -> str:
        user = self._caller()
        if user is None:
            raise HubError(401, "You must be authenticated to access this resource")
        if namespace != user and not (user == self.hub.user and namespace in self.hub.orgs):
            raise HubError(403, f"You don't have the rights to write to namespace '{namespace}'")
        return user

    def _repo(self, type: str, ns: str, name: str, write: bool = False) -> Repo:
        repo_type = REPO_TYPES.get(type, type or "model")
        user = self._require_writer(ns) if write else self._caller()
        repo = self.hub.repos.get((repo_type, f"{ns}/{name}"))
        is_owner = user == ns or (user == self.hub.user and ns in self.hub.orgs)
        if repo is None or (repo.private and not is_owner):
            raise HubError(404 if user else 401, "Repository not found", "RepoNotFound")
        return repo

    # -- account and repo management ---------------------------------------------------------

    def whoami(self, method):
        user = self._caller()
        if user is None:
            raise HubError(401, "Invalid username or password.")
        orgs = [{"name": org, "type": "org"} for org in self.hub.orgs] if user == self.hub.user else []
        self._send_json(
            {
                "type": "user",
                "name": user,
                "fullname": user,
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
            }
        )

    def create_repo(self, method):
        payload = self._json_body()
        namespace = payload.get("organization") or self._caller() or ""
        user = self._require_writer(namespace)
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        existing = self.hub.repos.get((repo_type, repo_id))
        if existing is not None:
            url = self.hub.url_for(existing)
            raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_type, repo_id, private, _now())
        gitattributes = self.hub.write_blob(GITATTRIBUTES)
        self.hub.add_commit(repo, "main", "initial commit", "", user, {".gitattributes": gitattributes})
        self.hub.repos[(repo_type, repo_id)] = repo
        self._send_json({"url": self.hub.url_for(repo), "name": repo_id, "id": repo_id})

    def delete_repo(self, method):
        payload = self._json_body()
        namespace = payload.get("organization") or self._caller() or ""
        self._require_writer(namespace)
        key = (payload.get("type") or "model", f"{namespace}/{payload['name']}")
        if self.hub.repos.pop(key, None) is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        self._send_json({})

    def validate_yaml(self, method):
        content = self._json_body().get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
            if metadata is not None and not isinstance(metadata, dict):
                raise ValueError("metadata must be a YAML mapping")
        except (yaml.YAMLError, ValueError) as err:
            self._send_json({"errors": [{"message": str(err)}], "warnings": []}, 400)
            return
        self._send_json({"errors": [], "warnings": []})

    # -- reads -------------------------------------------------------------------------------

    def repo_info(self, method, type, ns, name, rev="main"):
        repo = self._repo(type, ns, name)
        commit = repo.resolve(rev)
        siblings = [
            {"rfilename": path, "size": self.hub.blob_size(blob), "blobId": blob}
            for path, blob in sorted(commit.files.items())
        ]
        self._send_json(
            {
                "id": repo.repo_id,
                "_id": repo.repo_id,
                "author": ns,
                "sha": commit.oid,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "createdAt": repo.created_at,
                "lastModified": commit.date,
            }
        )

    def tree(self, method, type, ns, name, rev, path=""):
        commit = self._repo(type, ns, name).resolve(rev)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        recursive = self.query.get("recursive", "false").lower() in ("true", "1")
        files, folders = {}, set()
        for file_path, blob in commit.files.items():
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files[file_path] = blob
        if prefix and not files and not folders:
            raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound")
        entries = [
            {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
            for f in sorted(folders)
        ]
        entries += [
            {"type": "file", "oid": blob, "size": self.hub.blob_size(blob), "path": p}
            for p, blob in sorted(files.items())
        ]
        self._send_json(entries)

    def refs(self, method, type, ns, name):
        repo = self._repo(type, ns, name)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items()]
        self._send_json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def commit_list(self, method, type, ns, name, rev):
        repo = self._repo(type, ns, name)
        commit, history = repo.resolve(rev), []
        while commit is not None:
            history.append(
                {
                    "id": commit.oid,
                    "authors": [{"user": commit.author}],
                    "date": commit.date,
                    "title": commit.title,
                    "message": commit.message,
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._send_json(history)

    def resolve(self, method, ns, name, rev, path, type="models"):
        repo = self._repo(type, ns, name)
        commit = repo.resolve(rev)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", extra={"commit": commit.oid})
        data = self.hub.read_blob(blob)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob}"', "Accept-Ranges": "none"}
        self._send(200, data, "application/octet-stream", headers, head_only=method == "HEAD")

    # -- writes ------------------------------------------------------------------------------

    def preupload(self, method, type, ns, name, rev):
        repo = self._repo(type, ns, name, write=True)
        current = repo.resolve(rev).files
        answers = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": current.get(f["path"])}
            for f in self._json_body().get("files", [])
        ]
        self._send_json({"files": answers, "commitOid": repo.resolve(rev).oid})

    def commit(self, method, type, ns, name, rev):
        repo = self._repo(type, ns, name, write=True)
        user = self._caller()
        self.hub.commit_attempts += 1
        if self.hub.fail_commits is not None:
            raise HubError(self.hub.fail_commits, "Simulated commit failure")
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by the loopback hub")
        if rev not in repo.branches:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and parent != repo.branches[rev]:
            raise HubError(412, f"Parent commit {parent} is not the head of {rev}")
        files = dict(repo.commits[repo.branches[rev]].files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = self.hub.write_blob(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(folder)}
            else:
                raise HubError(400, f"Unsupported commit operation {key!r} (this hub never asks for LFS)")
        commit = self.hub.add_commit(repo, rev, header.get("summary", ""), header.get("description", ""), user, files)
        self._send_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "pullRequestUrl": None,
                "commitUrl": f"{self.hub.url_for(repo)}/commit/{commit.oid}",
            }
        )
