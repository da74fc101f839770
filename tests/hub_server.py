"""A fake Hugging Face Hub for tests: the few API routes `huggingface_hub` calls to publish a model.

Covers create_repo (`/api/repos/create`), create_branch, README metadata validation
(`/api/validate-yaml`), preupload (`/api/models/{repo}/preupload/{rev}`, answering "regular" so
every file goes inline) and commit (`/api/models/{repo}/commit/{rev}`, NDJSON with base64 files),
plus whoami. It keeps what it receives in memory; a commit is applied all at once or not at all,
as on the real Hub. `fail` injects an HTTP error on one route, e.g. `{"commit": 500}`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml


@dataclass
class FakeRepo:
    private: bool = False
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)


class FakeHub:
    """Start with `FakeHub().start()`; `url` is the endpoint to point the client at."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str, bytes]] = []  # (method, path, body) — never headers
        self.auth_headers: list[str | None] = []
        self.fail: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---- inspection
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos.get(repo_id)
        return dict(repo.branches.get(revision, {})) if repo else {}

    def dump(self, repo_id: str, out_dir: Path, revision: str = "main") -> Path:
        """Write a repo's files to disk (as a snapshot download would)."""
        for path, data in self.files(repo_id, revision).items():
            target = out_dir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return out_dir

    def all_received_bytes(self) -> bytes:
        return b"\n".join(body for _, _, body in self.requests)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # ---- helpers
    def _reply(self, status: int, payload: dict | None = None) -> None:
        body = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status >= 400 and payload and "error" in payload:
            self.send_header("X-Error-Message", payload["error"])
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.fake._lock:
            self.fake.requests.append((self.command, self.path, body))
            self.fake.auth_headers.append(self.headers.get("Authorization"))
        return body

    def _failing(self, route: str) -> bool:
        status = self.fake.fail.get(route)
        if status:
            self._reply(status, {"error": f"injected failure on {route}"})
            return True
        return False

    # ---- routes
    def do_GET(self) -> None:
        self._body()
        path = unquote(urlsplit(self.path).path)
        if path == "/api/whoami-v2":
            if self._failing("whoami"):
                return
            self._reply(200, {"type": "user", "name": "test-user", "orgs": []})
            return
        self._reply(404, {"error": f"no route GET {path}"})

    def do_POST(self) -> None:
        body = self._body()
        path = urlsplit(self.path).path
        if path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body or b"{}"))
        parts = path.split("/")
        # /api/models/{owner}/{name}/{action}/{rev...}
        if len(parts) >= 7 and parts[1] == "api" and parts[2] == "models":
            repo_id = f"{unquote(parts[3])}/{unquote(parts[4])}"
            action, revision = parts[5], unquote("/".join(parts[6:]))
            if action == "preupload":
                return self._preupload(repo_id, json.loads(body or b"{}"))
            if action == "commit":
                return self._commit(repo_id, revision, body)
            if action == "branch":
                return self._create_branch(repo_id, revision, json.loads(body or b"{}"))
        self._reply(404, {"error": f"no route POST {path}"})

    def _create_repo(self, payload: dict) -> None:
        if self._failing("create_repo"):
            return
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        with self.fake._lock:
            if repo_id in self.fake.repos:
                self._reply(409, {"error": "You already created this model repo", "url": f"{self.fake.url}/{repo_id}"})
                return
            self.fake.repos[repo_id] = FakeRepo(private=payload.get("visibility") == "private")
        self._reply(200, {"url": f"{self.fake.url}/{repo_id}", "name": repo_id})

    def _create_branch(self, repo_id: str, branch: str, payload: dict) -> None:
        if self._failing("branch"):
            return
        with self.fake._lock:
            repo = self.fake.repos.get(repo_id)
            if repo is None:
                self._reply(404, {"error": "Repository not found"})
                return
            if branch in repo.branches:
                self._reply(409, {"error": "Reference already exists"})
                return
            start = payload.get("startingPoint") or "main"
            repo.branches[branch] = dict(repo.branches.get(start, {}))
        self._reply(200, {})

    def _validate_yaml(self, payload: dict) -> None:
        if self._failing("validate_yaml"):
            return
        content = payload.get("content", "")
        errors = []
        if content.startswith("---"):
            try:
                meta = yaml.safe_load(content.split("---", 2)[1]) or {}
            except yaml.YAMLError as e:
                meta, errors = {}, [{"message": f"YAML: {e}"}]
            base = meta.get("base_model") if isinstance(meta, dict) else None
            if isinstance(base, str) and (base.startswith(("/", ".", "~")) or base.count("/") > 1):
                errors.append({"message": f'"base_model" must be a Hub model id, got {base!r}'})
        if errors:
            self._reply(400, {"errors": errors, "error": errors[0]["message"]})
            return
        self._reply(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, payload: dict) -> None:
        if self._failing("preupload"):
            return
        if repo_id not in self.fake.repos:
            self._reply(404, {"error": "Repository not found"})
            return
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                 for f in payload.get("files", [])]
        self._reply(200, {"files": files, "commitOid": "0" * 40})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        if self._failing("commit"):
            return
        with self.fake._lock:
            repo = self.fake.repos.get(repo_id)
            if repo is None:
                self._reply(404, {"error": "Repository not found"})
                return
            if revision not in repo.branches:
                self._reply(404, {"error": f"Invalid rev id: {revision}"})
                return
            header, staged = None, {}
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item["key"] == "header":
                    header = item["value"]
                elif item["key"] == "file":
                    value = item["value"]
                    if value.get("encoding") != "base64":
                        self._reply(400, {"error": "only base64 file content is supported"})
                        return
                    staged[value["path"]] = base64.b64decode(value["content"])
                else:
                    self._reply(400, {"error": f"unsupported commit operation {item['key']!r}"})
                    return
            if header is None or not header.get("summary"):
                self._reply(400, {"error": "commit header with a summary is required"})
                return
            repo.branches[revision].update(staged)  # all files at once, or none (above)
            oid = hashlib.sha1(body).hexdigest()
            repo.commits.append({"oid": oid, "revision": revision, "summary": header["summary"],
                                 "description": header.get("description", ""), "files": sorted(staged)})
        self._reply(200, {"commitUrl": f"{self.fake.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                          "pullRequestUrl": None})


if __name__ == "__main__":  # handy for manual checks: HF_ENDPOINT=<printed url> instructmt publish ...
    hub = FakeHub().start()
    print(hub.url, flush=True)
    threading.Event().wait()
