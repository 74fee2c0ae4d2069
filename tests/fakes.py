"""Loopback fakes of SkyPortal (Fritz) and of Slack's file-upload API, for tests.

Each runs `http.server` in a daemon thread on a free 127.0.0.1 port and keeps
every request it saw. They follow the contracts the sinks rely on:

SkyPortal (see `FakeSkyPortal`): JSON `{"status": "success", "data": ...}` or
`{"status": "error", "message": ...}`; `Authorization: token <t>`; a wrong
token gets 401, and so does a good token without the Annotate ACL on writes
(SkyPortal answers 401, not 403, for a missing ACL); group visibility on GET,
author-only PUT, one annotation per object and origin, 200 [] for unknown
objects, annotations on objects not saved as sources, nginx's 429 per token
without Retry-After, tokens echoed in access errors; scripted failures
(e.g. a burst of 500s) come before normal handling.

Slack: `files.getUploadURLExternal` -> POST the bytes to the returned URL ->
`files.completeUploadExternal`; `Authorization: Bearer <t>` (`invalid_auth`
otherwise); `channel_not_found`, `not_in_channel` (the file stays uploaded but
unshared); scripted 429s with Retry-After; an outage (503 to everything); a
failing byte upload.
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


NGINX_429 = (b"<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n<center>"
             b"<h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


@dataclass
class FakeUser:
    id: int
    username: str
    groups: set
    acls: set


class _SkyPortalHandler(_Handler):
    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

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
        auth = self.headers.get("Authorization", "")
        with fake.lock:
            fake.requests.append({"method": method, "path": path, "parts": parts, "json": body,
                                  "auth": auth, "t": time.monotonic()})
        if fake.delay:
            time.sleep(fake.delay)
        self._stall()
        if self._scripted():
            return
        if fake.rate_limited(auth):  # nginx, in front of everything: per Authorization value
            with fake.lock:
                fake.limited.append({"method": method, "path": path, "t": time.monotonic()})
            self._reply(method, 429, NGINX_429, fake.retry_headers(), ctype="text/html")
            return
        user = fake.users.get(auth[len("token "):]) if auth.startswith("token ") else None
        if user is None:
            self._reply(method, 401, {"status": "error", "message": "Credentials malformed/invalid."})
            return
        if method in ("POST", "PUT") and "Annotate" not in user.acls:
            self._reply(method, 401, {"status": "error", "message": "Unauthorized: missing ACL Annotate"})
            return
        with fake.lock:
            status, reply = fake.route(method, parts[1:] if parts[:1] == ["api"] else ["?"], body, user,
                                       auth[len("token "):])
        self._reply(method, status, reply)

    def _reply(self, method: str, status: int, body: Any, headers: Optional[dict] = None, ctype="application/json"):
        if method == "HEAD":  # status and headers only
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            return
        self._send(status, body, headers, ctype)


class FakeSkyPortal(_Server):
    """SkyPortal as its handlers behave (annotation.py, classification.py, source.py, nginx):

    - users with ACLs and group memberships; `token` is the bot (Annotate, groups
      `groups`), `token_without_acl` a reader; `add_user` adds others;
    - `objects` Fritz knows; `sources` the subset saved as sources (in `groups`);
      any known object can be annotated; POST on an unknown one is 404; GET of
      annotations or classifications of an unknown object is 200 [];
    - GET of annotations shows only those in a group of the caller; PUT is for
      the author only (403 "Could not find any accessible annotations.");
      one annotation per object and origin (400 "Annotation already exists");
      a group id that does not exist is 400;
    - with `rate=(r, burst)`, nginx's limit keyed by the Authorization value:
      429 with an HTML body and no Retry-After (`retry_after` adds one);
    - `echo_token`: access errors quote the caller's token, as baselayer's can.
    """

    def __init__(self, token: str = "good-token", sources: tuple[str, ...] = (), objects: tuple[str, ...] = (),
                 token_without_acl: str = "", rate: Optional[tuple[float, int]] = None,
                 retry_after: Optional[int] = None, groups: tuple[int, ...] = (1959,),
                 bot_groups: Optional[tuple[int, ...]] = None, echo_token: bool = True):
        super().__init__(_SkyPortalHandler)
        self.groups: set[int] = set(groups) | {1}  # 1: every SkyPortal has a sitewide group
        self.users: dict[str, FakeUser] = {}
        self._user_ids = itertools.count(1)
        self.token = token
        self.bot = self.add_user(token, "oracle_bot", set(groups if bot_groups is None else bot_groups) | {1},
                                 {"Annotate", "Classify"})
        if token_without_acl:
            self.add_user(token_without_acl, "reader", set(groups) | {1}, set())
        self.objects: set[str] = set(objects) | set(sources)
        self.sources: dict[str, set[int]] = {o: set(groups) for o in sources}
        self.annotations: dict[int, dict] = {}
        self.classifications: dict[str, list[dict]] = {}
        self._ids = itertools.count(101)
        self.delay = 0.0
        self.retry_after = retry_after
        self.echo_token = echo_token
        self._rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}  # Authorization -> (tokens, last)
        self.rejected_429 = 0
        self.limited: list[dict] = []  # requests answered 429

    def add_user(self, token: str, username: str, groups: set, acls: set) -> FakeUser:
        user = FakeUser(next(self._user_ids), username, set(groups), set(acls))
        self.users[token] = user
        return user

    def retry_headers(self) -> dict:
        return {} if self.retry_after is None else {"Retry-After": self.retry_after}

    def rate_limited(self, auth: str) -> bool:
        if not self._rate:
            return False
        with self.lock:
            now = time.monotonic()
            rate, burst = self._rate
            tokens, last = self._buckets.get(auth, (float(burst), now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[auth] = (tokens - 1, now)
                return False
            self._buckets[auth] = (tokens, now)
            self.rejected_429 += 1
            return True

    def annotations_on(self, obj: str) -> list[dict]:
        with self.lock:
            return [dict(a) for a in self.annotations.values() if a["obj_id"] == obj]

    def annotate_as(self, user: FakeUser, obj: str, origin: str, data: dict, group_ids: list) -> int:
        """An annotation written by `user` (another deployment, an older token)."""
        with self.lock:
            aid = next(self._ids)
            self.annotations[aid] = {"id": aid, "obj_id": obj, "origin": origin, "data": data,
                                     "group_ids": list(group_ids), "author_id": user.id}
            return aid

    def calls(self, method: Optional[str] = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if method is None or r["method"] == method]

    def _err(self, status: int, message: str, token: str = "") -> tuple[int, dict]:
        if token and self.echo_token:  # baselayer's access errors name the token they refused
            message += f" (token {token} has no access)"
        return status, {"status": "error", "message": message}

    def route(self, method: str, parts: list[str], body: Any, user: FakeUser, token: str) -> tuple[int, dict]:
        ok = lambda data=None: (200, {"status": "success", "data": {} if data is None else data})  # noqa: E731
        if parts == ["internal", "profile"] and method == "GET":
            return ok({"id": user.id, "username": user.username, "permissions": sorted(user.acls),
                       "acls": sorted(user.acls), "roles": []})
        if parts == ["groups"] and method == "GET":
            mine = [{"id": g, "name": f"group {g}"} for g in sorted(user.groups)]
            return ok({"user_groups": mine, "user_accessible_groups": mine,
                       "all_groups": [{"id": g, "name": f"group {g}"} for g in sorted(self.groups)]})
        if parts[:1] != ["sources"] or len(parts) < 2:
            return self._err(404, "Not found")
        obj, rest = parts[1], parts[2:]
        if not rest:
            saved = self.sources.get(obj, set()) & user.groups
            if method == "HEAD":
                return (200, {}) if saved else (404, {})
            if method == "GET":
                if saved:
                    return ok({"id": obj, "ra": 10.0, "dec": 20.0})
                return self._err(400, f"Source {obj} not found")
            return self._err(405, "method not allowed")
        if rest == ["classifications"] and method == "GET":
            return ok(list(self.classifications.get(obj, [])))
        if rest[0] != "annotations":
            return self._err(404, "Not found")
        if len(rest) == 1 and method == "GET":
            return ok([dict(a) for a in self.annotations.values()
                       if a["obj_id"] == obj and set(a["group_ids"]) & user.groups])
        if len(rest) == 1 and method == "POST":
            if obj not in self.objects:
                return self._err(404, f"No object with ID {obj}")
            if not isinstance(body, dict) or not body.get("origin"):
                return self._err(400, "Invalid/missing parameters: origin must be specified")
            if not isinstance(body.get("data"), dict) or not body["data"]:
                return self._err(400, "Invalid data: the annotation data must be an object")
            group_ids = body.get("group_ids") or sorted(user.groups)
            missing = sorted(set(group_ids) - self.groups)
            if missing:
                return self._err(400, f"Cannot find Group(s) with ID(s) {missing}", token)
            if any(a["obj_id"] == obj and a["origin"] == body["origin"] for a in self.annotations.values()):
                return self._err(400, "Annotation already exists for this source and origin. "
                                      "Use PUT to update it.")
            aid = next(self._ids)
            self.annotations[aid] = {"id": aid, "obj_id": obj, "origin": body["origin"], "data": body["data"],
                                     "group_ids": list(group_ids), "author_id": user.id}
            return ok({"annotation_id": aid})
        if len(rest) == 2 and method == "PUT":
            try:
                aid = int(rest[1])
            except ValueError:
                return self._err(400, "Must provide a valid (scalar integer) annotation ID.")
            a = self.annotations.get(aid)
            if a is None or a["author_id"] != user.id:  # update mode: the author only
                return self._err(403, "Could not find any accessible annotations.", token)
            if a["obj_id"] != obj:
                return self._err(400, f"Annotation resource ID does not match resource ID given in path ({obj})")
            if isinstance(body, dict):
                if body.get("group_ids") is not None:
                    missing = sorted(set(body["group_ids"]) - self.groups)
                    if missing:
                        return self._err(400, f"Cannot find Group(s) with ID(s) {missing}", token)
                    a["group_ids"] = list(body["group_ids"])
                if "data" in body:
                    a["data"] = body["data"]
            return ok()
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
            down = time.monotonic() < fake.down_until
            fail_upload = path.startswith("/upload/") and fake.upload_failures > 0
            if fail_upload:
                fake.upload_failures -= 1
        if down:  # an outage: Slack's edge answers 503 to everything
            self._send(503, b"upstream connect error", ctype="text/plain")
            return
        if path.startswith("/upload/"):
            if fail_upload:  # the byte upload fails (slack_sdk does not retry this step)
                self._send(500, b"upload failed", ctype="text/plain")
                return
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
    """Slack's files_upload_v2 steps. `channels` exist; the bot is a member of
    those not in `not_member` (completing an upload there is `not_in_channel`,
    and the uploaded file stays unshared, as on Slack). `outage(s)` answers 503
    to everything for `s` seconds; `fail_uploads(n)` fails the next byte uploads."""

    def __init__(self, token: str = "xoxb-good", channels: tuple[str, ...] = ("CZTF", "CLSST"),
                 not_member: tuple[str, ...] = ()):
        super().__init__(_SlackHandler)
        self.token = token
        self.channels = set(channels) | set(not_member)
        self.not_member = set(not_member)
        self.pending: dict[str, dict] = {}
        self.posts: list[dict] = []  # completed uploads: channel, initial_comment, filename, title, data
        self.unshared: list[str] = []  # uploaded files never shared to a channel
        self.down_until = 0.0
        self.upload_failures = 0
        self._ids = itertools.count(1)

    def outage(self, seconds: float) -> None:
        with self.lock:
            self.down_until = time.monotonic() + seconds

    def fail_uploads(self, n: int) -> None:
        with self.lock:
            self.upload_failures += n

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
                self.unshared.extend(f["id"] for f in files)
                return 200, {"ok": False, "error": "channel_not_found"}
            if channel in self.not_member:
                self.unshared.extend(f["id"] for f in files)
                return 200, {"ok": False, "error": "not_in_channel"}
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
    fritz_classifications: str = ""
    fritz_ml_classifications: str = ""
    fritz_link: str = ""


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
