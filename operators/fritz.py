"""Fritz (SkyPortal) client: ORACLE annotations on sources, and what people said.

Writes: one annotation per classified ZTF alert on source `objectId`, with
origin `FRITZ_ORIGIN` (default `oracle_omni`) and `data` = every class
probability in a pre-order walk of the taxonomy without the root, rounded to
`FRITZ_DECIMALS`. SkyPortal keeps one annotation per source and origin, so the
write is an upsert: POST, and on "Annotation already exists" GET the source's
annotations, find ours by origin and PUT. Replaying an alert updates, never
duplicates. The annotation is visible to `FRITZ_GROUP_IDS` only.

Reads (`FritzClient.context`): the source's Fritz classifications, formatted
`SN Ia(0.9); AGN(None)`, and the link to show people (the source page when the
source exists on Fritz, else the alert page), cached per object for a while.

Pacing: SkyPortal limits requests per token (5/s, burst 10 by default) and
answers 429 beyond. Every request, retries included, takes a token from one
client-side bucket. Writes go through a background sender (a few threads, so a
bounded number of requests in flight) fed by a coalescing queue: when alerts
arrive faster than the pace, only the newest classification of each object is
kept, and the backlog is reported in the logs.

Failures never leave the sink: 401 (wrong token, or no Annotate ACL: SkyPortal
answers 401, not 403, for a missing ACL) is said once, clearly; 404 (source
not saved on Fritz) is counted and skipped; 429, 5xx and timeouts are retried
by urllib3 with exponential backoff and jitter, honouring Retry-After, bounded.
The token is never logged nor put in an exception message.

Inputs: result records (objects with candid, objectId, jd, survey,
probabilities, predicted, model, processed_at), a `Taxonomy`.
Outputs: annotations on Fritz; `FritzContext` for the CSV and Slack.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from models.taxonomy import Taxonomy
from operators import metrics
from operators.config import env_float, env_int

log = logging.getLogger(__name__)

DEFAULT_URL = "https://fritz.science"
DEFAULT_ORIGIN = "oracle_omni"
DEFAULT_GROUP_IDS = (1959,)

AUTH_MESSAGE = (
    "Fritz answered 401 Unauthorized: FRITZ_TOKEN is wrong, or its user lacks the "
    "'Annotate' ACL (SkyPortal answers 401, not 403, when an ACL is missing). "
    "ORACLE annotations are not being posted; classification goes on. "
    "Ask a Fritz admin for a token with the Annotate ACL in groups FRITZ_GROUP_IDS."
)


# ---------------------------------------------------------------------------
# Configuration


def parse_group_ids(raw: str) -> tuple[int, ...]:
    """`"1959, 42"` -> `(1959, 42)`; a non-integer is a configuration error."""
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise ValueError(f"FRITZ_GROUP_IDS must be a comma list of integers, got {raw!r}") from None
    return tuple(out)


@dataclass(frozen=True)
class FritzConfig:
    """Fritz sink and client settings. Enabled when `token` is set."""

    token: str = field(default="", repr=False)
    url: str = DEFAULT_URL
    origin: str = DEFAULT_ORIGIN
    group_ids: tuple[int, ...] = DEFAULT_GROUP_IDS
    decimals: int = 4
    rate: float = 5.0  # requests per second, all requests of this client
    burst: int = 10
    timeout: float = 10.0  # seconds, connect and read
    max_retries: int = 4  # per request, for 429 / 5xx / connection errors / timeouts
    backoff_factor: float = 0.5  # seconds; 0, 1, 2, 4 ... x factor/0.5, plus jitter
    backoff_jitter: float = 0.5  # seconds, uniform, added to each backoff
    backoff_max: float = 30.0
    max_retry_after: float = 60.0  # a longer Retry-After is cut to this
    workers: int = 2  # annotation requests in flight
    max_pending: int = 10_000  # objects waiting to be annotated; the oldest is dropped beyond
    not_found_ttl: float = 600.0  # skip objects Fritz said 404 for, for this long (0: never)
    context_ttl: float = 3600.0  # cache of classifications and links per object
    context_timeout: float = 1.0  # how long `context()` waits for a read by default
    context_workers: int = 2
    report_interval: float = 60.0  # seconds between backlog / summary log lines

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", (self.url or DEFAULT_URL).rstrip("/"))
        object.__setattr__(self, "group_ids", tuple(int(g) for g in self.group_ids))
        if self.enabled:
            if not self.group_ids:
                raise ValueError(
                    "FRITZ_GROUP_IDS is empty: ORACLE annotations are never posted publicly; "
                    "give at least one Fritz group id (default 1959)"
                )
            if not self.origin or not (self.origin[0].isalnum() or self.origin[0] == "_"):
                raise ValueError(f"FRITZ_ORIGIN must start with a letter, digit or _, got {self.origin!r}")
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("FRITZ_RATE must be > 0 and FRITZ_BURST >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "FritzConfig":
        env = os.environ if environ is None else environ
        groups_raw = env.get("FRITZ_GROUP_IDS")
        return cls(
            token=env.get("FRITZ_TOKEN", "").strip(),
            url=env.get("FRITZ_URL", "").strip() or DEFAULT_URL,
            origin=env.get("FRITZ_ORIGIN", "").strip() or DEFAULT_ORIGIN,
            group_ids=DEFAULT_GROUP_IDS if groups_raw is None else parse_group_ids(groups_raw),
            decimals=env_int(env, "FRITZ_DECIMALS", 4),
            rate=env_float(env, "FRITZ_RATE", 5.0),
            burst=env_int(env, "FRITZ_BURST", 10),
            timeout=env_float(env, "FRITZ_TIMEOUT", 10.0),
            max_retries=env_int(env, "FRITZ_MAX_RETRIES", 4),
            workers=env_int(env, "FRITZ_WORKERS", 2),
            max_pending=env_int(env, "FRITZ_MAX_PENDING", 10_000),
            not_found_ttl=env_float(env, "FRITZ_NOT_FOUND_TTL", 600.0),
            context_ttl=env_float(env, "FRITZ_CONTEXT_TTL", 3600.0),
            context_timeout=env_float(env, "FRITZ_CONTEXT_TIMEOUT", 1.0),
        )


# ---------------------------------------------------------------------------
# Pure helpers


def annotation_data(probabilities: Mapping[str, Any], taxonomy: Taxonomy, decimals: int = 4) -> dict:
    """Class probabilities in pre-order without the root, rounded; NaN or missing -> None.

    For ZTF: Persistent, AGN, CV, Varstar, Transient, SN-Ia, SN-II, SN-Ib/c, SLSN.
    """
    out: dict[str, Optional[float]] = {}
    for i in taxonomy.preorder:
        name = taxonomy.nodes[i]
        value = probabilities.get(name)
        try:
            p = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out[name] = None
            continue
        out[name] = round(p, decimals) if math.isfinite(p) else None
    return out


def format_classifications(items: Sequence[Mapping[str, Any]]) -> str:
    """Fritz classifications as `SN Ia(0.9); AGN(None)` (in Fritz's order)."""
    parts = []
    for c in items or ():
        name = c.get("classification")
        if not name:
            continue
        parts.append(f"{name}({c.get('probability')})")
    return "; ".join(parts)


def source_link(url: str, object_id: str) -> str:
    return f"{url.rstrip('/')}/source/{object_id}"


def alert_link(url: str, object_id: str) -> str:
    return f"{url.rstrip('/')}/alerts/ztf/{object_id}"


@dataclass(frozen=True)
class FritzContext:
    """What Fritz knows of an object, for people: classifications and a link."""

    classifications: str = ""
    link: str = ""
    exists: Optional[bool] = None  # None: unknown (no token, or the read failed)


# ---------------------------------------------------------------------------
# Errors


class FritzError(Exception):
    """A Fritz request failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class FritzAuthError(FritzError):
    pass


class FritzNotFoundError(FritzError):
    pass


# ---------------------------------------------------------------------------
# Pacing


class TokenBucket:
    """Thread-safe token bucket: `rate` tokens per second, at most `burst` saved."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def try_acquire(self) -> bool:
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def acquire(self, timeout: Optional[float] = None) -> bool:
        """Take one token, waiting as long as needed (or `timeout` s); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return True
                wait = (1.0 - self._tokens) / self.rate
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = min(wait, left)
            time.sleep(wait)


def _retry_class(bucket: TokenBucket, max_retry_after: float) -> type[Retry]:
    """A urllib3 Retry whose retries also take a bucket token and cap Retry-After."""

    class PacedRetry(Retry):
        def parse_retry_after(self, retry_after: str) -> float:
            return min(super().parse_retry_after(retry_after), max_retry_after)

        def sleep(self, response=None) -> None:  # type: ignore[no-untyped-def]
            metrics.fritz_request("retry")
            super().sleep(response)
            bucket.acquire()

    return PacedRetry


# ---------------------------------------------------------------------------
# A tiny pool of daemon threads with a bounded queue (never blocks the caller)


class _ReadPool:
    def __init__(self, workers: int, max_queued: int, name: str):
        self._q: queue.Queue = queue.Queue(maxsize=max_queued)
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{k}", daemon=True) for k in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], Any]) -> Optional[Future]:
        fut: Future = Future()
        try:
            self._q.put_nowait((fn, fut))
        except queue.Full:
            return None
        return fut

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the future
                fut.set_exception(e)

    def close(self) -> None:
        for _ in self._threads:
            try:
                self._q.put_nowait(None)
            except queue.Full:
                break


# ---------------------------------------------------------------------------
# The client


@dataclass(frozen=True)
class UpsertResult:
    action: str  # "created" or "updated"
    annotation_id: Optional[int]


class FritzClient:
    """Requests to Fritz, paced by one token bucket, with urllib3 retries.

    Plain methods (`upsert_annotation`, `get_annotations`, `get_classifications`,
    `source_exists`, `fetch_context`) raise `FritzError` subclasses; `context`
    never raises nor waits longer than its timeout.
    """

    def __init__(self, config: FritzConfig, session: Optional[requests.Session] = None):
        if not config.enabled:
            raise ValueError("FritzClient needs a token (FRITZ_TOKEN)")
        self.config = config
        self.bucket = TokenBucket(config.rate, config.burst)
        retry_cls = _retry_class(self.bucket, config.max_retry_after)
        retry = retry_cls(
            total=config.max_retries,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "POST", "PUT"}),
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
        self._session.headers["Authorization"] = f"token {config.token}"
        self._session.headers["User-Agent"] = "alertflow-oracle"
        self._lock = threading.Lock()
        self._annotation_ids: OrderedDict[str, int] = OrderedDict()  # a shortcut, not a truth
        self._context: OrderedDict[str, tuple[float, FritzContext]] = OrderedDict()
        self._context_inflight: dict[str, Future] = {}
        self._reads: Optional[_ReadPool] = None
        self._auth_warned = False

    # -- plumbing ---------------------------------------------------------

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
            # requests' messages hold the URL (no token there), never the headers.
            raise FritzError(f"{method} {url} failed: {type(e).__name__}: {_short(e)}") from None
        try:
            payload = r.json()
        except ValueError:
            payload = {"status": "error", "message": r.text[:300]}
        if r.status_code == 401:
            raise FritzAuthError(AUTH_MESSAGE, 401)
        return r.status_code, payload

    @staticmethod
    def _ok(status: int, payload: Any) -> bool:
        return 200 <= status < 300 and isinstance(payload, dict) and payload.get("status") == "success"

    @staticmethod
    def _message(status: int, payload: Any) -> str:
        msg = payload.get("message") if isinstance(payload, dict) else None
        return f"HTTP {status}: {msg or payload!r}"[:400]

    def _remember_id(self, object_id: str, annotation_id: Optional[int]) -> None:
        with self._lock:
            if annotation_id is None:
                self._annotation_ids.pop(object_id, None)
                return
            self._annotation_ids[object_id] = annotation_id
            self._annotation_ids.move_to_end(object_id)
            while len(self._annotation_ids) > 50_000:
                self._annotation_ids.popitem(last=False)

    # -- annotations ------------------------------------------------------

    def annotation_body(self, data: Mapping[str, Any]) -> dict:
        return {"origin": self.config.origin, "data": dict(data), "group_ids": list(self.config.group_ids)}

    def get_annotations(self, object_id: str) -> list[dict]:
        status, payload = self._request("GET", "sources", object_id, "annotations")
        if status == 404:
            raise FritzNotFoundError(f"source {object_id} not on Fritz", 404)
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
            self._remember_id(object_id, None)  # deleted or moved: start over

        status, payload = self._request("POST", "sources", object_id, "annotations", json=body)
        if self._ok(status, payload):
            ann_id = (payload.get("data") or {}).get("annotation_id")
            self._remember_id(object_id, ann_id)
            return UpsertResult("created", ann_id)
        if status == 404:
            raise FritzNotFoundError(f"source {object_id} not saved on Fritz", 404)
        message = self._message(status, payload)
        if status != 400 or not any(w in message.lower() for w in ("already exists", "duplicate", "unique")):
            raise FritzError(f"POST annotation on {object_id}: {message}", status)

        # One annotation per source and origin: find ours and update it.
        ours = [a for a in self.get_annotations(object_id) if a.get("origin") == self.config.origin]
        if not ours:
            raise FritzError(
                f"POST annotation on {object_id} said it exists ({message}) but none has origin "
                f"{self.config.origin!r} among those this token can see", status)
        ann_id = ours[0].get("id")
        status, payload = self._request("PUT", "sources", object_id, "annotations", str(ann_id), json=body)
        if not self._ok(status, payload):
            raise FritzError(f"PUT annotation {ann_id} on {object_id}: {self._message(status, payload)}", status)
        self._remember_id(object_id, ann_id)
        return UpsertResult("updated", ann_id)

    # -- reads for people ---------------------------------------------------

    def source_exists(self, object_id: str) -> bool:
        status, payload = self._request("GET", "sources", object_id)
        if self._ok(status, payload):
            return True
        if status in (400, 403, 404):
            return False
        raise FritzError(f"GET source {object_id}: {self._message(status, payload)}", status)

    def get_classifications(self, object_id: str) -> list[dict]:
        status, payload = self._request("GET", "sources", object_id, "classifications")
        if not self._ok(status, payload):
            raise FritzError(f"GET classifications of {object_id}: {self._message(status, payload)}", status)
        data = payload.get("data")
        return data if isinstance(data, list) else []

    def fetch_context(self, object_id: str) -> FritzContext:
        """Existence, then classifications (only for a saved source); raises on failure."""
        if not self.source_exists(object_id):
            return FritzContext("", alert_link(self.config.url, object_id), False)
        text = format_classifications(self.get_classifications(object_id))
        return FritzContext(text, source_link(self.config.url, object_id), True)

    def cached_context(self, object_id: str) -> Optional[FritzContext]:
        now = time.monotonic()
        with self._lock:
            hit = self._context.get(object_id)
            if hit and hit[0] > now:
                return hit[1]
        return None

    def context(self, object_id: str, timeout: Optional[float] = None) -> FritzContext:
        """Classifications and link, from the cache or a paced read; never raises.

        Waits at most `timeout` seconds (default `config.context_timeout`); when
        the read is not done by then (or fails) the classifications are empty
        and the link is the alert page. The read goes on in the background and
        fills the cache for the next caller.
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
                    if self._reads is None:
                        self._reads = _ReadPool(self.config.context_workers, 1000, "fritz-read")
                    fut = self._reads.submit(lambda: self._load_context(object_id))
                    if fut is None:
                        log.debug("Fritz read queue full; no context for %s", object_id)
                        return fallback
                    self._context_inflight[object_id] = fut
            try:
                return fut.result(timeout=max(0.0, timeout))
            except Exception:  # noqa: BLE001 - timeout or a failed read: leave it empty
                return fallback
        except Exception:  # noqa: BLE001 - never let a read break a caller
            log.debug("Fritz context for %s failed", object_id, exc_info=True)
            return fallback

    def _load_context(self, object_id: str) -> FritzContext:
        ttl = self.config.context_ttl
        try:
            ctx = self.fetch_context(object_id)
        except FritzAuthError as e:
            if not self._auth_warned:
                self._auth_warned = True
                log.error("%s", e)
            ctx, ttl = FritzContext("", alert_link(self.config.url, object_id), None), min(ttl, 60.0)
        except Exception as e:  # noqa: BLE001
            log.warning("Fritz context for %s not read: %s", object_id, e)
            ctx, ttl = FritzContext("", alert_link(self.config.url, object_id), None), min(ttl, 60.0)
        with self._lock:
            self._context[object_id] = (time.monotonic() + ttl, ctx)
            self._context.move_to_end(object_id)
            while len(self._context) > 50_000:
                self._context.popitem(last=False)
            self._context_inflight.pop(object_id, None)
        return ctx

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
        self._session.close()


def _short(e: BaseException) -> str:
    s = str(e)
    return s if len(s) < 300 else s[:300] + "..."


# ---------------------------------------------------------------------------
# Background sender with a coalescing queue


class CoalescingQueue:
    """FIFO of (key -> newest value); at most one value per key waits, and a key
    being worked on is not handed out again until `done(key)`."""

    def __init__(self, maxlen: int):
        self.maxlen = max(1, maxlen)
        self._items: OrderedDict[str, tuple[Optional[float], Any]] = OrderedDict()
        self._busy: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self.coalesced = 0
        self.dropped = 0

    def put(self, key: str, value: Any, order: Optional[float] = None) -> None:
        """Queue `value` for `key`; an older waiting value of the key is replaced
        (a value with a larger `order`, e.g. jd, is kept instead)."""
        with self._cond:
            old = self._items.get(key)
            if old is not None:
                self.coalesced += 1
                if old[0] is not None and order is not None and old[0] > order:
                    return
                self._items[key] = (order, value)  # keeps its place in the line
            else:
                self._items[key] = (order, value)
                while len(self._items) > self.maxlen:
                    self._items.popitem(last=False)
                    self.dropped += 1
            self._cond.notify()

    def get(self, timeout: Optional[float] = None) -> Optional[tuple[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                for key in self._items:
                    if key not in self._busy:
                        _, value = self._items.pop(key)
                        self._busy.add(key)
                        return key, value
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def done(self, key: str) -> None:
        with self._cond:
            self._busy.discard(key)
            self._cond.notify_all()

    def join(self, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._items or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


_HINTS = {
    403: "FRITZ_GROUP_IDS may name a group this token's user is not a member of",
    429: "Fritz kept rate-limiting after the retries; lower FRITZ_RATE",
}


class FritzAnnotator:
    """Sends annotations from a coalescing queue with `config.workers` threads.

    `submit` never blocks and never raises; `stats` counts outcomes; `flush`
    waits for the queue to drain; `close` flushes (bounded) and stops.
    """

    def __init__(self, client: FritzClient):
        self.client = client
        self.config = client.config
        self.queue = CoalescingQueue(self.config.max_pending)
        self.stats: Counter[str] = Counter()
        self.not_found: deque[str] = deque(maxlen=1000)  # recent objects not saved on Fritz
        self._not_found_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._auth_failed = False
        self._failure_kinds: set[str] = set()
        self._last_report = time.monotonic()
        self._reported = (0, 0)
        self._threads = [
            threading.Thread(target=self._run, name=f"fritz-annotate-{k}", daemon=True)
            for k in range(max(1, self.config.workers))
        ]
        for t in self._threads:
            t.start()

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def submit(self, object_id: str, data: Mapping[str, Any], jd: Optional[float] = None) -> None:
        try:
            until = self._not_found_until.get(object_id)
            if until is not None:
                if until > time.monotonic():
                    with self._lock:
                        self.stats["skipped_not_found"] += 1
                    return
                self._not_found_until.pop(object_id, None)
            self.queue.put(object_id, dict(data), jd)
            with self._lock:
                self.stats["submitted"] += 1
            self._maybe_report()
        except Exception:  # noqa: BLE001
            log.exception("Fritz: could not queue the annotation of %s", object_id)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            object_id, data = item
            try:
                self._send(object_id, data)
            finally:
                self.queue.done(object_id)
                self._maybe_report()

    def _send(self, object_id: str, data: dict) -> None:
        try:
            result = self.client.upsert_annotation(object_id, data)
        except FritzAuthError as e:
            metrics.fritz_request("unauthorized")
            with self._lock:
                self.stats["auth_failed"] += 1
                first = not self._auth_failed
                self._auth_failed = True
            if first:
                log.error("%s", e)
            else:
                log.debug("Fritz 401 again for %s", object_id)
            return
        except FritzNotFoundError:
            metrics.fritz_request("not_found")
            with self._lock:
                self.stats["not_found"] += 1
                self.not_found.append(object_id)
            if self.config.not_found_ttl > 0:
                self._not_found_until[object_id] = time.monotonic() + self.config.not_found_ttl
                if len(self._not_found_until) > 100_000:
                    self._not_found_until.clear()
            log.debug("Fritz: source %s is not saved on Fritz; annotation skipped", object_id)
            return
        except Exception as e:  # noqa: BLE001 - one failed object never stops the others
            status = getattr(e, "status", None)
            kind = f"HTTP {status}" if status else type(e).__name__
            metrics.fritz_request("failure")
            with self._lock:
                self.stats["failed"] += 1
                first = kind not in self._failure_kinds
                self._failure_kinds.add(kind)
            if first:
                hint = _HINTS.get(status, "")
                log.warning("Fritz annotation of %s failed: %s%s (said once per kind of failure; "
                            "counts in the periodic summary)", object_id, e, f". {hint}" if hint else "")
            else:
                log.debug("Fritz annotation of %s failed: %s", object_id, e)
            return
        metrics.fritz_request("success")
        with self._lock:
            self.stats[result.action] += 1
            recovered = self._auth_failed
            self._auth_failed = False
        if recovered:
            log.warning("Fritz accepts the token again; annotations are being posted")
        log.debug("Fritz annotation %s on %s (id %s)", result.action, object_id, result.annotation_id)

    def _maybe_report(self) -> None:
        now = time.monotonic()
        if now - self._last_report < self.config.report_interval:
            return
        with self._lock:
            if now - self._last_report < self.config.report_interval:
                return
            self._last_report = now
            coalesced, dropped = self.queue.coalesced, self.queue.dropped
            new_c, new_d = coalesced - self._reported[0], dropped - self._reported[1]
            self._reported = (coalesced, dropped)
            stats = dict(self.stats)
        backlog = len(self.queue)
        if backlog or new_c or new_d:
            log.warning(
                "Fritz backlog: %d objects waiting (pace %.3g req/s); %d older classifications "
                "replaced by newer ones and %d objects dropped since the last report; totals %s",
                backlog, self.config.rate, new_c, new_d, stats)
        else:
            log.info("Fritz annotations: %s", stats)

    def flush(self, timeout: Optional[float] = None) -> bool:
        return self.queue.join(timeout)

    def close(self, timeout: float = 30.0) -> None:
        drained = self.flush(timeout)
        self.queue.close()
        for t in self._threads:
            t.join(timeout=max(0.1, timeout / 10))
        left = len(self.queue)
        log.info("Fritz annotations this run: %s%s", dict(self.stats),
                 "" if drained else f"; {left} objects not sent (flow closing)")


# ---------------------------------------------------------------------------
# Bytewax sink


def _unwrap(item: Any) -> Any:
    """Accept a result record or a `(key, record)` pair."""
    if isinstance(item, tuple) and len(item) == 2 and not hasattr(item, "objectId"):
        return item[1]
    return item


class _FritzPartition(StatelessSinkPartition):
    def __init__(self, sink: "FritzAnnotationSink"):
        self._sink = sink

    def write_batch(self, items: list) -> None:
        for item in items:
            self._sink._write(_unwrap(item))

    def close(self) -> None:
        self._sink._release()


class FritzAnnotationSink(DynamicSink):
    """Post one ORACLE annotation per classified alert to Fritz (upsert, paced).

    Items: result records, or `(key, record)` pairs. Records whose survey is not
    in `surveys` are ignored. All workers of a process share one client, so the
    pace holds per process. Disabled (a no-op) without a token.
    """

    def __init__(
        self,
        config: FritzConfig,
        taxonomy: Taxonomy,
        *,
        surveys: Sequence[str] = ("ZTF",),
        client: Optional[FritzClient] = None,
        close_timeout: float = 30.0,
    ):
        self.config = config
        self.taxonomy = taxonomy
        self.surveys = {s.upper() for s in surveys}
        self.close_timeout = close_timeout
        self._client = client
        self._owns_client = client is None
        self._annotator: Optional[FritzAnnotator] = None
        self._users = 0
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @property
    def annotator(self) -> Optional[FritzAnnotator]:
        return self._annotator

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FritzPartition:
        with self._lock:
            self._users += 1
            if self._annotator is None and self.config.enabled:
                if self._client is None:
                    self._client = FritzClient(self.config)
                self._annotator = FritzAnnotator(self._client)
            elif not self.config.enabled and "disabled" not in self._warned:
                self._warned.add("disabled")
                log.info("Fritz annotations disabled (FRITZ_TOKEN not set)")
        return _FritzPartition(self)

    def _write(self, record: Any) -> None:
        annotator = self._annotator
        if annotator is None:
            return
        try:
            survey = str(getattr(record, "survey", "ZTF") or "ZTF").upper()
            if survey not in self.surveys:
                annotator.count("skipped_survey")
                return
            data = annotation_data(record.probabilities, self.taxonomy, self.config.decimals)
            if all(v is None for v in data.values()):
                if "taxonomy" not in self._warned:
                    self._warned.add("taxonomy")
                    log.error("Fritz sink: record %s has none of the %s taxonomy's classes; skipped",
                              getattr(record, "candid", "?"), self.taxonomy.name)
                return
            annotator.submit(str(record.objectId), data, _jd(record))
        except Exception:  # noqa: BLE001 - never raise out of the sink
            if "record" not in self._warned:
                self._warned.add("record")
                log.exception("Fritz sink: cannot annotate record %r", getattr(record, "candid", record))

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users <= 0
            annotator = self._annotator if last else None
            if last:
                self._annotator = None
        if annotator is not None:
            annotator.close(self.close_timeout)
            if self._owns_client and self._client is not None:
                self._client.close()
                self._client = None


def _jd(record: Any) -> Optional[float]:
    try:
        return float(record.jd)
    except (AttributeError, TypeError, ValueError):
        return None


__all__ = [
    "AUTH_MESSAGE",
    "CoalescingQueue",
    "FritzAnnotationSink",
    "FritzAnnotator",
    "FritzAuthError",
    "FritzClient",
    "FritzConfig",
    "FritzContext",
    "FritzError",
    "FritzNotFoundError",
    "TokenBucket",
    "UpsertResult",
    "alert_link",
    "annotation_data",
    "format_classifications",
    "parse_group_ids",
    "source_link",
]
