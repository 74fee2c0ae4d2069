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
import json
import math
import threading
import zlib
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Optional, Union

import fastavro
from cachetools import LRUCache
from cramjam import snappy

from operators.io.deadletter import DeadLetter, Origin, dead_letter


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


class CorruptContainer(ValueError):
    """The container's bytes are damaged (a checksum or a declared size says so): refused
    before any decoder reads them."""


def _decode_avro_reader(payload: bytes) -> dict:
    """The single record of an Avro container that the fast path does not take, with
    fastavro's pure-Python container reader. Its compiled reader preallocates an array
    from the count the bytes declare, so one damaged byte can ask for tens of GB (seen:
    the process killed at 24 GB); the pure-Python one appends item by item and stops at
    the end of the data. Containers of this shape are rare, so its speed does not matter."""
    from fastavro import _read_py

    records = list(_read_py.reader(io.BytesIO(payload)))
    if len(records) != 1:
        raise ValueError(f"not one record: the container holds {len(records)}")
    return records[0]


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """An unsigned little-endian base-128 varint at `pos` (Snappy's uncompressed length,
    and the bits of an Avro long): (value, next position). Raises IndexError when cut."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80 or shift > 63:
            return value, pos
        shift += 7


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """An Avro long (zig-zag varint) at `pos`: (value, next position)."""
    value, pos = _read_uvarint(buf, pos)
    return (value >> 1) ^ -(value & 1), pos


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
        full = reader.writer_schema
        hit = (fastavro.parse_schema(full), reader.codec,
               {needed: _prefix_schema(full, needed) for needed in (NEEDED, NEEDED_WITH_TEMPLATE)})
        with self._lock:
            self._cache[meta] = hit
        return hit


# The fields `parse_record` reads. BOOM's record puts them first (candid … filters), then
# classifications, photometry and the three cutouts (`cutoutTemplate` second of those).
NEEDED = frozenset({"candid", "objectId", "jd", "ra", "dec", "filters"})
NEEDED_WITH_TEMPLATE = NEEDED | {"cutoutTemplate"}


def _prefix_schema(schema: dict, needed: frozenset):
    """The writer schema cut after the last field in `needed`, parsed; None when that
    saves nothing or a needed field is absent (the whole record is read then).

    Avro writes a record's fields in order with no index, so the leading fields decode
    the same with the cut schema and the rest of the block is simply not read: the
    photometry list alone is ~60% of the decoding time of a BOOM message, and the flow
    takes the light curve from BOOM's database, not from the message. The container's
    checks (sync markers, Snappy length and CRC32) still cover the whole block."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    names = [f.get("name") for f in schema.get("fields", [])]
    if not needed <= set(names):
        return None
    last = max(names.index(n) for n in needed)
    if last == len(names) - 1:
        return None
    return fastavro.parse_schema({**schema, "fields": schema["fields"][:last + 1]})


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


def _min_size(t, named: dict, seen: frozenset = frozenset()) -> int:
    """Fewest bytes a value of Avro type `t` (parsed JSON) can take (0 or more)."""
    if isinstance(t, str):
        if t == "null":
            return 0
        if t in named and t not in seen:
            return _min_size(named[t], named, seen | {t})
        return 1  # every other primitive, and a name we cannot resolve
    if isinstance(t, list):
        return 1  # union: the branch index
    if not isinstance(t, dict):
        return 1
    kind = t.get("type")
    if isinstance(t.get("name"), str):
        named.setdefault(t["name"], t)
    if kind == "record" or kind == "error":
        fields = t.get("fields")
        if not isinstance(fields, list):
            return 0
        return sum(_min_size(f.get("type"), named, seen) for f in fields if isinstance(f, dict))
    if kind == "fixed":
        return t.get("size", 0) if isinstance(t.get("size"), int) else 0
    if kind in ("array", "map", "enum"):
        return 1
    return _min_size(kind, named, seen)


def _zero_size_items(t, named: dict) -> bool:
    """Whether some array or map of `t` holds items that can take no bytes: its declared
    count, not the data, then decides how many items a reader makes (a damaged byte in
    the schema, e.g. `"fields"` -> `"Jields"`, made one ask for tens of GB)."""
    if isinstance(t, list):
        return any(_zero_size_items(b, named) for b in t)
    if not isinstance(t, dict):
        return False
    _min_size(t, named)  # registers the names it defines
    kind = t.get("type")
    if kind == "array":
        return _min_size(t.get("items"), named) == 0 or _zero_size_items(t.get("items"), named)
    if kind == "map":
        return _min_size(t.get("values"), named) == 0 or _zero_size_items(t.get("values"), named)
    if kind in ("record", "error"):
        return any(_zero_size_items(f.get("type"), named) for f in t.get("fields") or [] if isinstance(f, dict))
    return isinstance(kind, (dict, list)) and _zero_size_items(kind, named)


@lru_cache(maxsize=32)
def _schema_problem(schema_json: bytes) -> Optional[str]:
    try:
        schema = json.loads(schema_json)
    except ValueError:
        return None  # the decoders say why
    if _zero_size_items(schema, {}):
        return "corrupt writer schema: an array or map of items that take no bytes"
    return None


def _check_container(payload: bytes) -> Optional[tuple[bytes, dict, int]]:
    """Refuse a container whose writer schema lets a count alone allocate memory, whose
    blocks do not each end with the sync marker up to the last byte (truncated, or junk
    after it), or whose Snappy blocks declare more bytes than they can hold — before any
    decoder reads it. Returns its header (as `_container_header`), None when unreadable."""
    try:
        header = _container_header(payload)
    except (ValueError, IndexError):
        return None  # not a container header we can read: the decoders say why
    _, meta, pos = header
    problem = _schema_problem(meta.get(b"avro.schema", b""))
    if problem:
        raise CorruptContainer(problem)
    sync, snappy_blocks = payload[pos - 16:pos], meta.get(b"avro.codec") == b"snappy"
    while pos < len(payload):
        try:
            _, pos = _read_long(payload, pos)
            size, pos = _read_long(payload, pos)
            declared = _read_uvarint(payload, pos)[0] if snappy_blocks and size > 0 else 0
        except IndexError:
            raise CorruptContainer("truncated Avro container: a block header is cut") from None
        if size < 0 or payload[pos + size:pos + size + 16] != sync:
            raise CorruptContainer("damaged or truncated Avro container: a block does not end with the sync marker")
        if declared > SNAPPY_MAX_EXPANSION * size + 64:
            raise CorruptContainer(f"corrupt Snappy block: declares {declared} bytes from {size}")
        pos += size + 16
    return header


def _decode_avro_cached(payload: bytes, header: Optional[tuple[bytes, dict, int]] = None,
                       fields: Optional[frozenset] = None) -> dict:
    """The fast path of `decode_avro`: one block holding one record, its writer schema
    parsed once per distinct header (`header`: the already parsed one, if any). With
    `fields` (`NEEDED` or `NEEDED_WITH_TEMPLATE`), only the record's leading fields up to
    the last of them are decoded (`_prefix_schema`). Raises on anything else (the caller
    falls back)."""
    meta, _, pos = header or _container_header(payload)
    sync = payload[pos - 16:pos]
    schema, codec, prefixes = _SCHEMAS.get(meta, payload)
    prefix = prefixes.get(fields) if fields is not None else None
    count, pos = _read_long(payload, pos)
    size, pos = _read_long(payload, pos)
    data = payload[pos:pos + size]
    if count != 1 or size < 0 or len(data) != size or len(sync) != 16 or payload[pos + size:] != sync:
        raise ValueError("not one block of one record")
    if codec == "snappy":
        raw = bytes(snappy.decompress_raw(data[:-4]))
        # Avro follows each Snappy block with the CRC32 of its uncompressed bytes. fastavro does
        # not check it; here it keeps damaged bytes away from the compiled reader (see above).
        if len(data) < 4 or zlib.crc32(raw) != int.from_bytes(data[-4:], "big"):
            raise CorruptContainer("corrupt Snappy block: checksum mismatch")
    elif codec == "null":
        raw = data
    elif codec == "deflate":
        raw = zlib.decompress(data, -15)
    else:
        raise ValueError(f"codec {codec}")
    buf = io.BytesIO(raw)
    record = fastavro.schemaless_reader(buf, prefix or schema)
    if prefix is None and buf.tell() != len(raw):
        raise ValueError("bytes left after the record")
    return record


def decode_avro(payload: bytes, fields: Optional[frozenset] = None) -> dict:
    """The single record of a BOOM Avro container.

    BOOM sends one container per alert, each with its schema as JSON in the header;
    fastavro's reader parses and compiles that schema for every message (~40% of
    the parse step). The common shape (one block, one record) is decoded with the
    writer schema parsed once per distinct header; other well-formed shapes go
    through fastavro's pure-Python reader. Damaged containers are refused first
    (`_check_container`, `CorruptContainer`). `fields`: see `_decode_avro_cached`."""
    header = _check_container(payload)
    try:
        return _decode_avro_cached(payload, header, fields)
    except CorruptContainer:
        raise
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
        record = decode_avro(payload, NEEDED_WITH_TEMPLATE if keep_template else NEEDED)
    except Exception as exc:  # any decoding failure is the message's fault
        return dead_letter("parse", f"undecodable Avro: {type(exc).__name__}: {exc}"[:300], origin, payload=payload)
    try:
        return parse_record(record, origin, keep_template, payload)
    except ValueError as exc:
        rec = record if isinstance(record, dict) else {}
        return dead_letter("parse", str(exc), origin, rec.get("candid"), rec.get("objectId"), payload)
