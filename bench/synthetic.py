"""The synthetic workload of the flow benchmark (`bench/bench_flow.py`): messages, store and source.

- `Workload`: N filter-result messages synthesized from the bundled real ZTF
  alerts: message `i` is template `template_of(i)` (a hash of `i` over the K
  sample alerts that have both BOOM documents) re-encoded with candid `BASE + i`, its `filters` field
  rewritten so that ~90% pass the flow's filter (`passes(i)`), same Avro schema
  and codec as the original message. Messages are made one at a time
  (`message(i)`, ~15 µs: each template is Avro-encoded and Snappy-compressed
  once; a message is the candid, the first field, as a Snappy literal before the
  template's compressed rest, with the CRC updated arithmetically), so
  1,000,000 are never held at once. `check()` verifies them against fastavro.
  With `full_every=K > 1` only every K-th message is whole; the others are slim
  (no photometry, empty cutouts: ~0.3 kB instead of ~41 kB) so that a broker
  keeping every message in memory can hold millions (the soak); the flow takes
  the light curve from the store either way, so the work per alert is the same.
  With `objects=M`, alerts belong to ~M synthetic objects (`ZTF26` + 7 letters, the
  template's index in the name, so the store maps it back), not to the K sample
  objects: per-object state downstream (Fritz's queue and caches) sees M objects.
- `SynthStore`: the store contract (`fetch`) over synthesized candids: candid
  `BASE + i` maps back to its template's documents, so no per-alert document
  is stored.
- `SynthSource`: a finite bytewax source of the workload, P partitions
  (message `i` in partition `i % P`), Kafka-shaped messages.
"""

from __future__ import annotations

import io
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fastavro  # noqa: E402

from bench.measure import STATS, Stats  # noqa: E402
from operators.samples.load import SYNTHETIC_CANDID_BASE, read_sample  # noqa: E402
from operators.oracle.store import Collections, Documents, _project  # noqa: E402
from operators.runtime.routing import mix  # noqa: E402

SYNC = b"alertflow-bench!"  # 16-byte Avro sync marker of synthesized messages
OTHER_FILTER = "ztf_other_filter"


# ---------------------------------------------------------------- the workload


def _varint(n: int) -> bytes:
    """An Avro long (zig-zag varint)."""
    return _uvarint((n << 1) ^ (n >> 63))


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def object_name(n: int) -> str:
    """Synthetic object `n` as a ZTF-like id: `ZTF26` + 7 letters (base 26)."""
    out = []
    for _ in range(7):
        n, r = divmod(n, 26)
        out.append(_LETTERS[r])
    return "ZTF26" + "".join(reversed(out))


def object_number(name: str) -> int:
    n = 0
    for ch in name[5:]:
        n = n * 26 + _LETTERS.index(ch)
    return n


def _passes(i: int) -> bool:
    """~90% of messages pass, spread evenly (a multiplicative hash of the index)."""
    # Mixed (high bits of a Fibonacci hash): the low bits of `i * odd` keep i's parity, which put
    # every failing message in the even partition of a 2-partition run (work split 4:5).
    return mix(i) % 10 != 0


def _string(text: str) -> bytes:
    """An Avro string."""
    raw = text.encode()
    return _varint(len(raw)) + raw


def _uvarint(n: int) -> bytes:
    """An unsigned LEB128 varint (snappy's length header)."""
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _split_uvarint(data: bytes) -> tuple[int, bytes]:
    value = shift = 0
    for k, byte in enumerate(data):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, data[k + 1:]
        shift += 7
    raise ValueError("truncated varint")


class _Crc:
    """zlib.crc32(tail, start) for any 32-bit `start`, without reading `tail` again.

    The CRC of fixed data is an affine function of the starting value over GF(2),
    so four 256-entry tables (one per byte of `start`) give it in four lookups."""

    def __init__(self, tail: bytes):
        zero = zlib.crc32(tail, 0)
        basis = [zlib.crc32(tail, 1 << b) ^ zero for b in range(32)]
        self.zero = zero
        self.tables = []
        for byte in range(4):
            table = [0] * 256
            for v in range(1, 256):
                low = v & -v
                table[v] = table[v ^ low] ^ basis[8 * byte + low.bit_length() - 1]
            self.tables.append(table)

    def __call__(self, start: int) -> int:
        t0, t1, t2, t3 = self.tables
        return self.zero ^ t0[start & 255] ^ t1[(start >> 8) & 255] ^ t2[(start >> 16) & 255] ^ t3[start >> 24]


@dataclass(frozen=True)
class _Variant:
    tail: bytes  # datum bytes after the candid
    snappy_elements: bytes  # the tail snappy-compressed, without its length header
    crc: _Crc


@dataclass(frozen=True)
class _Tmpl:
    candid: int
    objectId: str
    header: bytes  # Avro container header (schema, codec, sync marker)
    codec: str
    variants: dict  # passes -> _Variant


class Workload:
    """Synthesized filter-result messages and the documents they need (see module doc)."""

    def __init__(self, sample_dir: Optional[Path] = None, collections: Optional[Collections] = None,
                 filter_name: Optional[str] = None, base: int = SYNTHETIC_CANDID_BASE, full_every: int = 1,
                 objects: Optional[int] = None):
        from operators.oracle.surveys import ZTF

        if full_every < 1:
            raise ValueError("full_every must be >= 1")
        self.full_every = full_every
        self.objects = objects
        sample = read_sample(sample_dir or ZTF.sample_dir, collections or ZTF.collections)
        self.filter_name = filter_name or ZTF.filter_name
        self.base = base
        alerts = {int(d["_id"]): d for d in sample.alerts}
        aux = {str(d["_id"]): d for d in sample.aux}
        from cramjam import snappy

        self.templates: list[_Tmpl] = []
        self.alert_docs: list[dict] = []
        self.aux_docs: dict[str, dict] = {}
        for value in sample.messages:
            try:
                reader = fastavro.reader(io.BytesIO(value))
                records = list(reader)
            except Exception:
                continue  # the sample's malformed messages are not templates
            if len(records) != 1 or records[0].get("candid") not in alerts or records[0].get("objectId") not in aux:
                continue  # the orphan (no aux document) is not a template either
            rec = records[0]
            schema = fastavro.parse_schema(reader.writer_schema)
            if schema["fields"][0]["name"] != "candid" or reader.codec not in ("snappy", "null", "deflate"):
                raise RuntimeError("unexpected message layout: candid must be the first field")
            metadata = {k: v for k, v in reader.metadata.items() if not k.startswith("avro.")}
            head = io.BytesIO()
            fastavro.writer(head, schema, [], codec=reader.codec, metadata=metadata or None, sync_marker=SYNC)
            tail = {}
            for passes, slim in ((p, s) for p in (True, False) for s in ((False, True) if full_every > 1 else (False,))):
                name = self.filter_name if passes else OTHER_FILTER
                first = (rec.get("filters") or [{}])[0]
                filters = [{"filter_id": name, "filter_name": name,
                            "passed_at": first.get("passed_at", rec["jd"]),
                            "annotations": first.get("annotations", "{}")}]
                slimmed = {"photometry": [], "cutoutScience": b"", "cutoutTemplate": b"", "cutoutDifference": b""}
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, schema, {**rec, "filters": filters, **(slimmed if slim else {})})
                raw = buf.getvalue()
                prefix = _varint(rec["candid"])
                if objects:  # the objectId (the second field) goes into each message's head too
                    prefix += _string(rec["objectId"])
                assert raw.startswith(prefix)
                rest = raw[len(prefix):]
                length, elements = _split_uvarint(bytes(snappy.compress_raw(rest)))
                assert length == len(rest)
                tail[passes, slim] = _Variant(rest, elements, _Crc(rest))
            self.templates.append(_Tmpl(rec["candid"], rec["objectId"], head.getvalue(), reader.codec, tail))
            self.alert_docs.append(alerts[rec["candid"]])
            self.aux_docs[rec["objectId"]] = aux[rec["objectId"]]
        if not self.templates:
            raise RuntimeError("no usable template message in the sample")
        self._groups = max(1, (objects or 0) // len(self.templates))

    def __len__(self) -> int:
        return len(self.templates)

    def template_of(self, i: int) -> int:
        """A hash of the index, not `i % K`: the flow shards by candid % ORACLE_SHARDS, and
        `i % K` would give each shard only some templates (light-curve lengths)."""
        return (((i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 40) % len(self.templates)

    def candid(self, i: int) -> int:
        return self.base + i

    def object_id(self, i: int) -> str:
        """Message `i`'s objectId: its template's, or with `objects` one of ~M synthetic ones whose
        number carries the template (n % K), so its light curve is the template's."""
        t = self.template_of(i)
        if not self.objects:
            return self.templates[t].objectId
        h = (i * 0xD6E8FEB86659FD93) & 0xFFFFFFFFFFFFFFFF  # independent of template_of's hash
        h = ((h ^ (h >> 32)) * 0xD6E8FEB86659FD93) & 0xFFFFFFFFFFFFFFFF
        group = (h >> 32) % self._groups
        return object_name(group * len(self.templates) + t)

    def object_names(self) -> list[str]:
        """Every object's id: the synthetic ones with `objects`, else the templates'."""
        if not self.objects:
            return [t.objectId for t in self.templates]
        return [object_name(k) for k in range(self._groups * len(self.templates))]

    def template_of_object(self, object_id: str) -> int:
        return object_number(object_id) % len(self.templates) if self.objects else next(
            k for k, t in enumerate(self.templates) if t.objectId == object_id)

    def _head(self, i: int) -> bytes:
        """The datum's bytes before the template's tail: the candid (and the objectId with `objects`)."""
        return _varint(self.base + i) + (_string(self.object_id(i)) if self.objects else b"")

    def index_of(self, candid: int) -> int:
        return candid - self.base

    passes = staticmethod(_passes)

    def _variant(self, t: _Tmpl, i: int) -> _Variant:
        return t.variants[_passes(i), self.full_every > 1 and i % self.full_every != 0]

    def message(self, i: int) -> bytes:
        """Message `i`: its template's Avro container with candid `base + i` (same schema and codec).

        Snappy: the block is the candid as a literal followed by the template's
        compressed tail (its back-references stay within the tail, so the stream
        is valid), and the CRC comes from `_Crc`: no per-message compression."""
        t = self.templates[self.template_of(i)]
        v = self._variant(t, i)
        prefix = self._head(i)
        if t.codec == "snappy":
            crc = v.crc(zlib.crc32(prefix)).to_bytes(4, "big")
            size = len(_uvarint(len(prefix) + len(v.tail))) + 1 + len(prefix) + len(v.snappy_elements) + 4
            return b"".join((t.header, b"\x02", _varint(size), _uvarint(len(prefix) + len(v.tail)),
                             bytes(((len(prefix) - 1) << 2,)), prefix, v.snappy_elements, crc, SYNC))
        raw = prefix + v.tail
        if t.codec == "deflate":
            c = zlib.compressobj(wbits=-15)
            data = c.compress(raw) + c.flush()
        else:
            data = raw
        return b"".join((t.header, _varint(1), _varint(len(data)), data, SYNC))

    def check(self, count: int = 200) -> None:
        """Self-check: messages decode (fastavro, CRC checked) to the template record with the
        new candid and the wanted filter outcome, and re-encode identically with fastavro."""
        for i in list(range(min(count, 3 * len(self)))) + [10**6 + 7, 10**9 + 3]:
            reader = fastavro.reader(io.BytesIO(self.message(i)))
            records = list(reader)
            assert len(records) == 1 and records[0]["candid"] == self.base + i, i
            names = {f.get("filter_name") or f["filter_id"] for f in records[0]["filters"]}
            assert (self.filter_name in names) == _passes(i), i
            t = self.templates[self.template_of(i)]
            assert records[0]["objectId"] == self.object_id(i)
            assert self.template_of_object(records[0]["objectId"]) == self.template_of(i)
            out = io.BytesIO()
            fastavro.schemaless_writer(out, fastavro.parse_schema(reader.writer_schema), records[0])
            assert out.getvalue() == self._head(i) + self._variant(t, i).tail, i
            if t.codec == "snappy":  # fastavro does not check the block CRC: do it here
                from cramjam import snappy

                msg = self.message(i)
                block = msg[len(t.header) + 1:-len(SYNC)]
                size, data = _split_uvarint(block)
                size = (size >> 1) ^ -(size & 1)
                assert len(data) == size, i
                raw = bytes(snappy.decompress_raw(data[:-4]))
                assert zlib.crc32(raw).to_bytes(4, "big") == data[-4:], i

    def alert_doc(self, i: int) -> dict:
        """The `ZTF_alerts` document of message `i` (the template's, under the new candid)."""
        doc = self.alert_docs[self.template_of(i)]
        candid = self.base + i
        out = {**doc, "_id": candid}
        if isinstance(doc.get("candidate"), dict):
            out["candidate"] = {**doc["candidate"], "candid": candid}
        return out

    def passing(self, n: int, start: int = 0) -> int:
        return sum(_passes(i) for i in range(start, start + n))


class SynthStore:
    """`AlertStore` over synthesized candids: each maps back to its template's documents
    (projected once, like `EmbeddedStore` projects), so no per-alert document is kept."""

    def __init__(self, workload: Workload, collections: Collections):
        self._w = workload
        self._alerts = [_project(d, collections.alert_fields) for d in workload.alert_docs]
        self._aux = {k: _project(d, collections.aux_fields) for k, d in workload.aux_docs.items()}

    def fetch(self, candids: list[int], object_ids: list[str], with_cutouts: bool) -> Documents:
        w, alerts = self._w, self._alerts
        found = {}
        for c in candids:
            i = w.index_of(c)
            if i >= 0:
                found[c] = {**alerts[w.template_of(i)], "_id": c}
        if w.objects:  # a synthetic object has its template's aux document
            names = [t.objectId for t in w.templates]
            aux = {k: {**self._aux[names[w.template_of_object(k)]], "_id": k} for k in object_ids
                   if k.startswith("ZTF26") and len(k) == 12}
        else:
            aux = {k: self._aux[k] for k in object_ids if k in self._aux}
        return Documents(alerts=found, aux=aux)

    def close(self) -> None:
        pass

# ---------------------------------------------------------------- the synthetic source


def _source_classes():
    from bytewax.connectors.kafka import KafkaSourceMessage
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    class _Part(StatefulSourcePartition):
        def __init__(self, workload: Workload, n: int, part: int, parts: int, batch: int, start: int,
                     stats: Stats, topic: str):
            self.w, self.n, self.part, self.parts, self.batch = workload, n, part, parts, batch
            self.next = start if start is not None else part
            self.stats, self.topic = stats, topic

        def next_batch(self):
            if self.next >= self.n:
                raise StopIteration()
            t0, c0 = time.perf_counter(), time.thread_time()
            if self.stats.first_in is None:
                self.stats.first_in = time.time()
                self.stats.cpu_first_in = Stats.cpu()
            idx = range(self.next, min(self.n, self.next + self.batch * self.parts), self.parts)
            now_ms = int(time.time() * 1e3)
            out = [KafkaSourceMessage(key=None, value=self.w.message(i), topic=self.topic, partition=self.part,
                                      offset=i // self.parts, timestamp=(1, now_ms)) for i in idx]
            self.next = idx[-1] + self.parts
            self.stats.add("source", time.perf_counter() - t0, len(out), time.thread_time() - c0)
            return out

        def snapshot(self):
            return self.next

    class SynthSource(FixedPartitionedSource):
        def __init__(self, workload: Workload, n: int, parts: int = 1, batch: int = 1000, stats: Stats = STATS):
            self.w, self.n, self.parts, self.batch, self.stats = workload, n, parts, batch, stats

        def list_parts(self):
            return [str(p) for p in range(self.parts)]

        def build_part(self, step_id, for_part, resume_state):
            return _Part(self.w, self.n, int(for_part), self.parts, self.batch, resume_state, self.stats,
                         "bench:ZTF_alerts_results")

    return SynthSource
