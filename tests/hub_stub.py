"""Local stand-in for the Hugging Face Hub, so push/pull code is tested end to end with the real clients.

Nothing here can reach huggingface.co, yet ``push_to_hub`` / ``from_pretrained`` / ``load_dataset`` must run
through ``huggingface_hub``, ``transformers`` and ``datasets`` unmodified (no monkeypatching). :class:`HubStub`
is a small threaded HTTP server on 127.0.0.1 serving the subset of the Hub API those clients call.

Endpoints (``{type}`` is model, dataset or space; ``{prefix}`` is empty for models, else ``datasets/``, ``spaces/``)
-------------------------------------------------------------------------------------------------------------
* ``GET  /api/whoami-v2``
* ``POST /api/repos/create``                          (409 if it exists; ``exist_ok`` works)
* ``POST /api/validate-yaml``                         (README metadata; accepts anything)
* ``GET  /api/{type}s/{repo}[/revision/{rev}]``       (ModelInfo/DatasetInfo JSON; ``blobs=1`` adds sizes, lfs)
* ``POST /api/{type}s/{repo}/preupload/{rev}``        (uploadMode lfs/regular, remote oid to skip unchanged files)
* ``POST /{prefix}{repo}.git/info/lfs/objects/batch`` (LFS upload, basic transfer, upload + verify actions)
* ``PUT  /_lfs/upload/{ticket}``, ``POST /_lfs/verify/{ticket}`` (targets of those actions; sha256/size checked)
* ``POST /api/{type}s/{repo}/commit/{rev}``           (NDJSON header/file/lfsFile/deletedFile/deletedFolder,
  ``parentCommit`` -> 412 when stale)
* ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``    (``recursive``; Link-header pagination, ``tree_page_size``)
* ``POST /api/{type}s/{repo}/paths-info/{rev}``
* ``HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}``   (ETag, X-Repo-Commit, X-Linked-Etag/-Size for LFS, Range)

Errors carry the Hub's ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) and ``X-Error-Message`` so
the clients raise their own types (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError).
Not implemented: branches, tags, pull requests (``create_pr``), ``expand=True`` metadata (lastCommit, security),
commit listing, repo deletion/move, Xet storage, CDN redirects (LFS content is served by ``resolve`` directly)
and ``.gitignore`` handling in preupload.

Design
------
* Loaded as a pytest plugin (``pytest_plugins = ["hub_stub"]`` in ``tests/conftest.py``). Its
  ``pytest_configure`` starts one server for the session and points ``os.environ`` at it before any test
  module is imported: ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_DISABLE_XET=1`` (uploads take the classic LFS
  path), ``HF_HUB_DISABLE_TELEMETRY=1``, online mode, and fresh ``HF_HOME`` / ``HF_HUB_CACHE`` /
  ``HF_DATASETS_CACHE`` in a temporary folder (see :func:`hub_environment`). The HF libraries freeze these into
  module constants at import, so setting them this early makes every test, and every subprocess it starts
  (``accelerate launch ...``, ``python -m ...`` inherit the environment), talk to the stub only. If an HF
  library was imported before (e.g. at conftest top level) the session stops with an error instead of using
  the real Hub. ``pytest_unconfigure`` stops the server, restores the environment and deletes the folder.
* Fixture ``hub`` (function scope) -> :class:`HubHandle` with ``url``, ``token``, ``user``, ``server`` and
  ``new_repo_id(prefix=None)`` giving a fresh ``wildreid-test/<prefix>-<n>`` id (repos live for the session).
  It warns when a test made requests no route matches (recorded in ``HubStub.unhandled``).
* Storage: one folder per repo, ``<root>/<type>s/<namespace>/<name>/`` with ``repo.json`` (visibility and
  commit log; every commit has a 40-hex sha and the full file manifest), ``objects/<git sha1>`` for regular
  files and ``lfs/<sha256>`` for LFS files. Revisions: ``main`` (the latest commit) or a full or abbreviated
  (>= 7 hex) commit sha.
* As on the Hub, a new repo gets an initial commit with a ``.gitattributes``; preupload answers "lfs" for
  files >= 10 MB, binary samples (NUL byte) and paths matching that file's ``filter=lfs`` patterns. Every LFS
  PUT received is recorded in ``HubStub.lfs_uploads`` as ``(repo_id, sha256, size)``.
* Writes need ``Authorization: Bearer <token>``; reads need it only for private repos; a wrong token is a 401.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest

TEST_USER = "wildreid-test"
TEST_TOKEN = "hf_wildreidHubStubTestToken0000000"
LFS_MIN_SIZE = 10_000_000
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.bin", "*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.onnx", "*.h5", "*.npy", "*.npz",
                    "*.pkl", "*.arrow", "*.parquet", "*.png", "*.jpg", "*.jpeg", "*.zip", "*.tar", "*.gz", "*.zst")
)
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_TYPE = r"(?P<repo_type>model|dataset|space)s"
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API = rf"/api/{_TYPE}/{_REPO}"
_WEB = rf"/(?:(?P<repo_type>dataset|space)s/)?{_REPO}"
ROUTES = [(method, re.compile(pattern + r"\Z"), name) for method, pattern, name in [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", _API + r"(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("POST", _API + r"/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", _API + r"/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("POST", _API + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("POST", _WEB + r"\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/_lfs/upload/(?P<ticket>\w+)", "lfs_upload"),
    ("POST", r"/_lfs/verify/(?P<ticket>\w+)", "lfs_verify"),
    ("GET", _WEB + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]]


class HubError(Exception):
    """An error answer: status, message, the Hub's ``X-Error-Code``, extra headers and extra JSON body fields."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers, self.body = status, code, headers or {}, body or {}


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _flag(query: dict, name: str) -> bool:
    return query.get(name, ["false"])[0].lower() in ("1", "true")


class HubStub:
    """Threaded local Hub: ``start()`` binds a free port on 127.0.0.1; ``url`` is the value for ``HF_ENDPOINT``."""

    tree_page_size = 1000  # the Hub's page size; tests may lower it to exercise the clients' pagination

    def __init__(self, root: str | os.PathLike, token: str = TEST_TOKEN, user: str = TEST_USER):
        self.root, self.token, self.user = Path(root), token, user
        self.lock = threading.RLock()
        self.lfs_uploads: list[tuple[str, str, int]] = []  # (repo id, sha256, size) per LFS PUT received
        self.unhandled: list[str] = []  # "METHOD path" of requests no route matched
        self.serial = itertools.count(1)
        self.tickets: dict[str, tuple[Path, str, str, int]] = {}  # LFS upload ticket -> (repo dir, id, sha, size)
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> HubStub:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        threading.Thread(target=self._httpd.serve_forever, name="hub-stub", daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- storage -------------------------------------------------------------------------------------------
    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        if not re.fullmatch(r"[\w-][\w.-]*/[\w-][\w.-]*", repo_id):
            raise HubError(400, f"Invalid repo id {repo_id!r}")
        return self.root / f"{repo_type}s" / repo_id

    def load(self, repo_type: str, repo_id: str, authed: bool) -> dict:
        meta_path = self.repo_dir(repo_type, repo_id) / "repo.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if meta is None or (meta["private"] and not authed):
            raise HubError(404, f"Repository {repo_id} ({repo_type}) not found", "RepoNotFound")
        return meta

    def save(self, repo_type: str, repo_id: str, meta: dict) -> None:
        path = self.repo_dir(repo_type, repo_id) / "repo.json"
        path.with_suffix(".tmp").write_text(json.dumps(meta, indent=1))
        path.with_suffix(".tmp").replace(path)

    def commit(self, repo_type: str, repo_id: str, meta: dict, title: str, description: str, files: dict) -> dict:
        parent = meta["commits"][-1]["oid"] if meta["commits"] else None
        record = {"title": title, "message": description, "date": _now(), "parent": parent, "files": files}
        record["oid"] = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()
        meta["commits"].append(record)
        self.save(repo_type, repo_id, meta)
        return record

    def store_regular(self, folder: Path, data: bytes) -> dict:
        oid = git_oid(data)
        (folder / "objects").mkdir(exist_ok=True)
        (folder / "objects" / oid).write_bytes(data)
        return {"oid": oid, "size": len(data), "lfs": None}


def _revision(meta: dict, rev: str) -> dict:
    if rev == "main":
        return meta["commits"][-1]
    matches = [c for c in meta["commits"] if re.fullmatch(r"[0-9a-f]{7,40}", rev) and c["oid"].startswith(rev)]
    if len(matches) != 1:
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
    return matches[0]


def _entries(files: dict, paths: list[str]) -> list[dict]:
    """The Hub's tree / paths-info JSON for ``paths`` (files or folders) of one commit's manifest."""
    out = []
    for path in paths:
        if path in files:
            f = files[path]
            entry = {"type": "file", "path": path, "oid": f["oid"], "size": f["size"]}
            if f["lfs"]:
                pointer_size = len(lfs_pointer(f["lfs"], f["size"]))
                entry["lfs"] = {"oid": f["lfs"], "size": f["size"], "pointerSize": pointer_size}
        else:
            below = repr(sorted((p, files[p]["oid"]) for p in files if p.startswith(path + "/")))
            entry = {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(below.encode()).hexdigest()}
        out.append(entry)
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format, *args) -> None:  # keep test output clean; failures surface in the clients
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("GET", head=True)

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def _dispatch(self, method: str, head: bool = False) -> None:
        self.hub: HubStub = self.server.hub
        self.body = self._read_body() if method in ("POST", "PUT") else b""
        self.head, split = head, urlsplit(self.path)
        self.query = parse_qs(split.query)
        auth = self.headers.get("Authorization", "")
        try:
            if auth and auth != f"Bearer {self.hub.token}":
                raise HubError(401, "Invalid credentials in Authorization header")
            self.authed = bool(auth)
            for route_method, pattern, name in ROUTES:
                if route_method == method and (match := pattern.match(split.path)):
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    return getattr(self, name)(**args)
            self.hub.unhandled.append(f"{'HEAD' if head else method} {self.path}")
            raise HubError(404, f"hub stub: no route for {method} {split.path}")
        except HubError as err:
            self._error(err)
        except Exception as exc:  # malformed request or stub bug: a 400 the clients report at once (5xx is retried)
            self._error(HubError(400, f"hub stub failed on {method} {split.path}: {exc!r}"))

    def _error(self, err: HubError) -> None:
        message = str(err).encode("ascii", "backslashreplace").decode()  # header values must be latin-1
        headers = {"X-Error-Message": message, **err.headers, **({"X-Error-Code": err.code} if err.code else {})}
        self._send(err.status, json.dumps({"error": str(err), **err.body}).encode(), headers)

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, length: int | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if not self.head:
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _require_auth(self) -> None:
        if not self.authed:
            raise HubError(401, "You must be authenticated to access this resource")

    def _repo(self, repo_type: str | None, repo: str) -> tuple[str, dict]:
        repo_type = repo_type or "model"  # web routes (resolve, LFS) have no prefix for models
        return repo_type, self.hub.load(repo_type, repo, self.authed)

    # -- routes ------------------------------------------------------------------------------------------------
    def whoami(self):
        self._require_auth()
        self._json({"type": "user", "id": "0" * 24, "name": self.hub.user, "fullname": "wildreid tests", "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "hub-stub", "role": "write"}}})

    def create_repo(self):
        self._require_auth()
        payload = json.loads(self.body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        with self.hub.lock:
            folder = self.hub.repo_dir(repo_type, repo_id)
            if (folder / "repo.json").exists():
                raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
            folder.mkdir(parents=True)
            meta = {"private": payload.get("visibility") == "private", "created": _now(), "commits": []}
            files = {".gitattributes": self.hub.store_regular(folder, GITATTRIBUTES.encode())}
            self.hub.commit(repo_type, repo_id, meta, "initial commit", "", files)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self):
        self._json({"errors": [], "warnings": []})

    def repo_info(self, repo_type, repo, rev="main"):
        repo_type, meta = self._repo(repo_type, repo)
        commit, blobs = _revision(meta, rev), _flag(self.query, "blobs")
        siblings = []
        for entry in _entries(commit["files"], sorted(commit["files"])):
            sibling = {"rfilename": entry["path"]}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    lfs = entry["lfs"]
                    sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        self._json({"id": repo, "author": repo.split("/")[0], "sha": commit["oid"], "private": meta["private"],
                    "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                    "createdAt": meta["created"], "lastModified": commit["date"], "siblings": siblings})

    def preupload(self, repo_type, repo, rev):
        self._require_auth()
        repo_type, meta = self._repo(repo_type, repo)
        files = _revision(meta, rev)["files"]
        attributes = files.get(".gitattributes")
        patterns = [line.split()[0] for line in self._content(repo_type, repo, attributes).decode().splitlines()
                    if "filter=lfs" in line] if attributes else []
        answers = []
        for item in json.loads(self.body)["files"]:
            path, existing = item["path"], files.get(item["path"])
            lfs = (item["size"] >= LFS_MIN_SIZE or b"\0" in base64.b64decode(item["sample"])
                   or any(fnmatch(PurePosixPath(path).name, p) or fnmatch(path, p) for p in patterns))
            answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": (existing["lfs"] or existing["oid"]) if existing else None})
        self._json({"files": answers})

    def lfs_batch(self, repo, repo_type=None):
        self._require_auth()
        repo_type, _ = self._repo(repo_type, repo)
        payload, folder = json.loads(self.body), self.hub.repo_dir(repo_type, repo)
        if payload.get("operation") != "upload":
            raise HubError(400, "hub stub: only the LFS upload operation is supported")
        objects = []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (folder / "lfs" / obj["oid"]).is_file():
                ticket = secrets.token_hex(16)
                self.hub.tickets[ticket] = (folder, repo, obj["oid"], obj["size"])
                answer["actions"] = {"upload": {"href": f"{self.hub.url}/_lfs/upload/{ticket}"},
                                     "verify": {"href": f"{self.hub.url}/_lfs/verify/{ticket}"}}
            objects.append(answer)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _ticket(self, ticket: str) -> tuple[Path, str, str, int]:
        if ticket not in self.hub.tickets:
            raise HubError(403, "Unknown LFS upload ticket")
        return self.hub.tickets[ticket]

    def lfs_upload(self, ticket):
        folder, repo_id, sha, size = self._ticket(ticket)
        if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != sha:
            raise HubError(400, f"Uploaded content does not match oid {sha} / size {size}")
        (folder / "lfs").mkdir(exist_ok=True)
        (folder / "lfs" / f"{sha}.{ticket}").write_bytes(self.body)
        (folder / "lfs" / f"{sha}.{ticket}").replace(folder / "lfs" / sha)
        with self.hub.lock:
            self.hub.lfs_uploads.append((repo_id, sha, size))
        self._send(200, headers={"ETag": f'"{sha}"'})

    def lfs_verify(self, ticket):
        self._require_auth()
        folder, _, sha, size = self._ticket(ticket)
        stored = folder / "lfs" / sha
        if json.loads(self.body) != {"oid": sha, "size": size} or not stored.is_file():
            raise HubError(404, f"LFS object {sha} (size {size}) was not uploaded")
        self._json({"success": True})

    def commit(self, repo_type, repo, rev):
        self._require_auth()
        if self.query.get("create_pr"):
            raise HubError(400, "hub stub: pull requests are not supported")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = lines[0]["value"] if lines and lines[0]["key"] == "header" else {}
        with self.hub.lock:
            repo_type, meta = self._repo(repo_type, repo)
            folder = self.hub.repo_dir(repo_type, repo)
            if rev != "main":
                raise HubError(404, f"Invalid rev id: {rev} (the hub stub only commits to main)", "RevisionNotFound")
            head = meta["commits"][-1]
            if header.get("parentCommit") and not head["oid"].startswith(header["parentCommit"]):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head["files"])
            for op in lines[1:]:
                key, value = op["key"], op["value"]
                path = value["path"].strip("/")
                if key == "file":
                    files[path] = self.hub.store_regular(folder, base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    stored = folder / "lfs" / value["oid"]
                    if not stored.is_file():
                        raise HubError(400, f"LFS object {value['oid']} for {path} was never uploaded")
                    size = stored.stat().st_size
                    files[path] = {"oid": git_oid(lfs_pointer(value["oid"], size)), "size": size, "lfs": value["oid"]}
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    files = {p: f for p, f in files.items() if not p.startswith(path + "/")}
                else:
                    raise HubError(400, f"hub stub: unsupported commit operation {key!r}")
            summary, description = header.get("summary", ""), header.get("description", "")
            record = self.hub.commit(repo_type, repo, meta, summary, description, files)
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo}"
        self._json({"success": True, "commitOid": record["oid"], "commitUrl": f"{url}/commit/{record['oid']}",
                    "pullRequestUrl": None})

    def tree(self, repo_type, repo, rev, path=""):
        _, meta = self._repo(repo_type, repo)
        commit = _revision(meta, rev)
        files, base = commit["files"], path.strip("/")
        prefix = base + "/" if base else ""
        if base and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{base} is not a folder at {rev}", "EntryNotFound", {"X-Repo-Commit": commit["oid"]})
        listed: dict[str, None] = {}
        for p in sorted(files):
            if p.startswith(prefix):
                parts = p[len(prefix):].split("/")
                depth = len(parts) if _flag(self.query, "recursive") else 1
                for i in range(1, depth + 1):
                    listed[prefix + "/".join(parts[:i])] = None
        entries = _entries(files, list(listed))
        size = self.hub.tree_page_size
        cursor = int(self.query.get("cursor", ["0"])[0])
        headers = {}
        if cursor + size < len(entries):
            query = urlencode({**{k: v[0] for k, v in self.query.items()}, "cursor": cursor + size})
            headers["Link"] = f'<{self.hub.url}{urlsplit(self.path).path}?{query}>; rel="next"'
        self._json(entries[cursor: cursor + size], headers=headers)

    def paths_info(self, repo_type, repo, rev):
        _, meta = self._repo(repo_type, repo)
        commit, form = _revision(meta, rev), parse_qs(self.body.decode())
        files = commit["files"]
        paths = [p.strip("/") for p in form.get("paths", [])]
        found = [p for p in paths if p in files or any(f.startswith(p + "/") for f in files)]
        self._json(_entries(files, found))

    def resolve(self, repo, rev, path, repo_type=None):
        repo_type, meta = self._repo(repo_type, repo)
        commit = _revision(meta, rev)
        entry = commit["files"].get(path)
        if entry is None:
            raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound", {"X-Repo-Commit": commit["oid"]})
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                   "X-Repo-Commit": commit["oid"], "ETag": f'"{entry["lfs"] or entry["oid"]}"'}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["lfs"]}"', "X-Linked-Size": entry["size"]})
        size, start, status = entry["size"], 0, 200
        end = size - 1
        if match := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "")):
            first, last = match.groups()
            start, end = (int(first), min(int(last or end), end)) if first else (max(size - int(last), 0), end)
            if start >= size or start > end:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{size}"
        self._send(status, self._content(repo_type, repo, entry)[start: end + 1], headers, length=end + 1 - start)

    def _content(self, repo_type: str, repo: str, entry: dict) -> bytes:
        folder = self.hub.repo_dir(repo_type, repo)
        path = folder / "lfs" / entry["lfs"] if entry["lfs"] else folder / "objects" / entry["oid"]
        return b"" if self.head else path.read_bytes()


# -- pytest plugin ---------------------------------------------------------------------------------------------
_STATE = pytest.StashKey[tuple]()
_ENDPOINT_READERS = ("huggingface_hub.constants", "datasets.config")  # modules freezing HF_ENDPOINT at import
_DROPPED_ENV = ("HUGGINGFACE_CO_STAGING", "HUGGINGFACE_HUB_CACHE", "HF_HUB_ENABLE_HF_TRANSFER", "HF_TOKEN_PATH")


def hub_environment(url: str, home: Path, token: str = TEST_TOKEN) -> dict[str, str]:
    """Variables that route every HF client in this process and its children to the stub at ``url``."""
    return {"HF_ENDPOINT": url, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
            "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_DATASETS_CACHE": str(home / "datasets"),
            "HF_ASSETS_CACHE": str(home / "assets"), "HF_XET_CACHE": str(home / "xet")}


def pytest_configure(config: pytest.Config) -> None:
    frozen = [name for name in _ENDPOINT_READERS if name in sys.modules]
    if frozen:
        raise pytest.UsageError(
            f"{', '.join(frozen)} imported before the hub stub could set HF_ENDPOINT, so it would use the real Hub; "
            "do not import HF libraries at conftest or plugin import time"
        )
    home = Path(tempfile.mkdtemp(prefix="wildreid-hf-"))
    server = HubStub(home / "hub-stub").start()
    variables = hub_environment(server.url, home / "hf-home")
    saved = {key: os.environ.get(key) for key in (*variables, *_DROPPED_ENV)}
    for key in _DROPPED_ENV:
        os.environ.pop(key, None)
    os.environ.update(variables)
    config.stash[_STATE] = (server, home, saved)


def pytest_unconfigure(config: pytest.Config) -> None:
    server, home, saved = config.stash[_STATE]
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(home, ignore_errors=True)


@dataclass
class HubHandle:
    """What a test needs from the session's stub Hub (already the configured ``HF_ENDPOINT``)."""

    server: HubStub
    test_name: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str:
        return self.server.token

    @property
    def user(self) -> str:
        return self.server.user

    def new_repo_id(self, prefix: str | None = None) -> str:
        """A repo id no other test uses: ``<user>/<prefix or test name>-<n>`` (the repo is not created)."""
        slug = re.sub(r"[^A-Za-z0-9_]+", "-", prefix or self.test_name).strip("-")[:60]
        return f"{self.user}/{slug}-{next(self.server.serial)}"


@pytest.fixture
def hub(request: pytest.FixtureRequest) -> Iterator[HubHandle]:
    """The session-wide stub Hub that ``HF_ENDPOINT`` points to, with a helper for unique repo ids.

    Warns (does not fail) when the test made requests the stub does not implement, to point at a missing route.
    """
    server = request.config.stash[_STATE][0]
    seen = len(server.unhandled)
    yield HubHandle(server, request.node.name)
    if server.unhandled[seen:]:
        warnings.warn(f"hub stub received requests it does not implement: {server.unhandled[seen:]}", stacklevel=1)
