"""Loopback fakes of SkyPortal (Fritz) and of Slack's file-upload API, for tests.

Each runs `http.server` in a daemon thread on a free 127.0.0.1 port and keeps
every request it saw. They follow the contracts the sinks rely on:

SkyPortal: JSON `{"status": "success", "data": ...}` or `{"status": "error",
"message": ...}`; `Authorization: token <t>`; a wrong token gets 401, and so
does a good token without the Annotate ACL on writes (SkyPortal answers 401,
not 403, for a missing ACL); one annotation per source and origin (a second
POST gets 400 "Annotation already exists ..."); POST on a source that is not
saved gets 404; an optional server-side rate limit answers 429 with
Retry-After; scripted failures (e.g. a burst of 500s) come before normal
handling.

Slack: `files.getUploadURLExternal` -> POST the bytes to the returned URL ->
`files.completeUploadExternal`; `Authorization: Bearer <t>` (`invalid_auth`
otherwise); scripted 429s with Retry-After.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlparse


class _Server:
    def __init__(self, handler_cls: type):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.daemon_threads = True
        self.httpd.fake = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict, Any]] = []  # (status, headers, body) served first
        self.slow: list[float] = []  # seconds to stall the next requests, one entry each
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def slow_next(self, n: int, seconds: float) -> None:
        with self.lock:
            self.slow.extend([seconds] * n)

    def fail_next(self, n: int, status: int = 500, headers: Optional[dict] = None, body: Any = None) -> None:
        with self.lock:
            self.script.extend([(status, headers or {}, body)] * n)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    @property
    def fake(self):
        return self.server.fake  # type: ignore[attr-defined]

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: Any, headers: Optional[dict] = None, ctype="application/json") -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self.close_connection = True

    def _stall(self) -> None:
        with self.fake.lock:
            seconds = self.fake.slow.pop(0) if self.fake.slow else 0.0
        if seconds:
            time.sleep(seconds)

    def _scripted(self) -> bool:
        with self.fake.lock:
            step = self.fake.script.pop(0) if self.fake.script else None
        if step is None:
            return False
        status, headers, body = step
        self._send(status, body if body is not None else {"status": "error", "message": f"scripted {status}"},
                   headers)
        return True


# ---------------------------------------------------------------------------
# SkyPortal


class _SkyPortalHandler(_Handler):
    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        fake: FakeSkyPortal = self.fake
        raw = self._body()
        path = urlparse(self.path).path
        parts = [unquote(p) for p in path.strip("/").split("/")]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with fake.lock:
            fake.requests.append({"method": method, "path": path, "parts": parts, "json": body,
                                  "auth": self.headers.get("Authorization"), "t": time.monotonic()})
        if fake.delay:
            time.sleep(fake.delay)
        self._stall()
        if self._scripted():
            return
        if fake.rate_limited():
            self._send(429, {"status": "error", "message": "API rate limit exceeded"},
                       {"Retry-After": fake.retry_after})
            return
        auth = self.headers.get("Authorization", "")
        if auth == f"token {fake.token}":
            acl = True
        elif auth == f"token {fake.token_without_acl}" and fake.token_without_acl:
            acl = False
        else:
            self._send(401, {"status": "error", "message": "Credentials malformed/invalid."})
            return
        if parts[:2] != ["api", "sources"] or len(parts) < 3:
            self._send(404, {"status": "error", "message": "Not found"})
            return
        obj = parts[2]
        rest = parts[3:]
        if method in ("POST", "PUT") and not acl:
            self._send(401, {"status": "error", "message": "Unauthorized: missing ACL Annotate"})
            return
        with fake.lock:
            status, reply = fake.route(method, obj, rest, body)
        self._send(status, reply)


class FakeSkyPortal(_Server):
    def __init__(self, token: str = "good-token", sources: tuple[str, ...] = (),
                 token_without_acl: str = "", rate: Optional[tuple[float, int]] = None,
                 retry_after: int = 1):
        super().__init__(_SkyPortalHandler)
        self.token = token
        self.token_without_acl = token_without_acl
        self.sources: set[str] = set(sources)
        self.annotations: dict[int, dict] = {}
        self.classifications: dict[str, list[dict]] = {}
        self._ids = itertools.count(101)
        self.delay = 0.0
        self.retry_after = retry_after
        self._rate = rate
        self._tokens = float(rate[1]) if rate else 0.0
        self._last = time.monotonic()
        self.rejected_429 = 0

    def rate_limited(self) -> bool:
        if not self._rate:
            return False
        with self.lock:
            now = time.monotonic()
            rate, burst = self._rate
            self._tokens = min(burst, self._tokens + (now - self._last) * rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return False
            self.rejected_429 += 1
            return True

    def annotations_on(self, obj: str) -> list[dict]:
        with self.lock:
            return [dict(a) for a in self.annotations.values() if a["obj_id"] == obj]

    def calls(self, method: Optional[str] = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if method is None or r["method"] == method]

    @staticmethod
    def _err(status: int, message: str) -> tuple[int, dict]:
        return status, {"status": "error", "message": message}

    def route(self, method: str, obj: str, rest: list[str], body: Any) -> tuple[int, dict]:
        if not rest:
            if method == "GET":
                if obj in self.sources:
                    return 200, {"status": "success", "data": {"id": obj, "ra": 10.0, "dec": 20.0}}
                return self._err(400, f"Source {obj} not found")
            return self._err(405, "method not allowed")
        if rest == ["classifications"] and method == "GET":
            if obj not in self.sources:
                return self._err(400, f"Source {obj} not found")
            return 200, {"status": "success", "data": self.classifications.get(obj, [])}
        if rest[0] != "annotations":
            return self._err(404, "Not found")
        if len(rest) == 1 and method == "GET":
            if obj not in self.sources:
                return self._err(404, f"Source {obj} not found")
            items = [dict(a) for a in self.annotations.values() if a["obj_id"] == obj]
            return 200, {"status": "success", "data": items}
        if len(rest) == 1 and method == "POST":
            if obj not in self.sources:
                return self._err(404, f"Source {obj} not found")
            if not isinstance(body, dict) or not body.get("origin"):
                return self._err(400, "Invalid/missing parameters: origin must be specified")
            if not isinstance(body.get("data"), dict) or not body["data"]:
                return self._err(400, "Invalid data: the annotation data must be an object")
            if not body.get("group_ids"):
                return self._err(400, "test fake: group_ids required (never public)")
            if any(a["obj_id"] == obj and a["origin"] == body["origin"] for a in self.annotations.values()):
                return self._err(400, "Annotation already exists for this source and origin. "
                                      "Use PUT to update it.")
            aid = next(self._ids)
            self.annotations[aid] = {"id": aid, "obj_id": obj, "origin": body["origin"],
                                     "data": body["data"], "group_ids": body["group_ids"]}
            return 200, {"status": "success", "data": {"annotation_id": aid}}
        if len(rest) == 2 and method == "PUT":
            try:
                aid = int(rest[1])
            except ValueError:
                return self._err(400, "Must provide a valid (scalar integer) annotation ID.")
            a = self.annotations.get(aid)
            if a is None:
                return self._err(403, "Could not find any accessible annotations.")
            if a["obj_id"] != obj:
                return self._err(400, f"Annotation resource ID does not match resource ID given in path ({obj})")
            if isinstance(body, dict):
                if "data" in body:
                    a["data"] = body["data"]
                if body.get("group_ids") is not None:
                    a["group_ids"] = body["group_ids"]
            return 200, {"status": "success", "data": {}}
        return self._err(405, "method not allowed")


# ---------------------------------------------------------------------------
# Slack


class _SlackHandler(_Handler):
    def do_POST(self):
        fake: FakeSlack = self.fake
        raw = self._body()
        path = urlparse(self.path).path
        with fake.lock:
            fake.requests.append({"path": path, "t": time.monotonic(), "size": len(raw)})
        if path.startswith("/upload/"):
            file_id = path.rsplit("/", 1)[-1]
            with fake.lock:
                if file_id not in fake.pending:
                    self._send(404, b"unknown upload", ctype="text/plain")
                    return
                fake.pending[file_id]["data"] = raw
            self._send(200, f"OK - {len(raw)}".encode(), ctype="text/plain")
            return
        self._stall()
        if self._scripted():
            return
        if self.headers.get("Authorization") != f"Bearer {fake.token}":
            self._send(200, {"ok": False, "error": "invalid_auth"})
            return
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        method = path.rsplit("/", 1)[-1]
        with fake.lock:
            status, reply = fake.route(method, form)
        self._send(status, reply)


class FakeSlack(_Server):
    def __init__(self, token: str = "xoxb-good", channels: tuple[str, ...] = ("CZTF", "CLSST")):
        super().__init__(_SlackHandler)
        self.token = token
        self.channels = set(channels)
        self.pending: dict[str, dict] = {}
        self.posts: list[dict] = []  # completed uploads: channel, initial_comment, filename, title, data
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return self.url + "/api/"

    def rate_limit_next(self, n: int = 1, retry_after: int = 1) -> None:
        self.fail_next(n, 429, {"Retry-After": retry_after}, {"ok": False, "error": "ratelimited"})

    def route(self, method: str, form: dict) -> tuple[int, dict]:
        if method == "files.getUploadURLExternal":
            if not form.get("filename") or not form.get("length"):
                return 200, {"ok": False, "error": "invalid_arguments"}
            file_id = f"F{next(self._ids):05d}"
            self.pending[file_id] = {"filename": form["filename"], "length": int(form["length"]), "data": None}
            return 200, {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = json.loads(form.get("files", "[]"))
            channel = form.get("channel_id")
            if channel and channel not in self.channels:
                return 200, {"ok": False, "error": "channel_not_found"}
            out = []
            for f in files:
                up = self.pending.pop(f["id"], None)
                if up is None or up["data"] is None:
                    return 200, {"ok": False, "error": "file_not_found"}
                if len(up["data"]) != up["length"]:
                    return 200, {"ok": False, "error": "file_size_mismatch"}
                self.posts.append({"channel": channel, "initial_comment": form.get("initial_comment"),
                                   "filename": up["filename"], "title": f.get("title"), "data": up["data"]})
                out.append({"id": f["id"], "title": f.get("title"), "name": up["filename"]})
            return 200, {"ok": True, "files": out}
        return 200, {"ok": False, "error": "unknown_method"}


# ---------------------------------------------------------------------------
# Result records (the shape the flows produce)


@dataclass(frozen=True)
class FakeResult:
    candid: int
    objectId: str
    jd: float
    survey: str
    probabilities: dict
    predicted: str
    model: str = "oracle-test"
    processed_at: str = "2024-07-01T00:00:00+00:00"


def make_result(taxonomy, objectId: str = "ZTF24aaaaaaa", candid: int = 1, *, seed: int = 0,
                survey: str = "ZTF", jd: float = 2460500.5, favour: Optional[str] = None) -> FakeResult:
    """A result with class probabilities from random logits (`favour` a leaf to make it likely)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, size=(1, len(taxonomy)))
    if favour is not None:
        i = taxonomy.nodes.index(favour)
        while i > 0:
            logits[0, i] += 8.0
            i = taxonomy.parent[i]
    probs = taxonomy.class_probabilities(logits)
    pred = taxonomy.predicted_leaf(probs)[0]
    return FakeResult(candid=candid, objectId=objectId, jd=jd, survey=survey,
                      probabilities={n: float(p) for n, p in zip(taxonomy.nodes, probs[0])}, predicted=pred)
