"""Alert documents in a time window, as a bytewax partitioned source (backfills).

The window `[since, until)` of the survey's time field (`candidate.jd`) is cut
into equal time slices; each slice is one partition, so `-w N` workers and
processes (-i/-a) share them. A partition reads its slice in `(time, _id)`
order with a projection of the few fields a `FilterResult` needs and the
store's `batch_size`, and emits one list of alerts per read (a model batch).
Its position — the last `(time, _id)` read and how many documents that was —
is its recovery state: a killed backfill resumes after the last snapshot, and
the results sink drops rows it already wrote.

Two scanners answer the same query (MongoDB's query language):
- `MongoScanner`: BOOM's MongoDB, `find(query, projection).sort(time, _id)`;
- `EmbeddedScanner`: the bundled documents, for trying a backfill without
  MongoDB; it understands the operators in `OPERATORS` (a clear error otherwise).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.io.deadletter import DeadLetter, Origin, dead_letter
from operators.oracle.messages import FilterResult
from operators.runtime.progress import Progress
from operators.oracle.store import read_documents

log = logging.getLogger("alertflow.backfill")


# ---------------------------------------------------------------- the window


def slices(since: float, until: float, count: int) -> list[tuple[float, float]]:
    """`count` equal, adjacent time slices covering `[since, until)`."""
    if not until > since:
        raise ValueError(f"the window is empty: until ({until}) must be after since ({since})")
    count = max(1, int(count))
    edges = [since + (until - since) * i / count for i in range(count)] + [until]
    return list(zip(edges[:-1], edges[1:]))


def slice_key(index: int, lo: float, hi: float) -> str:
    # The key names the slice exactly, so a resumed run with the same window finds its state.
    return f"{index:04d}:{lo!r}-{hi!r}"


def slice_query(time_field: str, lo: float, hi: float, narrowing: Optional[dict] = None,
                after: Optional[tuple[float, Any]] = None) -> dict:
    """Documents of one slice, narrowed by the user's query, after a position."""
    parts: list[dict] = [{time_field: {"$gte": lo, "$lt": hi}}]
    if narrowing:
        parts.append(narrowing)
    if after is not None:
        t, key = after
        parts.append({"$or": [{time_field: {"$gt": t}}, {time_field: t, "_id": {"$gt": key}}]})
    return parts[0] if len(parts) == 1 else {"$and": parts}


def ids_query(lines: list[str]) -> dict:
    """A `--candids FILE`'s lines as a query: a number is a candid or an (LSST, numeric)
    objectId, anything else an objectId."""
    candids = [int(s) for s in lines if s.isdigit()]
    object_ids = list(dict.fromkeys(lines))
    if not lines:
        raise ValueError("the candid file lists no candid or objectId")
    return {"$or": [{"_id": {"$in": candids}}, {"objectId": {"$in": object_ids}}]} if candids else \
        {"objectId": {"$in": object_ids}}


# ---------------------------------------------------------------- scanners


class Scanner(Protocol):
    def count(self, query: dict) -> int: ...

    def scan(self, query: dict, fields: tuple[str, ...], batch_size: int) -> Iterator[dict]: ...


def get_path(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


_MISSING = object()


def _cmp(op: str) -> Callable[[Any, Any], bool]:
    import operator

    fn = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}[op]

    def compare(value, arg) -> bool:
        try:
            return value is not _MISSING and value is not None and fn(value, arg)
        except TypeError:  # MongoDB compares only within a type bracket
            return False

    return compare


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda v, a: v == a,
    "$ne": lambda v, a: v != a,
    "$in": lambda v, a: v in a if v is not _MISSING else None in a,
    "$nin": lambda v, a: v not in a,
    "$exists": lambda v, a: (v is not _MISSING) == bool(a),
    **{op: _cmp(op) for op in ("$gt", "$gte", "$lt", "$lte")},
}


def matches(doc: dict, query: dict) -> bool:
    """MongoDB's matching for the subset of operators in `OPERATORS`, `$and`, `$or`."""
    for key, cond in query.items():
        if key == "$and":
            if not all(matches(doc, q) for q in cond):
                return False
        elif key == "$or":
            if not any(matches(doc, q) for q in cond):
                return False
        elif key.startswith("$"):
            raise ValueError(f"the bundled-document store does not understand {key}; use MongoDB for this query")
        else:
            value = get_path(doc, key)
            if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
                for op, arg in cond.items():
                    if op not in OPERATORS:
                        raise ValueError(f"the bundled-document store does not understand {op} "
                                         f"(it knows {', '.join(OPERATORS)}); use MongoDB for this query")
                    if not OPERATORS[op](value, arg):
                        return False
            elif value != cond:
                return False
    return True


class EmbeddedScanner:
    """The bundled alert documents (`<sample_dir>/<collection>.jsonl`), read once."""

    def __init__(self, sample_dir: Path, collection: str, time_field: str):
        self._time_field = time_field
        docs = read_documents(Path(sample_dir) / f"{collection}.jsonl")
        self._docs = sorted(docs, key=lambda d: (_time_of(d, time_field), d["_id"]))

    def _matching(self, query: dict) -> list[dict]:
        return [d for d in self._docs if matches(d, query)]

    def count(self, query: dict) -> int:
        return len(self._matching(query))

    def scan(self, query: dict, fields: tuple[str, ...], batch_size: int) -> Iterator[dict]:
        return iter(self._matching(query))

    def time_range(self) -> tuple[Optional[float], Optional[float], int]:
        """(earliest, latest time, how many documents) of the whole collection."""
        times = [t for t in (_time_of(d, self._time_field) for d in self._docs) if t != float("inf")]
        return (times[0], times[-1], len(self._docs)) if times else (None, None, len(self._docs))


def _time_of(doc: dict, time_field: str) -> float:
    value = get_path(doc, time_field)
    return float(value) if isinstance(value, (int, float)) else float("inf")


class MongoScanner:
    """BOOM's alert collection through the process's shared pymongo client."""

    def __init__(self, settings, collection: str, time_field: str):
        from operators.oracle.mongo_store import acquire_client

        self._settings = settings
        self._time_field = time_field
        self._coll = acquire_client(settings)[settings.database][collection]

    def count(self, query: dict) -> int:
        return self._coll.count_documents(query)

    def scan(self, query: dict, fields: tuple[str, ...], batch_size: int) -> Iterator[dict]:
        from operators.oracle.mongo_store import _unflatten, projection

        cursor = self._coll.find(query, projection(fields), batch_size=batch_size,
                                 sort=[(self._time_field, 1), ("_id", 1)])
        return (_unflatten(doc) for doc in cursor)

    def time_range(self) -> tuple[Optional[float], Optional[float], int]:
        """(earliest, latest time, about how many documents) of the whole collection (index-backed:
        BOOM indexes its time field)."""
        from operators.oracle.mongo_store import _unflatten

        has_time = {self._time_field: {"$type": "number"}}
        ends = [self._coll.find_one(has_time, {self._time_field: 1}, sort=[(self._time_field, d)]) for d in (1, -1)]
        times = [get_path(_unflatten(e), self._time_field) if e else None for e in ends]
        return times[0], times[1], self._coll.estimated_document_count()


def jd_date(jd: float) -> str:
    """A JD as an ISO date-time (UTC, to the second)."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp((jd - 2440587.5) * 86400.0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def empty_window_line(collection: str, time_field: str, window: tuple[float, float], labels: tuple[str, str],
                      store: str, held: tuple[Optional[float], Optional[float], int], in_window: int) -> str:
    """What to say when no document of the window is to be classified: the window, what the
    store holds, and (when `--query`/`--candids` emptied it) how many the window held before."""
    (since, until), (since_label, until_label), (first, last, count) = window, labels, held
    said = f"no {collection} document has {time_field} in [{since_label}, {until_label}) (JD {since:.5f} .. {until:.5f})"
    if in_window:
        said = (f"none of the {in_window} {collection} documents with {time_field} in [{since_label}, {until_label}) "
                f"matches --query/--candids")
    if first is None:
        return f"{said}; in {store}: no {collection} document with a {time_field} -> check the store settings"
    fix = "loosen --query/--candids" if in_window else "give --since/--until inside that range"
    return (f"{said}; in {store}: {count} {collection} documents from {jd_date(first)} to {jd_date(last)} "
            f"(JD {first:.5f} .. {last:.5f}) -> {fix}")


# ---------------------------------------------------------------- the source


@dataclass
class SlicePosition:
    """Recovery state of one slice: the last `(time, _id)` read and how many so far."""

    after: Optional[tuple[float, Any]] = None
    done: int = 0
    finished: bool = False


SCAN_FIELDS = ("objectId", "candidate.ra", "candidate.dec")


def alert_of(doc: dict, time_field: str, origin: Origin) -> FilterResult | DeadLetter:
    """An alert document as the flow's `FilterResult` (no filters: a backfill takes the
    documents as found), or a dead letter naming the field that is missing."""
    candid, object_id = doc.get("_id"), doc.get("objectId")
    jd, ra, dec = get_path(doc, time_field), get_path(doc, "candidate.ra"), get_path(doc, "candidate.dec")
    for name, value, kinds in (("_id", candid, (int,)), ("objectId", object_id, (str,)), (time_field, jd, (int, float)),
                               ("candidate.ra", ra, (int, float)), ("candidate.dec", dec, (int, float))):
        if not isinstance(value, kinds) or isinstance(value, bool):
            return dead_letter("backfill", f"missing field: {name}", origin, candid, object_id)
    return FilterResult(candid=int(candid), objectId=object_id, jd=float(jd), ra=float(ra), dec=float(dec),
                        filters=frozenset(), origin=origin)


class _SlicePartition(StatefulSourcePartition):
    def __init__(self, source: "WindowSource", index: int, lo: float, hi: float, state: SlicePosition):
        self._s = source
        self._index = index
        self._lo, self._hi = lo, hi
        self._state = state
        self._rows: Optional[Iterator[dict]] = None
        self._attempt = 0
        self._registered = not state.finished
        if not state.finished:
            total = source.scanner().count(slice_query(source.time_field, lo, hi, source.narrowing))
            source.progress().add_total(total, state.done)
            if state.done:
                log.info("backfill slice %d resumes after %d of %d documents", index, state.done, total)

    def _open(self) -> Iterator[dict]:
        s = self._s
        query = slice_query(s.time_field, self._lo, self._hi, s.narrowing, self._state.after)
        return s.scanner().scan(query, (s.time_field, *SCAN_FIELDS), s.batch_size)

    def next_batch(self) -> list:
        if self._state.finished:
            raise StopIteration()
        from operators.oracle.mongo_store import TRANSIENT_ERRORS

        docs: list[dict] = []
        try:
            if self._rows is None:
                self._rows = self._open()
            for doc in self._rows:
                docs.append(doc)
                if len(docs) >= self._s.batch_size:
                    break
            self._attempt = 0
        except TRANSIENT_ERRORS as exc:  # resume the slice from the last document read, after a pause
            self._rows = None
            self._attempt += 1
            delay = min(10.0, 0.25 * 2 ** (self._attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning("MongoDB unavailable while reading backfill slice %d (%s); retry in %.2f s",
                        self._index, type(exc).__name__, delay)
            time.sleep(delay)
            if not docs:
                return []
        if not docs:
            self._state.finished = True
            raise StopIteration()
        origin = Origin(topic=f"backfill:{self._s.collection}", partition=self._index)
        batch = [alert_of(d, self._s.time_field, origin) for d in docs]
        last = docs[-1]
        self._state.after = (get_path(last, self._s.time_field), last["_id"])
        self._state.done += len(docs)
        self._s.progress().advance(len(docs))
        return [batch]

    def snapshot(self) -> SlicePosition:
        return SlicePosition(self._state.after, self._state.done, self._state.finished)

    def close(self) -> None:
        if self._registered:
            self._registered = False
            self._s.progress().part_closed()


class SharedProgress:
    """One progress line per process for all the slices its workers read."""

    def __init__(self, label: str):
        self._p = Progress(0, label)
        self._lock = threading.Lock()
        self._open = 0

    def add_total(self, total: int, done: int) -> None:
        with self._lock:
            self._open += 1
        self._p.add_total(total)
        self._p.advance(done)

    def advance(self, n: int) -> None:
        self._p.advance(n)

    def part_closed(self) -> None:
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            self._p.close()


class WindowSource(FixedPartitionedSource):
    """The documents of `collection` with `time_field` in `[since, until)`, narrowed by
    `narrowing` (a MongoDB query), in `slice_count` partitions; emits lists of at most
    `batch_size` alerts (`FilterResult`, or `DeadLetter` for unusable documents)."""

    def __init__(self, make_scanner: Callable[[], Scanner], collection: str, time_field: str,
                 since: float, until: float, narrowing: Optional[dict] = None, slice_count: int = 32,
                 batch_size: int = 256, label: str = "backfill"):
        self._make_scanner = make_scanner
        self.collection = collection
        self.time_field = time_field
        self.narrowing = narrowing
        self.batch_size = max(1, int(batch_size))
        self._slices = slices(since, until, slice_count)
        self._label = label
        self._lock = threading.Lock()
        self._scanner: Optional[Scanner] = None
        self._progress: Optional[SharedProgress] = None

    def scanner(self) -> Scanner:
        with self._lock:  # one per process, built on first use (workers are threads)
            if self._scanner is None:
                self._scanner = self._make_scanner()
            return self._scanner

    def progress(self) -> SharedProgress:
        with self._lock:
            if self._progress is None:
                self._progress = SharedProgress(self._label)
            return self._progress

    def list_parts(self) -> list[str]:
        return [slice_key(i, lo, hi) for i, (lo, hi) in enumerate(self._slices)]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[SlicePosition]) -> _SlicePartition:
        index = int(for_part.split(":", 1)[0])
        lo, hi = self._slices[index]
        return _SlicePartition(self, index, lo, hi, resume_state or SlicePosition())
