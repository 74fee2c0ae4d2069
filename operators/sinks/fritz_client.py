"""Requests to Fritz (SkyPortal): the annotation upsert, what people said, the account check.

What SkyPortal does around the requests, and what we do about it
(SkyPortal's handlers/api/annotation.py, classification.py, source.py,
baselayer's access rules, its nginx configuration):

- One annotation per object and origin: a second POST answers 400 "Annotation
  already exists"; then we GET the object's annotations, find ours by origin
  and PUT. A remembered annotation id is PUT directly; if that fails, GET then
  PUT (not the whole POST/GET/PUT again).
- GET shows only annotations in groups the token's user is a member of, and
  PUT is allowed to the annotation's author only (403 "Could not find any
  accessible annotations." otherwise). Both make an annotation we cannot
  update: `FritzForbiddenError`, with the real cause; `check` verifies the
  group membership before a night (`verify_account`).
- Any object Fritz knows can be annotated, saved as a source or not; 404 on
  POST means Fritz has no such object. GET of annotations or classifications
  of an unknown object answers 200 `[]`.
- The limit is per token (nginx keyed on `Authorization`): 5 r/s, burst 10,
  429 without `Retry-After`. Every request takes a token from one bucket;
  a 429 without `Retry-After` drains the bucket and is retried after
  1, 2, 4 ... s plus jitter (a `Retry-After`, from another proxy, is honoured).
  5xx and timeouts are retried by urllib3 with exponential backoff. Bounded.
- 401 for a wrong token and for a token without the Annotate ACL.
- Error messages may echo the caller's token (baselayer's access errors):
  every server message is scrubbed (`scrub`) before it reaches an exception.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import quote

import requests
from cachetools import LRUCache, TLRUCache
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from operators.runtime import bounds, metrics
from operators.sinks.fritz_config import (
    FritzConfig,
    FritzContext,
    alert_link,
    source_link,
    split_classifications,
)
from operators.sinks.ratelimit import TokenBucket, backoff_delay
from operators.runtime.settings import redact

log = logging.getLogger("operators.sinks.fritz")

ANNOTATION_IDS_MAX = 50_000  # object -> our annotation id (a shortcut, not a truth)
CONTEXT_MAX = 50_000  # object -> what people said and the link, for FRITZ_CONTEXT_TTL
CONTEXT_READS_MAX = 1000  # context reads queued or running; past it an alert gets no context

AUTH_MESSAGE = (
    "Fritz answered 401 Unauthorized: FRITZ_TOKEN is wrong, or its user lacks the "
    "'Annotate' ACL (SkyPortal answers 401, not 403, when an ACL is missing). "
    "ORACLE annotations are not being posted; classification goes on. "
    "Ask a Fritz admin for a token with the Annotate ACL in groups FRITZ_GROUP_IDS."
)

_AUTH_VALUE = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)((?:token|bearer|basic)\s+)?[^\s\"',;}]+")
_TOKEN_WORD = re.compile(r"(?i)\b(token|bearer)(\s+)[A-Za-z0-9._~+/=-]{16,}")


def scrub(text: Any, secrets: Iterable[str] = ()) -> str:
    """`text` without the given secrets and without any `Authorization` value or
    `token <long value>` (a server may echo the caller's token in an error)."""
    out = redact(text, secrets)
    out = _AUTH_VALUE.sub(lambda m: m.group(1) + (m.group(2) or "") + "***", out)
    return _TOKEN_WORD.sub(lambda m: m.group(1) + m.group(2) + "***", out)


class FritzError(Exception):
    """A Fritz request failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class FritzAuthError(FritzError):
    """401: wrong token, or no Annotate ACL."""


class FritzNotFoundError(FritzError):
    """404 on POST: Fritz has no such object."""


class FritzForbiddenError(FritzError):
    """Our annotation on this object exists but this token cannot update it (another
    author, or groups this token's user is not in): retrying cannot help."""


@dataclass(frozen=True)
class UpsertResult:
    action: str  # "created" or "updated"
    annotation_id: Optional[int]


@dataclass(frozen=True)
class Account:
    """Who the token is: user name, ACLs, ids of the groups the user is a member of."""

    username: str
    permissions: tuple[str, ...]
    group_ids: frozenset[int]


def _retry_class(bucket: TokenBucket, config: FritzConfig) -> type[Retry]:
    """urllib3 Retry whose retries take a bucket token, cap Retry-After, and back off
    1, 2, 4 ... s (plus jitter) on a 429 that gives no Retry-After."""

    class PacedRetry(Retry):
        def parse_retry_after(self, retry_after: str) -> float:
            return min(super().parse_retry_after(retry_after), config.max_retry_after)

        def sleep(self, response=None) -> None:  # type: ignore[no-untyped-def]
            metrics.fritz_request("retry")
            if response is not None and response.status == 429 and not response.headers.get("Retry-After"):
                bucket.drain()
                n = sum(1 for h in self.history if h.status == 429)
                time.sleep(backoff_delay(n, base=config.backoff_429, cap=config.backoff_max))
            else:
                super().sleep(response)
            bucket.acquire()

    return PacedRetry


class FritzClient:
    """Requests to Fritz, paced by one token bucket, with urllib3 retries.

    Plain methods raise `FritzError` subclasses; `context` never raises nor waits
    longer than its timeout. Use one client per token and process, from one worker.
    """

    def __init__(self, config: FritzConfig, session: Optional[requests.Session] = None):
        if not config.enabled:
            raise ValueError("FritzClient needs a token (FRITZ_TOKEN)")
        self.config = config
        self.bucket = TokenBucket(config.rate, config.burst)
        retry = _retry_class(self.bucket, config)(
            total=config.max_retries,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "HEAD", "POST", "PUT"}),
            backoff_factor=config.backoff_factor,
            backoff_jitter=config.backoff_jitter,
            backoff_max=config.backoff_max,
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
        )
        pool = max(1, config.workers) + max(1, config.context_workers)
        self._session = session or requests.Session()
        adapter = HTTPAdapter(max_retries=retry, pool_connections=2, pool_maxsize=pool, pool_block=True)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Authorization"] = f"token {config.token.get_secret_value()}"
        self._session.headers["User-Agent"] = "alertflow-oracle"
        self._lock = threading.Lock()
        self._annotation_ids: LRUCache = LRUCache(maxsize=ANNOTATION_IDS_MAX)  # a shortcut, not a truth
        # object -> (seconds to keep, context); failed reads are kept for a shorter time
        self._context: TLRUCache = TLRUCache(maxsize=CONTEXT_MAX, ttu=lambda _k, v, now: now + v[0],
                                             timer=time.monotonic)
        self._context_inflight: dict[str, Future] = _Reads()
        self._read_s = 0.0  # how long a context read takes (moving average; 0: none finished yet)
        self._reading: dict[str, float] = {}  # reads running now -> when each started
        # Sizes for the soak and `alertflow_bounded_items`, measured under the client's lock.
        here = "(operators/sinks/fritz_client.py)"
        bounds.track("fritz_annotation_ids", self._annotation_ids, ANNOTATION_IDS_MAX, self._lock,
                     where=f"ANNOTATION_IDS_MAX {here}")
        bounds.track("fritz_context", self._context, CONTEXT_MAX, self._lock, where=f"CONTEXT_MAX {here}")
        bounds.track("fritz_context_reads", self._context_inflight, CONTEXT_READS_MAX, self._lock,
                     where=f"CONTEXT_READS_MAX {here}")
        self._reads: Optional[ThreadPoolExecutor] = None
        self._auth_warned = False

    # -- plumbing ---------------------------------------------------------

    def scrub(self, text: Any) -> str:
        return scrub(text, self.config.secrets)

    def _url(self, *parts: str) -> str:
        return self.config.url + "/api/" + "/".join(quote(str(p), safe="") for p in parts)

    def _request(self, method: str, *parts: str, json: Any = None) -> tuple[int, Any]:
        """One paced request; returns (status, parsed JSON or None). Raises FritzError
        on connection failures and timeouts (after urllib3's retries)."""
        self.bucket.acquire()
        url = self._url(*parts)
        try:
            r = self._session.request(method, url, json=json, timeout=self.config.timeout)
        except requests.RequestException as e:
            raise FritzError(self.scrub(f"{method} {url} failed: {type(e).__name__}: {_short(e)}")) from None
        if r.status_code == 401:
            raise FritzAuthError(AUTH_MESSAGE, 401)
        try:
            payload = r.json() if r.content else None
        except ValueError:
            payload = {"status": "error", "message": r.text[:300]}
        return r.status_code, payload

    @staticmethod
    def _ok(status: int, payload: Any) -> bool:
        return 200 <= status < 300 and isinstance(payload, dict) and payload.get("status") == "success"

    def _message(self, status: int, payload: Any) -> str:
        msg = payload.get("message") if isinstance(payload, dict) else None
        return self.scrub(f"HTTP {status}: {msg or payload!r}")[:400]

    def _remember_id(self, object_id: str, annotation_id: Optional[int]) -> None:
        with self._lock:
            if annotation_id is None:
                self._annotation_ids.pop(object_id, None)
            else:
                self._annotation_ids[object_id] = annotation_id

    # -- the account ------------------------------------------------------

    def verify_account(self) -> Account:
        """The token's user, its ACLs and groups (`/api/internal/profile`, `/api/groups`)."""
        status, payload = self._request("GET", "internal", "profile")
        if not self._ok(status, payload):
            raise FritzError(f"GET profile: {self._message(status, payload)}", status)
        profile = payload.get("data") or {}
        status, payload = self._request("GET", "groups")
        if not self._ok(status, payload):
            raise FritzError(f"GET groups: {self._message(status, payload)}", status)
        groups = (payload.get("data") or {}).get("user_groups") or []
        return Account(str(profile.get("username", "?")), tuple(profile.get("permissions") or ()),
                       frozenset(int(g["id"]) for g in groups if isinstance(g, dict) and "id" in g))

    # -- annotations ------------------------------------------------------

    def annotation_body(self, data: Mapping[str, Any]) -> dict:
        return {"origin": self.config.origin, "data": dict(data), "group_ids": list(self.config.group_ids)}

    def get_annotations(self, object_id: str) -> list[dict]:
        """The object's annotations this token can see ([] for an object Fritz does not know)."""
        status, payload = self._request("GET", "sources", object_id, "annotations")
        if not self._ok(status, payload):
            raise FritzError(f"GET annotations of {object_id}: {self._message(status, payload)}", status)
        data = payload.get("data")
        return data if isinstance(data, list) else []

    def upsert_annotation(self, object_id: str, data: Mapping[str, Any]) -> UpsertResult:
        """Create or update this origin's annotation on `object_id`; idempotent."""
        body = self.annotation_body(data)
        with self._lock:
            known = self._annotation_ids.get(object_id)
        if known is not None:
            status, payload = self._request("PUT", "sources", object_id, "annotations", str(known), json=body)
            if self._ok(status, payload):
                return UpsertResult("updated", known)
            self._remember_id(object_id, None)  # deleted, or no longer ours: look again
            return self._update_existing(object_id, body, may_post=True)

        status, payload = self._request("POST", "sources", object_id, "annotations", json=body)
        if self._ok(status, payload):
            ann_id = (payload.get("data") or {}).get("annotation_id")
            self._remember_id(object_id, ann_id)
            return UpsertResult("created", ann_id)
        message = self._message(status, payload)
        if status == 404:
            raise FritzNotFoundError(f"Fritz has no object {object_id} ({message})", 404)
        if status == 400 and "already exists" in message.lower():
            return self._update_existing(object_id, body, may_post=False)
        hint = ""
        if status in (400, 403) and "group" in message.lower():
            hint = f"; FRITZ_GROUP_IDS={','.join(map(str, self.config.group_ids))} names a group Fritz does not have"
        raise FritzError(f"POST annotation on {object_id}: {message}{hint}", status)

    def _update_existing(self, object_id: str, body: dict, may_post: bool) -> UpsertResult:
        """GET the object's annotations, find ours by origin, PUT (POST if none and allowed)."""
        origin = self.config.origin
        ours = [a for a in self.get_annotations(object_id) if a.get("origin") == origin]
        if not ours:
            if may_post:
                status, payload = self._request("POST", "sources", object_id, "annotations", json=body)
                if self._ok(status, payload):
                    ann_id = (payload.get("data") or {}).get("annotation_id")
                    self._remember_id(object_id, ann_id)
                    return UpsertResult("created", ann_id)
                if not (status == 400 and "already exists" in self._message(status, payload).lower()):
                    raise FritzError(f"POST annotation on {object_id}: {self._message(status, payload)}", status)
            raise FritzForbiddenError(
                f"Fritz says {object_id} has an annotation with origin {origin!r}, but this token cannot see "
                f"it: SkyPortal shows an annotation only to members of its groups. The token's user is not a "
                f"member of FRITZ_GROUP_IDS={','.join(map(str, self.config.group_ids))} (`python -m dataflows "
                f"check ztf` says which), or another user wrote it to other groups", 403)
        ann = ours[0]
        ann_id = ann.get("id")
        status, payload = self._request("PUT", "sources", object_id, "annotations", str(ann_id), json=body)
        if self._ok(status, payload):
            self._remember_id(object_id, ann_id)
            return UpsertResult("updated", ann_id)
        if status == 403:
            author = ann.get("author_name") or ann.get("author_id")
            raise FritzForbiddenError(
                f"Fritz refuses to update annotation {ann_id} (origin {origin!r}) on {object_id}: "
                f"{self._message(status, payload)}. SkyPortal lets only an annotation's author update it, and "
                f"this one was written by another Fritz user{f' ({author})' if author else ''}, e.g. an older "
                f"token or a second deployment: delete it on Fritz, or set another FRITZ_ORIGIN", 403)
        raise FritzError(f"PUT annotation {ann_id} on {object_id}: {self._message(status, payload)}", status)

    # -- reads for people ---------------------------------------------------

    def source_exists(self, object_id: str) -> bool:
        """Saved as a source in a group of ours (HEAD: no body, the light request)."""
        status, _ = self._request("HEAD", "sources", object_id)
        if 200 <= status < 300:
            return True
        if status in (400, 403, 404):
            return False
        raise FritzError(f"HEAD source {object_id}: HTTP {status}", status)

    def get_classifications(self, object_id: str) -> list[dict]:
        status, payload = self._request("GET", "sources", object_id, "classifications")
        if not self._ok(status, payload):
            raise FritzError(f"GET classifications of {object_id}: {self._message(status, payload)}", status)
        data = payload.get("data")
        return data if isinstance(data, list) else []

    def fetch_context(self, object_id: str) -> FritzContext:
        """Classifications (human and machine) and the link to show; raises on failure."""
        exists = self.source_exists(object_id)
        human, machine = (self.scrub(t) for t in split_classifications(self.get_classifications(object_id)))
        link = source_link(self.config.url, object_id) if exists else alert_link(self.config.url, object_id)
        return FritzContext(human, link, exists, machine)

    def cached_context(self, object_id: str) -> Optional[FritzContext]:
        with self._lock:
            hit = self._context.get(object_id)
        return hit[1] if hit is not None else None

    def context(self, object_id: str, timeout: Optional[float] = None) -> FritzContext:
        """Classifications and link, from the cache or a paced read; never raises.

        Waits at most `timeout` seconds (default `config.context_timeout`); when
        the read is not done by then (or fails) the classifications are empty
        and the link is the alert page. The read goes on in the background and
        fills the cache for the next caller. The wait ends as soon as the read
        cannot be done in time (`_read_time`): with Fritz slow, waiting would
        cost every batch its whole `timeout` (issue 28: 4.5× slower at 2 s per
        request and many new objects).
        """
        timeout = self.config.context_timeout if timeout is None else timeout
        fallback = FritzContext("", alert_link(self.config.url, object_id), None)
        try:
            hit = self.cached_context(object_id)
            if hit is not None:
                return hit
            with self._lock:
                fut = self._context_inflight.get(object_id)
                if fut is None:
                    if len(self._context_inflight) >= CONTEXT_READS_MAX:
                        log.debug("Fritz reads are behind; no context for %s", object_id)
                        return fallback
                    if self._reads is None:
                        self._reads = ThreadPoolExecutor(max(1, self.config.context_workers), "fritz-read")
                    fut = self._reads.submit(self._load_context, object_id)
                    self._context_inflight[object_id] = fut
            deadline = time.monotonic() + max(0.0, timeout)
            while True:  # in short waits, giving up as soon as the read cannot be done in time
                left = deadline - time.monotonic()
                if not fut.done() and (left <= 0 or self._read_time() > left):
                    return fallback
                try:
                    return fut.result(timeout=min(0.1, max(0.0, left)))
                except FutureTimeout:
                    continue
                except Exception:  # noqa: BLE001 - a failed or cancelled read: leave it empty
                    return fallback
        except Exception:  # noqa: BLE001 - never let a read break a caller
            log.debug("Fritz context for %s failed", object_id, exc_info=True)
            return fallback

    def _read_time(self) -> float:
        """Seconds a read queued now would take at least: the reads ahead per reader × how
        long a read takes (the average, or a running read's time so far if longer)."""
        with self._lock:
            turns = -(-len(self._context_inflight) // max(1, self.config.context_workers))
            now = time.monotonic()
            return max([self._read_s, *(now - t for t in self._reading.values())]) * turns

    def _load_context(self, object_id: str) -> FritzContext:
        ttl = self.config.context_ttl
        started = time.monotonic()
        with self._lock:
            self._reading[object_id] = started
        try:
            ctx = self.fetch_context(object_id)
        except FritzAuthError as e:
            if not self._auth_warned:
                self._auth_warned = True
                log.error("%s", e)
            ctx, ttl = FritzContext("", alert_link(self.config.url, object_id), None), min(ttl, 60.0)
        except Exception as e:  # noqa: BLE001
            log.warning("Fritz context for %s not read: %s", object_id, self.scrub(e))
            ctx, ttl = FritzContext("", alert_link(self.config.url, object_id), None), min(ttl, 60.0)
        took = time.monotonic() - started
        with self._lock:
            if ttl > 0:
                self._context[object_id] = (ttl, ctx)
            self._context_inflight.pop(object_id, None)
            self._reading.pop(object_id, None)
            self._read_s = took if not self._read_s else 0.7 * self._read_s + 0.3 * took
        return ctx

    def stop_reads(self) -> None:
        """Cancel the reads still waiting (at the end of a run the writes go first)."""
        if self._reads is not None:
            self._reads.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.stop_reads()
        self._session.close()


class _Reads(dict):
    """object -> the Future of its context read (a dict that `bounds.track` can hold weakly)."""


def _short(e: BaseException) -> str:
    s = str(e)
    return s if len(s) < 300 else s[:300] + "..."


__all__ = [
    "AUTH_MESSAGE",
    "Account",
    "FritzAuthError",
    "FritzClient",
    "FritzError",
    "FritzForbiddenError",
    "FritzNotFoundError",
    "UpsertResult",
    "scrub",
]
