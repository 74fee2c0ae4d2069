"""The results collection: one MongoDB document per alert, `_id` = candid, upserted.

    lists of results (one per model batch) → ResultsCollectionSink → bulk_write([ReplaceOne(upsert)])

Every worker writes what it classified (a bytewax `DynamicSink`, one partition per
worker, sharing the process's `MongoClient`). One `bulk_write` per model batch,
unordered, of `ReplaceOne({"_id": candid}, document, upsert=True)`: a replay after a
crash replaces a document by the same one (no duplicate can exist: `_id` is unique),
and a backfill with new weights overwrites it with its own `model` (provenance).
The write is synchronous inside `write_batch`, so a recovery snapshot never runs
ahead of the collection: `kill -9` anywhere loses nothing and duplicates nothing.

The document holds the record of `operators/oracle/result_record.py` (probabilities
as a sub-document keyed by node name) with NaN (an unknown ra/dec) stored as null:
some MongoDB-wire servers reject NaN, and null is what a query expects for "unknown".

Failures: an outage (`TRANSIENT_ERRORS` of operators/oracle/mongo_store.py) is waited
out with growing jittered pauses (tenacity), one warning per retry, Ctrl-C ends a
pause at once; a document MongoDB refuses (a write error of the bulk write) becomes
a dead letter with MongoDB's reason; a refusal of the user (not allowed to write)
stops the flow with one line (nothing is lost: the batch was not acknowledged).

`prepare_collection` creates the indexes (objectId with the alert time, the alert
time) and proves the right to write; `check` and the flow's start call it.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Callable, Optional

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pymongo import ASCENDING, ReplaceOne
from pymongo.errors import BulkWriteError, OperationFailure
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_never

from operators.io.deadletter import DeadLetter, dead_letter
from operators.oracle.mongo_store import TRANSIENT_ERRORS, acquire_client, describe_error
from operators.oracle.result_record import encode, time_field, to_record
from operators.oracle.results import Result
from operators.oracle.store import nan_to_none
from operators.runtime import metrics
from operators.runtime.logs import interruptible_sleep
from operators.runtime.service_settings import MongoSettings

log = logging.getLogger("alertflow.results_collection")

AUTH_CODES = {13, 8000, 31}  # Unauthorized, Atlas's "user is not allowed", RoleNotFound
PROBE_ID = "alertflow-write-check"  # the document `prepare_collection` writes and deletes again


class NotAllowed(RuntimeError):
    """The MongoDB user may not write to the results collection; the message is one line with the fix."""


def document(record: dict) -> dict:
    """A results record as the collection keeps it: `_id` = candid, NaN stored as null."""
    return {"_id": record["candid"], **nan_to_none(record)}


def not_allowed(exc: OperationFailure, mongo: MongoSettings, database: str, collection: str, what: str) -> NotAllowed:
    """The one line for a refused write, scrubbed of credentials (a server may echo the URI)."""
    return NotAllowed(mongo.redact(f"MongoDB refuses to let this user {what} {database}.{collection} (code {exc.code}: "
                      f"{exc.details.get('errmsg', '') if exc.details else exc}) -> give the user readWrite on "
                      f"{database}, or set ORACLE_RESULTS_DATABASE to a database it may write "
                      f"(BOOM deployments often hand out read-only users)"))


def with_retries(what: str, action: Callable, mongo: MongoSettings, *, initial_s: float = 0.25,
                 max_s: float = 10.0, sleep: Callable[[float], None] = interruptible_sleep,
                 on_retry: Callable[[], None] = lambda: None):
    """`action()`, retried while MongoDB is unreachable (for ever: the flow waits, it never skips)."""
    def pause(state: RetryCallState) -> float:
        return min(max_s, initial_s * 2 ** (state.attempt_number - 1)) * random.uniform(0.5, 1.0)

    def say(state: RetryCallState) -> None:
        on_retry()
        log.warning("MongoDB at %s unavailable during the %s (%s); retry %d in %.2f s; the flow waits (Ctrl-C "
                    "to stop)", mongo.describe(), what, describe_error(state.outcome.exception(), mongo),
                    state.attempt_number, state.next_action.sleep)

    return Retrying(retry=retry_if_exception_type(TRANSIENT_ERRORS), stop=stop_never, wait=pause, sleep=sleep,
                    before_sleep=say, reraise=True)(action)


def prepare_collection(client, mongo: MongoSettings, database: str, collection: str, survey: str,
                       sleep: Callable[[float], None] = interruptible_sleep, wait: bool = True) -> list[str]:
    """Create the collection's indexes and prove the right to write (one document written
    and deleted again). Raises `NotAllowed` for a read-only user; with `wait`, waits out
    an outage (else its error is raised). Returns the names of the indexes."""
    coll = client[database][collection]
    t = time_field(survey)

    def indexes() -> list[str]:
        return [coll.create_index([("objectId", ASCENDING), (t, ASCENDING)]), coll.create_index([(t, ASCENDING)])]

    def probe() -> None:
        coll.replace_one({"_id": PROBE_ID}, {"_id": PROBE_ID, "by": "alertflow check"}, upsert=True)
        coll.delete_one({"_id": PROBE_ID})

    def run(what: str, action: Callable):
        return with_retries(what, action, mongo, sleep=sleep) if wait else action()

    try:
        names = run(f"index creation on {collection}", indexes)
        run(f"write check on {collection}", probe)
    except OperationFailure as exc:
        if exc.code in AUTH_CODES:
            raise not_allowed(exc, mongo, database, collection, "write to") from None
        raise
    return names


_prepared: set[tuple] = set()
_prepared_lock = threading.Lock()


class _CollectionPartition(StatelessSinkPartition):
    def __init__(self, sink: "ResultsCollectionSink"):
        self._sink = sink
        self._client = sink.client if sink.client is not None else acquire_client(sink.mongo)
        self._coll = self._client[sink.database][sink.collection]
        key = (sink.mongo.describe(), sink.database, sink.collection)
        with _prepared_lock:  # once per process, before the first write (the flow's start already did it)
            if key not in _prepared:
                prepare_collection(self._client, sink.mongo, sink.database, sink.collection, sink.survey,
                                   sleep=sink.sleep)
                _prepared.add(key)

    def write_batch(self, items: list) -> None:
        results: list[Result] = [r for group in items for r in (group if isinstance(group, list) else [group])]
        if not results:
            return
        records = [to_record(r, self._sink.taxonomy) for r in results]
        ops = [ReplaceOne({"_id": rec["candid"]}, document(rec), upsert=True) for rec in records]
        refused: list[DeadLetter] = []

        def write() -> None:
            try:
                self._coll.bulk_write(ops, ordered=False)
            except BulkWriteError as exc:  # the other documents were written
                for err in exc.details.get("writeErrors", []):
                    rec = records[err["index"]]
                    refused.append(dead_letter(self._sink.stage, f"{self._sink.label} refused: "
                                                                 f"{err.get('errmsg', 'write error')} "
                                                                 f"(code {err.get('code')})",
                                               candid=rec["candid"], object_id=rec["objectId"],
                                               payload=encode(rec)))

        try:
            with_retries(f"write of {len(ops)} results", write, self._sink.mongo, sleep=self._sink.sleep,
                         on_retry=lambda: metrics.results_delivery_failed(self._sink.survey, self._sink.metric,
                                                                          "retried", len(ops)))
        except OperationFailure as exc:
            if exc.code in AUTH_CODES:
                raise not_allowed(exc, self._sink.mongo, self._sink.database, self._sink.collection,
                                  "write to") from None
            raise
        metrics.results_published(self._sink.survey, self._sink.metric, len(ops) - len(refused))
        if refused:
            metrics.results_delivery_failed(self._sink.survey, self._sink.metric, "refused", len(refused))
            self._sink.refuse(refused)

    def close(self) -> None:
        pass  # the client is the process's (operators/oracle/mongo_store.py), closed at exit


class ResultsCollectionSink(DynamicSink):
    """Each worker upserts the results it classified (see the module doc). Items: lists of `Result`."""

    def __init__(self, mongo: MongoSettings, database: str, collection: str, *, survey: str, taxonomy: str,
                 refuse: Callable[[list[DeadLetter]], None], shadow: bool = False, client=None,
                 sleep: Callable[[float], None] = interruptible_sleep):
        self.mongo, self.database, self.collection = mongo, database, collection
        self.survey, self.taxonomy, self.refuse, self.client, self.sleep = survey, taxonomy, refuse, client, sleep
        self.label = "results collection" + (" (shadow)" if shadow else "")
        self.stage = "results_collection" + ("_shadow" if shadow else "")
        self.metric = "shadow_collection" if shadow else "collection"

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CollectionPartition:
        return _CollectionPartition(self)


def published_count(client, database: str, collection: str) -> Optional[int]:
    """Documents in the collection (for logs and tests); None when it cannot be counted."""
    try:
        return client[database][collection].count_documents({})
    except Exception:  # noqa: BLE001
        return None
