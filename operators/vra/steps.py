"""Steps of the Fink VRA feature flow (`dataflows/fink_vra.py`).

Inputs: Kafka messages of Fink's VRA topic (or the embedded sample alerts in
`data/fink/`), as `Message(payload, key, origin)`. The payload is either an
Avro container (schema in its header, as `.avro` files and some producers
send) or, as Fink distributes today (fink-client's consumer), schemaless Avro
whose writer schema travels as JSON in the message key; a fixed schema file
can stand in for a missing key.

Outputs: feature rows (`operators.vra.features`) appended to a Parquet dataset
deduplicated by candid, and `DeadLetter`s for everything that could not be
used. Every function here is pure or holds only a lookup client, so each can
be tested alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import fastavro
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from operators.io.deadletter import DeadLetter, Origin, dead_letter
from operators.vra.config import FinkVraConfig  # noqa: F401 - the flow's settings, re-exported
from operators.vra.sherlock import SherlockClient, SherlockError, SherlockMatch
from operators.vra.dust import ebv_or_nan
from operators.vra.features import FEATURE_COLUMNS, alert_features, rows_to_frame

log = logging.getLogger(__name__)

AVRO_MAGIC = b"Obj\x01"


# ---------------------------------------------------------------- items


@dataclass(frozen=True)
class Message:
    """One message as received: raw bytes, Kafka key, where it came from."""

    payload: bytes
    key: Optional[bytes] = None
    origin: Origin = Origin()


@dataclass(frozen=True)
class AlertItem:
    """A decoded alert, with what is known about it so far."""

    alert: dict
    origin: Origin
    payload: bytes  # the message it came in, kept for dead letters
    sherlock: Optional[SherlockMatch] = None
    # Features the input lacks the fields for (a Parquet file without them): NaN.
    unavailable: frozenset = frozenset()


Routed = Union[AlertItem, DeadLetter]


def is_alert(item: Routed) -> bool:
    return isinstance(item, AlertItem)


# ---------------------------------------------------------------- input


def kafka_message(msg) -> Message:
    """A bytewax `KafkaSourceMessage` as a `Message`."""
    ts = msg.timestamp[1] if msg.timestamp and msg.timestamp[1] >= 0 else None
    return Message(
        payload=msg.value or b"",
        key=msg.key,
        origin=Origin(topic=msg.topic, partition=msg.partition, offset=msg.offset, timestamp_ms=ts),
    )


def kafka_error_letter(err) -> DeadLetter:
    """A bytewax `KafkaError` (consumer error) as a dead letter."""
    msg = err.msg
    return dead_letter(
        "kafka",
        f"kafka_error: {err.err}",
        Origin(topic=msg.topic, partition=msg.partition, offset=msg.offset),
        payload=msg.value,
    )


def single_alert_container(schema: dict, record: dict) -> bytes:
    """One alert as an Avro container: the bytes a Kafka producer could send."""
    buf = io.BytesIO()
    fastavro.writer(buf, schema, [record], codec="null")
    return buf.getvalue()


class _AvroFilePartition(StatefulSourcePartition[Message, int]):
    def __init__(self, path: Path, resume_offset: Optional[int], batch_size: int):
        with path.open("rb") as f:
            reader = fastavro.reader(f)
            self._schema = reader.writer_schema
            self._records = list(reader)
        self._topic = f"embedded:{path.name}"
        self._next = resume_offset or 0
        self._batch = batch_size

    def next_batch(self) -> list[Message]:
        if self._next >= len(self._records):
            raise StopIteration()
        batch = []
        for offset in range(self._next, min(self._next + self._batch, len(self._records))):
            payload = single_alert_container(self._schema, self._records[offset])
            batch.append(Message(payload=payload, origin=Origin(topic=self._topic, partition=0, offset=offset)))
        self._next += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._next


class EmbeddedAlertSource(FixedPartitionedSource[Message, int]):
    """The real Fink alerts shipped in the repo, one message per alert.

    One partition per Avro file (so workers share the files); each alert is
    re-encoded as a one-record Avro container, as a Kafka message would carry it.
    """

    def __init__(self, directory: Path, pattern: str = "fink_ztf*.avro", batch_size: int = 16):
        self._dir = Path(directory)
        self._pattern = pattern
        self._batch = batch_size

    def list_parts(self) -> list[str]:
        return sorted(p.name for p in self._dir.glob(self._pattern) if p.is_file())

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _AvroFilePartition:
        return _AvroFilePartition(self._dir / for_part, resume_state, self._batch)


# ---------------------------------------------------------------- decoding


@lru_cache(maxsize=16)
def _parsed_schema_from_json(text: str):
    return fastavro.parse_schema(json.loads(text))


@lru_cache(maxsize=4)
def load_schema(path: str):
    """A parsed Avro schema from an .avsc file (for schemaless messages without key)."""
    with open(path, encoding="utf-8") as f:
        return fastavro.parse_schema(json.load(f))


def schema_from_key(key: Optional[bytes]):
    """The writer schema Fink puts in the message key, or None if the key is not one."""
    if not key:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.lstrip().startswith("{"):
        return None
    try:
        return _parsed_schema_from_json(text)
    except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException):
        return None


def decode_alerts(payload: bytes, key: Optional[bytes] = None, schema=None) -> list[dict]:
    """The alerts in one message. Raises ValueError (or fastavro's errors) if unreadable.

    Avro container bytes are read with `fastavro.reader` (the schema is in the
    header). Otherwise the payload is schemaless Avro, read with the schema in
    the key (Fink's distribution format) or with `schema`.
    """
    if not payload:
        raise ValueError("empty payload")
    if payload[:4] == AVRO_MAGIC:
        return list(fastavro.reader(io.BytesIO(payload)))
    writer_schema = schema_from_key(key) or schema
    if writer_schema is None:
        raise ValueError("not an Avro container, and no schema in the key nor configured")
    buf = io.BytesIO(payload)
    record = fastavro.schemaless_reader(buf, writer_schema)
    if buf.tell() != len(payload):
        raise ValueError(f"{len(payload) - buf.tell()} trailing bytes after the alert")
    return [record]


def alert_problem(alert: Any) -> Optional[str]:
    """Why an alert cannot give a feature row, or None if it can."""
    if not isinstance(alert, Mapping):
        return "not a record"
    cand = alert.get("candidate")
    if not isinstance(cand, Mapping):
        return "no candidate"
    if alert.get("objectId") is None:
        return "no objectId"
    candid = alert.get("candid", cand.get("candid"))
    if not isinstance(candid, int):
        return "no candid"
    for name in ("ra", "dec"):
        value = cand.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"no candidate.{name}"
    prv = alert.get("prv_candidates")
    if prv is not None and not isinstance(prv, list):
        return "prv_candidates is not a list"
    return None


def decode_message(schema, msg: Message) -> list[Routed]:
    """Flat-map step: the valid alerts of a message, or dead letters."""
    try:
        alerts = decode_alerts(msg.payload, msg.key, schema)
    except Exception as exc:  # any decoding failure is the message's fault
        return [dead_letter("decode", f"undecodable: {type(exc).__name__}: {exc}", msg.origin, payload=msg.payload)]
    out: list[Routed] = []
    for alert in alerts:
        problem = alert_problem(alert)
        if problem is None:
            out.append(AlertItem(alert=alert, origin=msg.origin, payload=msg.payload))
        else:
            ids = alert if isinstance(alert, Mapping) else {}
            out.append(dead_letter(
                "decode", f"invalid_alert: {problem}", msg.origin,
                candid=ids.get("candid"), object_id=ids.get("objectId"), payload=msg.payload,
            ))
    return out


# ---------------------------------------------------------------- stream filter


# Fink's `fink_vra_ztf` topic definition.
VRA_MIN_MAGPSF = 19.5
VRA_MIN_DRB = 0.5


def passes_vra_cut(item: AlertItem) -> bool:
    """cdsxmatch == "Unknown", roid != 3, magpsf > 19.5, drb > 0.5 (Fink's topic)."""
    alert = item.alert
    cand = alert["candidate"]
    magpsf, drb = cand.get("magpsf"), cand.get("drb")
    return (
        alert.get("cdsxmatch") == "Unknown"
        and alert.get("roid") != 3
        and magpsf is not None and magpsf > VRA_MIN_MAGPSF
        and drb is not None and drb > VRA_MIN_DRB
    )


# ---------------------------------------------------------------- Sherlock


def object_key(item: AlertItem) -> str:
    return str(item.alert["objectId"])


def lookup_sherlock(
    client: SherlockClient, cached: Optional[SherlockMatch], item: AlertItem
) -> tuple[Optional[SherlockMatch], Routed]:
    """Stateful-map step, keyed by objectId: the state is the object's Sherlock answer.

    Asked once per object (at its first alert's position). A failed call is not
    cached and the alert becomes a dead letter, so a replay can retry it.
    """
    if cached is None:
        cand = item.alert["candidate"]
        try:
            cached = client.position(float(cand["ra"]), float(cand["dec"]))
        except SherlockError as exc:
            return None, dead_letter(
                "sherlock", f"sherlock_unavailable: {exc}", item.origin,
                candid=item.alert.get("candid"), object_id=item.alert.get("objectId"), payload=item.payload,
            )
    return cached, replace(item, sherlock=cached)


def kept_by_sherlock(item: AlertItem) -> bool:
    """False for alerts Sherlock calls AGN or VS (they never reach the table)."""
    return item.sherlock is None or not item.sherlock.dropped


def sherlock_class(item: AlertItem) -> str:
    return str(item.sherlock.classification if item.sherlock else None)


def count_drops(count: Optional[int], _item: AlertItem) -> tuple[int, int]:
    count = (count or 0) + 1
    return count, count


def log_drop_count(step_id: str, key_count: tuple[str, int]) -> None:
    cls, count = key_count
    log.info("dropped by Sherlock: %s alert #%d", cls, count)


# ---------------------------------------------------------------- features


def feature_row(ebv_lookup, item: AlertItem) -> Union[dict, DeadLetter]:
    """Map step: the alert's feature row, or a dead letter if it cannot be computed."""
    alert = item.alert
    try:
        cand = alert["candidate"]
        ebv = ebv_or_nan(ebv_lookup, float(cand["ra"]), float(cand["dec"]))
        sep = item.sherlock.sep_arcsec if item.sherlock is not None else None
        row = alert_features(alert, sherlock=sep, ebv=ebv)
        row.update(dict.fromkeys(item.unavailable, math.nan))
        return row
    except Exception as exc:  # a bad alert must not stop the flow
        return dead_letter(
            "features", f"features_failed: {type(exc).__name__}: {exc}", item.origin,
            candid=alert.get("candid"), object_id=alert.get("objectId"), payload=item.payload,
        )


def is_row(item: Union[dict, DeadLetter]) -> bool:
    return isinstance(item, dict)


def candid_key(row: dict) -> str:
    return str(row["candid"])


def letter_key(letter: DeadLetter) -> str:
    return "deadletters"


# ---------------------------------------------------------------- Parquet output


PARQUET_SCHEMA = pa.schema(
    [pa.field("candid", pa.int64(), nullable=False), pa.field("objectId", pa.string())]
    + [pa.field(c, pa.float64()) for c in FEATURE_COLUMNS]
)


def rows_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Feature rows as an Arrow table in the dataset's fixed schema (NaN kept).

    Written with pandas metadata naming candid as the index, so that
    `pd.read_parquet(out_dir)` comes back indexed by candid.
    """
    return pa.Table.from_pandas(rows_to_frame(list(rows)), schema=PARQUET_SCHEMA, preserve_index=True)


def existing_candids(out_dir: Path) -> set[int]:
    """Candids already in the dataset (read from the candid column only)."""
    files = sorted(p for p in Path(out_dir).glob("*.parquet") if not p.name.startswith((".", "_")))
    seen: set[int] = set()
    for path in files:
        seen.update(pq.read_table(path, columns=["candid"]).column("candid").to_pylist())
    return seen


def write_rows(out_dir: Path, part: str, rows: list[Mapping[str, Any]]) -> Path:
    """One new Parquet file in the dataset, written under a hidden name then renamed
    so that readers never see half a file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    final = out_dir / f"{part}-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = out_dir / f".{final.name}.tmp"
    try:
        pq.write_table(rows_table(rows), tmp)
        os.replace(tmp, final)
    except OSError as exc:  # a full or read-only disk: name the dataset (operators/runtime/exits.py)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(exc.errno, os.strerror(exc.errno) if exc.errno else str(exc), str(out_dir)) from exc
    return final


class _ParquetPartition(StatefulSinkPartition[dict, None]):
    def __init__(self, out_dir: Path, part: str, index: int, count: int,
                 on_write: Callable[[int, int], None] = lambda written, skipped: None):
        self._dir, self._part, self._on_write = out_dir, part, on_write
        # Every run starts from what is on disk: replays add nothing twice.
        self._seen = {c for c in existing_candids(out_dir) if c % count == index}

    def write_batch(self, items: list[dict]) -> None:
        fresh = []
        for row in items:
            if row["candid"] not in self._seen:
                self._seen.add(row["candid"])
                fresh.append(row)
        if fresh:
            write_rows(self._dir, self._part, fresh)
        self._on_write(len(fresh), len(items) - len(fresh))

    def snapshot(self) -> None:
        return None


class ParquetDatasetSink(FixedPartitionedSink[dict, None]):
    """Append feature rows to a Parquet dataset directory, once per candid.

    Items are `(str(candid), row)`. A candid always lands in partition
    `candid % partitions`, each partition remembering the candids it holds, so
    a replayed alert is written only once. Read back with
    `pd.read_parquet(out_dir)` (indexed by candid).
    """

    def __init__(self, out_dir: Path | str, partitions: int = 4,
                 on_write: Callable[[int, int], None] = lambda written, skipped: None):
        self._dir = Path(out_dir)
        self._n = partitions
        self._on_write = on_write  # (rows written, rows skipped as already there) per batch

    def list_parts(self) -> list[str]:
        return [f"part{i:02d}" for i in range(self._n)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key) % self._n

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ParquetPartition:
        return _ParquetPartition(self._dir, for_part, int(for_part[4:]), self._n, self._on_write)


def read_features(out_dir: Path | str) -> pd.DataFrame:
    """The dataset as one DataFrame indexed by candid (sorted), for checks and training."""
    return pd.read_parquet(out_dir).sort_index()
