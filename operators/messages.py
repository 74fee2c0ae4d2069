"""Parse BOOM filter-result messages.

BOOM's filter workers publish one Avro container (schema inside, Snappy
compressed) per alert to `{SURVEY}_alerts_results`, with `candid`, `objectId`,
`jd`, `ra`, `dec`, `survey`, `filters` (`filter_id`, optionally `filter_name`,
`passed_at`, `annotations`), `classifications`, `photometry` and the three
cutouts (see boom-astro/boom `src/filter/base.rs`).

Input: a Kafka message (bytewax `KafkaSourceMessage`). Output: a
`FilterResult`, or a `DeadLetter` naming what was wrong.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Optional, Union

import fastavro

from operators.deadletter import DeadLetter, Origin, dead_letter


@dataclass(frozen=True)
class FilterResult:
    candid: int
    objectId: str
    jd: float
    ra: float
    dec: float
    filters: frozenset[str]  # names and ids of the BOOM filters the alert passed
    origin: Origin
    cutout_template: Optional[bytes] = None  # kept only when the model needs a stamp
    # The raw message, kept until the alert is written or dead-lettered, so that a dead
    # letter from any later stage can be replayed (`python -m dataflows replay-dead-letters`).
    payload: Optional[bytes] = field(default=None, repr=False, compare=False)

    def passed(self, filter_name: str) -> bool:
        return filter_name in self.filters


def origin_of(msg) -> Origin:
    """Topic/partition/offset/append time of a `KafkaSourceMessage`."""
    ts = getattr(msg, "timestamp", None)
    ts_ms = ts[1] if ts and len(ts) == 2 and ts[0] != 0 else None
    return Origin(
        topic=getattr(msg, "topic", None),
        partition=getattr(msg, "partition", None),
        offset=getattr(msg, "offset", None),
        timestamp_ms=ts_ms,
    )


def _field(record: dict, name: str, kind: type):
    value = record.get(name)
    if value is None:
        raise ValueError(f"missing field: {name}")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"wrong type: {name} is not finite")
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str) and value:
        return value
    raise ValueError(f"wrong type: {name} should be {kind.__name__}, got {type(value).__name__}")


def parse_record(record: dict, origin: Origin, keep_template: bool = False,
                 payload: Optional[bytes] = None) -> FilterResult:
    """Validate one decoded record; raises ValueError with a short reason."""
    if not isinstance(record, dict):
        raise ValueError("wrong type: record is not a mapping")
    filters = record.get("filters")
    if not isinstance(filters, list):
        raise ValueError("missing field: filters")
    names: set[str] = set()
    for f in filters:
        if not isinstance(f, dict):
            raise ValueError("wrong type: filters item is not a record")
        for key in ("filter_name", "filter_id"):
            if isinstance(f.get(key), (str, int)) and not isinstance(f.get(key), bool):
                names.add(str(f[key]))
    template = record.get("cutoutTemplate") if keep_template else None
    return FilterResult(
        candid=_field(record, "candid", int),
        objectId=_field(record, "objectId", str),
        jd=_field(record, "jd", float),
        ra=_field(record, "ra", float),
        dec=_field(record, "dec", float),
        filters=frozenset(names),
        origin=origin,
        cutout_template=template if isinstance(template, bytes) and template else None,
        payload=payload,
    )


def decode_avro(payload: bytes) -> dict:
    """The single record of a BOOM Avro container."""
    records = list(fastavro.reader(io.BytesIO(payload)))
    if len(records) != 1:
        raise ValueError(f"not one record: the container holds {len(records)}")
    return records[0]


def parse_message(msg, keep_template: bool = False) -> Union[FilterResult, DeadLetter]:
    """Kafka message → `FilterResult`, or a dead letter saying why not."""
    origin = origin_of(msg)
    payload = getattr(msg, "value", None)
    if not isinstance(payload, (bytes, bytearray)) or not payload:
        return dead_letter("parse", "empty message", origin)
    payload = bytes(payload)
    try:
        record = decode_avro(payload)
    except Exception as exc:  # any decoding failure is the message's fault
        return dead_letter("parse", f"undecodable Avro: {type(exc).__name__}: {exc}"[:300], origin, payload=payload)
    try:
        return parse_record(record, origin, keep_template, payload)
    except ValueError as exc:
        rec = record if isinstance(record, dict) else {}
        return dead_letter("parse", str(exc), origin, rec.get("candid"), rec.get("objectId"), payload)
