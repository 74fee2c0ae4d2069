"""Fritz (SkyPortal) on the flow's side: ORACLE annotations and what people said.

Writes: one annotation per classified ZTF alert on object `objectId`, with
origin `FRITZ_ORIGIN` (default `oracle_omni`) and `data` = every class
probability in a pre-order walk of the taxonomy without the root, rounded to
`FRITZ_DECIMALS`, visible to `FRITZ_GROUP_IDS` only. It is an upsert
(`FritzClient.upsert_annotation`): replaying an alert updates, never duplicates.

Reads (`add_fritz_context`): the object's Fritz classifications, people's
and machines' apart, and the link to show, cached per object.

One worker for the whole cluster: SkyPortal limits requests per token, so the
flow sends every result to one key (step `fritz` in dataflows/oracle.py); the
reads happen there and the annotations are written by this module's sink on
the same worker, so one token bucket holds the token's whole budget.

Writes go through a background sender (a few threads) fed by a coalescing
queue: when alerts arrive faster than the pace, only the newest classification
of each object is kept, and the backlog is reported in the logs. Failures never
leave the sink: 401 is said once; an object Fritz does not know (404) is
skipped for `FRITZ_NOT_FOUND_TTL`; an annotation this token cannot update
(another author, groups we are not in: 403) is said once per object with its
cause and that object is not retried this run; the rest is retried inside the
client (`operators/sinks/fritz_client.py`), bounded, then counted.

Inputs: result records (objects with candid, objectId, jd, survey,
probabilities, predicted, model, processed_at), a `Taxonomy`.
Outputs: annotations on Fritz; `fritz_classifications` and
`fritz_ml_classifications` on the records, for the CSV and Slack.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from cachetools import LRUCache, TTLCache

from models.oracle.taxonomy import Taxonomy
from operators.runtime import bounds, metrics
from operators.sinks.background import Delivery
from operators.sinks.fritz_client import (
    AUTH_MESSAGE,
    FritzAuthError,
    FritzClient,
    FritzError,
    FritzForbiddenError,
    FritzNotFoundError,
    UpsertResult,
    scrub,
)
from operators.sinks.fritz_config import (
    DEFAULT_URL,
    FritzConfig,
    FritzContext,
    alert_link,
    annotation_data,
    format_classifications,
    parse_group_ids,
    source_link,
    split_classifications,
)
from operators.sinks.ratelimit import TokenBucket
from operators.oracle.results import Result

log = logging.getLogger(__name__)

FRITZ_KEY = "fritz"  # the one key every result goes to, so one worker talks to Fritz
NOT_FOUND_MAX = 100_000  # objects Fritz answered 404 for, skipped for FRITZ_NOT_FOUND_TTL
FORBIDDEN_MAX = 100_000  # objects whose annotation this token cannot update, skipped for the run


def fritz_key(_results: list) -> str:
    """Every batch of results has the same key: the one Fritz worker of the cluster."""
    return FRITZ_KEY


def add_fritz_context(fritz: Optional[FritzClient], wait_s: float, state: Any, results: list) -> tuple[None, list]:
    """What Fritz already holds per result: people's and machines' classifications.

    A `stateful_map` step on `FRITZ_KEY` (no state kept). Reads for the batch
    start at once and share one deadline, so a slow Fritz costs a batch at most
    `wait_s`; a read not done by then leaves the fields empty and fills the
    cache for the object's next alert."""
    if fritz is None or not results:
        return None, results
    for r in results:
        fritz.context(r.objectId, timeout=0)
    deadline = time.monotonic() + wait_s
    out = []
    for r in results:
        ctx = fritz.context(r.objectId, timeout=max(0.0, deadline - time.monotonic()))
        out.append(replace(r, fritz_classifications=ctx.classifications,
                           fritz_ml_classifications=ctx.ml_classifications, fritz_link=ctx.link))
    return None, out


# ---------------------------------------------------------------------------
# Background sender


_HINTS = {
    429: "Fritz kept rate-limiting after the retries; lower FRITZ_RATE",
}


class FritzAnnotator(Delivery):
    """How to send one annotation to Fritz (the rest is `Delivery`'s), with
    `config.workers` threads. The client retries what can heal (urllib3: 429, 5xx,
    timeouts; paced by its token bucket), so `send` never asks for a retry.

    `submit` never blocks and never raises; `stats` counts outcomes; `flush`
    waits for the queue to drain; `close` flushes (bounded) and stops.
    """

    what = "annotations"
    service = "Fritz"
    kept = "the next alert of each object annotates it again"

    def __init__(self, client: FritzClient):
        self.client = client
        self.config = client.config
        # Objects not to send again: unknown to Fritz (for a while), or whose annotation
        # this token cannot update (for the run; said once each).
        self._not_found: Optional[TTLCache] = (
            TTLCache(maxsize=NOT_FOUND_MAX, ttl=self.config.not_found_ttl, timer=time.monotonic)
            if self.config.not_found_ttl > 0 else None)
        self._forbidden: LRUCache = LRUCache(maxsize=FORBIDDEN_MAX)
        self._last_report = time.monotonic()
        self._reported = (0, 0)
        super().__init__("fritz-annotate", max_pending=self.config.max_pending, workers=self.config.workers)
        # Sizes for the soak and `alertflow_bounded_items`: the queue holds at most FRITZ_MAX_PENDING
        # objects waiting plus one being sent per worker; the caches are read under the lock their
        # owner takes (a TTL cache's len() expires entries).
        bounds.track("fritz_queue", self, self.config.max_pending + self.config.workers,
                     where="FRITZ_MAX_PENDING waiting + FRITZ_WORKERS being sent")
        if self._not_found is not None:
            bounds.track("fritz_not_found", self._not_found, NOT_FOUND_MAX, self._lock,
                         where="NOT_FOUND_MAX (operators/sinks/fritz.py)")
        bounds.track("fritz_forbidden", self._forbidden, FORBIDDEN_MAX, self._lock,
                     where="FORBIDDEN_MAX (operators/sinks/fritz.py)")

    def submit(self, object_id: str, data: Mapping[str, Any], jd: Optional[float] = None) -> None:
        try:
            with self._lock:
                skip = ("skipped_forbidden" if object_id in self._forbidden else
                        "skipped_not_found" if self._not_found is not None and object_id in self._not_found
                        else None)
            if skip:
                self.count(skip)
                return
            super().submit(object_id, dict(data), jd)
            self.count("submitted")
            self._maybe_report()
        except Exception:  # noqa: BLE001
            log.exception("Fritz: could not queue the annotation of %s", object_id)

    def send(self, object_id: str, data: dict) -> None:
        """One annotation, whatever happens (the client retries what can heal): never a retry here."""
        try:
            self._annotate(object_id, data)
        finally:
            self._maybe_report()

    def _annotate(self, object_id: str, data: dict) -> None:
        try:
            result = self.client.upsert_annotation(object_id, data)
        except FritzAuthError as e:
            metrics.fritz_request("unauthorized")
            self.count("auth_failed")
            self.last_failure = "Fritz: 401, FRITZ_TOKEN refused"
            self.once("auth", logging.ERROR, "%s", e)
            return
        except FritzNotFoundError:
            metrics.fritz_request("not_found")
            with self._lock:
                self.stats["not_found"] += 1
                if self._not_found is not None:
                    self._not_found[object_id] = True
            log.debug("Fritz has no object %s (404); annotation skipped", object_id)
            return
        except FritzForbiddenError as e:
            metrics.fritz_request("forbidden")
            with self._lock:
                self.stats["forbidden"] += 1
                self._forbidden[object_id] = True
            log.warning("%s. %s is not annotated again this run.", e, object_id)
            return
        except Exception as e:  # noqa: BLE001 - one failed object never stops the others
            status = getattr(e, "status", None)
            kind = f"HTTP {status}" if status else type(e).__name__
            metrics.fritz_request("failure")
            self.count("failed")
            self.last_failure = f"Fritz: {kind}"
            hint = _HINTS.get(status, "")
            self.once(f"failure-{kind}", logging.WARNING,
                      "Fritz annotation of %s failed: %s%s (said once per kind of failure; counts in the periodic "
                      "summary)", object_id, self.client.scrub(e), f". {hint}" if hint else "")
            return
        metrics.fritz_request("success")
        self.count(result.action)
        if "auth" in self._said:  # the token was refused before: say it works again (once)
            self.forget("auth")
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
            coalesced, dropped = self.sender.queue.coalesced, self.sender.queue.dropped
            new_c, new_d = coalesced - self._reported[0], dropped - self._reported[1]
            self._reported = (coalesced, dropped)
            stats = dict(self.stats)
        backlog = len(self.sender.queue)
        if backlog or new_c or new_d:
            log.warning(
                "Fritz backlog: %d objects waiting (pace %.3g req/s); %d older classifications "
                "replaced by newer ones and %d objects dropped since the last report; totals %s",
                backlog, self.config.rate, new_c, new_d, stats)
        else:
            log.info("Fritz annotations: %s", stats)

    def close(self, timeout: float = 30.0) -> int:
        left = super().close(timeout)
        queue = self.sender.queue  # past FRITZ_MAX_PENDING the oldest object goes: counted, never silent
        totals = {**self.stats, **({"dropped": queue.dropped} if queue.dropped else {}),
                  **({"replaced": queue.coalesced} if queue.coalesced else {})}
        log.info("Fritz annotations this run: %s%s", totals,
                 f"; {left} objects not sent (flow closing)" if left else "")
        return left


# ---------------------------------------------------------------------------
# Bytewax sink


class _FritzPartition(StatelessSinkPartition):
    def __init__(self, sink: "FritzAnnotationSink"):
        self._sink = sink

    def write_batch(self, results: list[Result]) -> None:
        for result in results:
            self._sink._write(result)

    def close(self) -> None:
        self._sink._release()


class FritzAnnotationSink(DynamicSink):
    """Post one ORACLE annotation per classified alert to Fritz (upsert, paced).

    Items: `Result`s (a dynamic sink: no keys). With `surveys` (names), results of
    other surveys are ignored; the flow builds the sink only for a survey whose
    objects Fritz holds (`Survey.fritz`). All workers of a process share one client (and its
    token bucket); the flow feeds this sink from the one Fritz worker of the
    cluster, so the pace holds for the token. The sink closes the client when
    its last partition closes. Disabled (a no-op) without a token.
    """

    def __init__(
        self,
        config: FritzConfig,
        taxonomy: Taxonomy,
        *,
        surveys: Optional[Sequence[str]] = None,
        client: Optional[FritzClient] = None,
        close_timeout: float = 30.0,
    ):
        self.config = config
        self.taxonomy = taxonomy
        self.surveys = None if surveys is None else set(surveys)
        self.close_timeout = close_timeout
        self._client = client
        self._annotator: Optional[FritzAnnotator] = None
        self._users = 0
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # "disabled", said once per sink (no delivery exists then)

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

    def _write(self, record: Result) -> None:
        annotator = self._annotator
        if annotator is None:
            return
        try:
            if self.surveys is not None and getattr(record, "survey", None) not in self.surveys:
                annotator.count("skipped_survey")
                return
            data = annotation_data(record.probabilities, self.taxonomy, self.config.decimals)
            if all(v is None for v in data.values()):
                annotator.once("taxonomy", logging.ERROR, "Fritz sink: record %s has none of the %s taxonomy's "
                               "classes; skipped", getattr(record, "candid", "?"), self.taxonomy.name)
                return
            annotator.submit(str(record.objectId), data, _jd(record))
        except Exception:  # noqa: BLE001 - never raise out of the sink
            annotator.once("record", logging.ERROR, "Fritz sink: cannot annotate record %r",
                           getattr(record, "candid", record), exc_info=True)

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users <= 0
            annotator = self._annotator if last else None
            if last:
                self._annotator = None
        if annotator is not None:
            if self._client is not None:
                self._client.stop_reads()
            annotator.close(self.close_timeout)
            if self._client is not None:
                self._client.close()
                self._client = None


def _jd(record: Any) -> Optional[float]:
    try:
        return float(record.jd)
    except (AttributeError, TypeError, ValueError):
        return None


__all__ = [
    "AUTH_MESSAGE",
    "DEFAULT_URL",
    "FRITZ_KEY",
    "FritzForbiddenError",
    "add_fritz_context",
    "scrub",
    "split_classifications",
    "fritz_key",
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
