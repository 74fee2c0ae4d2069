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
import threading
import zlib
from dataclasses import dataclass, field
from typing import Optional, Union

import fastavro
from cachetools import LRUCache
from cramjam import snappy

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


def _decode_avro_reader(payload: bytes) -> dict:
    """The single record of an Avro container, with fastavro's own container reader
    (parses the schema in the header again for every message)."""
    records = list(fastavro.reader(io.BytesIO(payload)))
    if len(records) != 1:
        raise ValueError(f"not one record: the container holds {len(records)}")
    return records[0]


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """An Avro long (zig-zag varint) at `pos`: (value, next position)."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7


class _WriterSchemas:
    """Parsed writer schemas and codecs, keyed by the container header's metadata bytes
    (least recently used dropped beyond `size`: junk headers cannot pin the cache)."""

    def __init__(self, size: int = 32):
        self._cache: LRUCache = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    def get(self, meta: bytes, payload: bytes) -> tuple:
        with self._lock:
            hit = self._cache.get(meta)
            if hit is not None:
                return hit
        reader = fastavro.reader(io.BytesIO(payload))  # raises on a bad header: the fallback says why
        hit = (fastavro.parse_schema(reader.writer_schema), reader.codec)
        with self._lock:
            self._cache[meta] = hit
        return hit


_SCHEMAS = _WriterSchemas()


def _container_header(payload: bytes) -> tuple[bytes, dict, int]:
    """An Avro container's header: (metadata bytes, metadata map, position after the sync marker)."""
    if payload[:4] != b"Obj\x01":
        raise ValueError("not an Avro container")
    pos, meta = 4, {}
    while True:  # the metadata map, in blocks
        count, pos = _read_long(payload, pos)
        if count == 0:
            break
        if count < 0:
            count = -count
            _, pos = _read_long(payload, pos)  # block size in bytes
        for _ in range(count):
            key_len, pos = _read_long(payload, pos)
            key, pos = payload[pos:pos + key_len], pos + key_len
            value_len, pos = _read_long(payload, pos)
            if key_len < 0 or value_len < 0:
                raise ValueError("negative length")
            meta[key], pos = payload[pos:pos + value_len], pos + value_len
    return payload[4:pos], meta, pos + 16


# Snappy expands at most ~21x (a 3-byte copy tag gives 64 bytes). A block declaring more
# is corrupt, and decompressing it first would allocate what it declares: 9 junk bytes
# can ask for 4 GB and abort the process (cramjam aborts when the allocation fails).
SNAPPY_MAX_EXPANSION = 32


def _check_block_sizes(payload: bytes) -> None:
    """Refuse a container whose Snappy blocks declare more bytes than they can hold,
    before any decoder allocates them."""
    try:
        _, meta, pos = _container_header(payload)
    except (ValueError, IndexError):
        return  # not a container header we can read: the decoders say why
    if meta.get(b"avro.codec") != b"snappy":
        return
    while pos < len(payload):
        try:
            _, pos = _read_long(payload, pos)
            size, pos = _read_long(payload, pos)
            declared, _ = _read_uvarint(payload, pos)
        except IndexError:
            return
        if size >= 0 and declared > SNAPPY_MAX_EXPANSION * size + 64:
            raise ValueError(f"corrupt Snappy block: declares {declared} bytes from {size}")
        pos += max(size, 0) + 16


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """An unsigned little-endian base-128 varint (Snappy's uncompressed length)."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80 or shift > 63:
            return value, pos
        shift += 7


def _decode_avro_cached(payload: bytes) -> dict:
    """The fast path of `decode_avro`: one block holding one record, its writer schema
    parsed once per distinct header. Raises on anything else (the caller falls back)."""
    meta, _, pos = _container_header(payload)
    sync = payload[pos - 16:pos]
    schema, codec = _SCHEMAS.get(meta, payload)
    count, pos = _read_long(payload, pos)
    size, pos = _read_long(payload, pos)
    data = payload[pos:pos + size]
    if count != 1 or size < 0 or len(data) != size or len(sync) != 16 or payload[pos + size:] != sync:
        raise ValueError("not one block of one record")
    if codec == "snappy":
        raw = bytes(snappy.decompress_raw(data[:-4]))  # the CRC is not checked, as fastavro does
    elif codec == "null":
        raw = data
    elif codec == "deflate":
        raw = zlib.decompress(data, -15)
    else:
        raise ValueError(f"codec {codec}")
    buf = io.BytesIO(raw)
    record = fastavro.schemaless_reader(buf, schema)
    if buf.tell() != len(raw):
        raise ValueError("bytes left after the record")
    return record


def decode_avro(payload: bytes) -> dict:
    """The single record of a BOOM Avro container.

    BOOM sends one container per alert, each with its schema as JSON in the header;
    fastavro's reader parses and compiles that schema for every message (~40% of
    the parse step). The common shape (one block, one record) is decoded with the
    writer schema parsed once per distinct header; anything else goes through
    fastavro's reader, so what is refused and why is exactly as before."""
    _check_block_sizes(payload)
    try:
        return _decode_avro_cached(payload)
    except Exception:
        return _decode_avro_reader(payload)


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
