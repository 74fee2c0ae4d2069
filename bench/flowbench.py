"""Pieces of the flow benchmark (`bench/bench_flow.py`) that run inside flow processes.

- `Workload`: N filter-result messages synthesized from the bundled real ZTF
  alerts: message `i` is template `template_of(i)` (a hash of `i` over the K
  sample alerts that have both BOOM documents) re-encoded with candid `BASE + i`, its `filters` field
  rewritten so that ~90% pass the flow's filter (`passes(i)`), same Avro schema
  and codec as the original message. Messages are made one at a time
  (`message(i)`, ~15 µs: each template is Avro-encoded and Snappy-compressed
  once; a message is the candid, the first field, as a Snappy literal before the
  template's compressed rest, with the CRC updated arithmetically), so
  1,000,000 are never held at once. `check()` verifies them against fastavro.
- `SynthStore`: the store contract (`fetch`) over synthesized candids: candid
  `BASE + i` maps back to its template's documents, so no per-alert document
  is stored.
- `SynthSource`: a finite bytewax source of the workload, P partitions
  (message `i` in partition `i % P`), Kafka-shaped messages.
- `embedded_flow(...)`: the real ORACLE flow (`dataflows.oracle.build_flow`)
  over `SynthSource` + `SynthStore`, instrumented: per-stage times, first/last
  item times, RSS samples and peak RSS are written to `stats-PID.json` when the
  process exits. Run with `python -m bytewax.run "bench.flowbench:embedded_flow(...)"`.
- `baseline_main(...)`: the upstream per-message design (poll one, two
  `find_one`, one single-alert forward pass, one CSV append, one commit).

Nothing here changes or wraps the flow: stage times come from its own metrics
(`alertflow_stage_seconds`, read from the process's registry at exit), throughput
from the source's first message and the results CSV.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import os
import resource
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fastavro  # noqa: E402

from operators.samples.load import SYNTHETIC_CANDID_BASE, read_sample  # noqa: E402
from operators.oracle.store import Collections, Documents, _project  # noqa: E402

SYNC = b"alertflow-bench!"  # 16-byte Avro sync marker of synthesized messages
OTHER_FILTER = "ztf_other_filter"


# ---------------------------------------------------------------- process memory


def proc_status(pid: Optional[int] = None) -> dict[str, int]:
    """`VmRSS` (now) and `VmHWM` (peak) of a process in bytes; {} when it is gone.

    RSS from psutil. The peak is the kernel's high-water mark of this process
    (`getrusage`); psutil has none for another process, so there it is its RSS
    now, and callers keep the largest they sample."""
    import psutil

    try:
        rss = int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return {}
    if pid is None or pid == os.getpid():
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return {"VmRSS": rss, "VmHWM": max(peak, rss)}
    return {"VmRSS": rss, "VmHWM": rss}


# ---------------------------------------------------------------- the workload


def _varint(n: int) -> bytes:
    """An Avro long (zig-zag varint)."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _passes(i: int) -> bool:
    """~90% of messages pass, spread evenly (a multiplicative hash of the index)."""
    return ((i * 2654435761) & 0xFFFFFFFF) % 10 != 0


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
                 filter_name: Optional[str] = None, base: int = SYNTHETIC_CANDID_BASE):
        from operators.oracle.surveys import ZTF

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
            for passes in (True, False):
                name = self.filter_name if passes else OTHER_FILTER
                first = (rec.get("filters") or [{}])[0]
                filters = [{"filter_id": name, "filter_name": name,
                            "passed_at": first.get("passed_at", rec["jd"]),
                            "annotations": first.get("annotations", "{}")}]
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, schema, {**rec, "filters": filters})
                raw = buf.getvalue()
                prefix = _varint(rec["candid"])
                assert raw.startswith(prefix)
                rest = raw[len(prefix):]
                length, elements = _split_uvarint(bytes(snappy.compress_raw(rest)))
                assert length == len(rest)
                tail[passes] = _Variant(rest, elements, _Crc(rest))
            self.templates.append(_Tmpl(rec["candid"], rec["objectId"], head.getvalue(), reader.codec, tail))
            self.alert_docs.append(alerts[rec["candid"]])
            self.aux_docs[rec["objectId"]] = aux[rec["objectId"]]
        if not self.templates:
            raise RuntimeError("no usable template message in the sample")

    def __len__(self) -> int:
        return len(self.templates)

    def template_of(self, i: int) -> int:
        """A hash of the index, not `i % K`: the flow shards by candid % ORACLE_SHARDS, and
        `i % K` would give each shard only some templates (light-curve lengths)."""
        return (((i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 40) % len(self.templates)

    def candid(self, i: int) -> int:
        return self.base + i

    def index_of(self, candid: int) -> int:
        return candid - self.base

    passes = staticmethod(_passes)

    def message(self, i: int) -> bytes:
        """Message `i`: its template's Avro container with candid `base + i` (same schema and codec).

        Snappy: the block is the candid as a literal followed by the template's
        compressed tail (its back-references stay within the tail, so the stream
        is valid), and the CRC comes from `_Crc`: no per-message compression."""
        t = self.templates[self.template_of(i)]
        v = t.variants[_passes(i)]
        prefix = _varint(self.base + i)
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
            assert records[0]["objectId"] == t.objectId
            out = io.BytesIO()
            fastavro.schemaless_writer(out, fastavro.parse_schema(reader.writer_schema), records[0])
            assert out.getvalue() == _varint(self.base + i) + t.variants[_passes(i)].tail, i
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
        return Documents(alerts=found, aux={k: self._aux[k] for k in object_ids if k in self._aux})

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- instrumentation (inside a flow process)


class Stats:
    """Per-stage seconds, item counts, first/last item times, RSS samples of this process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = {}  # wall time per stage
        self.cpu_seconds: dict[str, float] = {}  # CPU time of the thread per stage
        self.counts: dict[str, int] = {}
        self.first_in: Optional[float] = None  # time.time() of the first message handed to the flow
        self.last_out: Optional[float] = None  # time.time() of the last CSV write
        self.rss: list[tuple[float, int, int]] = []  # (time, messages in, VmRSS)
        self.cpu_first_in: Optional[float] = None  # process CPU seconds at first_in

    @staticmethod
    def cpu() -> float:
        t = os.times()
        return t.user + t.system

    def add(self, stage: str, seconds: float, n: int = 0, cpu: float = 0.0) -> None:
        with self.lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + cpu
            self.counts[stage] = self.counts.get(stage, 0) + n

    def as_dict(self) -> dict:
        return {"pid": os.getpid(), "seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "counts": self.counts,
                "first_in": self.first_in, "last_out": self.last_out, "rss": self.rss,
                "cpu_first_in": self.cpu_first_in, "cpu_end": self.cpu(), "end": time.time(),
                **{k.lower(): v for k, v in proc_status().items()}}


STATS = Stats()


def flow_metrics(stats: Stats) -> None:
    """Copy the flow's own metrics into `stats` (called at exit; nothing in the flow is
    wrapped or patched): `alertflow_stage_seconds` sums per stage (enrich, inputs,
    model), the classified and written counts, and the time of the last row (the
    results CSV's modification time)."""
    from prometheus_client import REGISTRY

    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "alertflow_stage_seconds_sum":  # wall time only: no per-stage CPU split
                stage = sample.labels.get("stage", "?")
                stats.seconds[stage] = stats.seconds.get(stage, 0.0) + sample.value
            elif sample.name == "alertflow_classified_total":
                stats.counts["classified"] = stats.counts.get("classified", 0) + int(sample.value)
            elif sample.name == "alertflow_results_written_total":
                stats.counts["outputs"] = stats.counts.get("outputs", 0) + int(sample.value)
    csv_path = Path(os.environ["ALERTFLOW_RESULTS_DIR"]) / "oracle_ztf_results.csv"
    if csv_path.exists():
        stats.last_out = csv_path.stat().st_mtime


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


def _sampler(stats: Stats, out_dir: Path, every_s: float) -> None:
    """Every `every_s`: one RSS sample, and a status file the driver reads for its progress bar."""
    status = out_dir / f"status-{os.getpid()}.json"
    while True:
        with stats.lock:
            n_in = stats.counts.get("source", 0)
            rows = stats.counts.get("outputs", 0)
        rss = proc_status().get("VmRSS", 0)
        stats.rss.append((time.time(), n_in, rss))
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps({"in": n_in, "rows": rows, "rss": rss}))
        tmp.replace(status)
        time.sleep(every_s)


def embedded_flow(n: int, out_dir: str, parts: int = 1, sample_every_s: float = 1.0):
    """The ORACLE ZTF flow over `n` synthesized messages in `parts` partitions, instrumented.
    Writes `out_dir/stats-PID.json` at exit; results under `out_dir/results`."""
    out = Path(out_dir)
    os.environ.setdefault("ALERTFLOW_RESULTS_DIR", str(out / "results"))
    os.environ.setdefault("ALERTFLOW_LOGS_DIR", str(out / "logs"))
    for var in ("KAFKA_BROKERS", "MONGODB_URI", "BOOM_DATABASE__HOST"):
        os.environ.pop(var, None)
    from dataflows.oracle import build_flow
    from operators.oracle.surveys import ZTF

    workload = Workload()
    STATS.rss.append((time.time(), 0, proc_status().get("VmRSS", 0)))

    def write_stats():
        flow_metrics(STATS)
        (out / f"stats-{os.getpid()}.json").write_text(json.dumps(STATS.as_dict()))

    atexit.register(write_stats)
    threading.Thread(target=_sampler, args=(STATS, out, sample_every_s), daemon=True).start()
    source = _source_classes()(workload, n, parts)
    return build_flow(ZTF, source=source, store=SynthStore(workload, ZTF.collections))


# ---------------------------------------------------------------- the per-message baseline


def baseline_main(argv: list[str]) -> int:
    """The upstream design, one message at a time, against Kafka + MongoDB:
    poll one → decode → filter → find_one(alerts, _id) → find_one(aux, _id) →
    ztf_inputs → single-alert forward → CSV append → commit. Stops after
    `--max` messages or `--seconds`, whichever first; writes a JSON summary."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--mongodb-uri", required=True)
    ap.add_argument("--database", required=True)
    ap.add_argument("--max", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", choices=("sync", "async"), default="sync")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from confluent_kafka import Consumer
    from pymongo import MongoClient

    from models.oracle.loading import load_oracle
    from models.oracle.networks import predict_proba
    from operators.oracle.messages import decode_avro
    from operators.oracle.surveys import ZTF
    from operators.oracle.ztf_inputs import ztf_inputs

    torch.set_num_threads(1)
    model = load_oracle(ZTF.weights)
    nodes = model.taxonomy.nodes
    db = MongoClient(args.mongodb_uri)[args.database]
    alerts, aux = db[ZTF.collections.alerts], db[ZTF.collections.aux]
    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": f"baseline-{os.getpid()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([args.topic])
    out = Path(args.out)
    csv_path = out / "baseline_results.csv"
    seconds = dict.fromkeys(("poll", "parse", "find_alert", "find_aux", "inputs", "model", "csv", "commit"), 0.0)
    perf = time.perf_counter
    n_msgs = n_rows = 0
    started = None
    with csv_path.open("w", newline="") as f:
        f.write(",".join(["candid", "objectId", *nodes, "processed_at"]) + "\n")
        f.flush()
        while n_msgs < args.max and (started is None or perf() - started < args.seconds):
            t0 = perf()
            msg = consumer.poll(1.0)
            t1 = perf()
            if msg is None or msg.error() is not None:
                if started is not None:
                    seconds["poll"] += t1 - t0
                continue
            if started is None:
                started = t0  # the clock starts with the first message (after the group join)
                cpu_started = Stats.cpu()
            seconds["poll"] += t1 - t0
            n_msgs += 1
            rec = decode_avro(msg.value())
            passed = any((x.get("filter_name") or x.get("filter_id")) == ZTF.filter_name for x in rec["filters"])
            t2 = perf()
            seconds["parse"] += t2 - t1
            if passed:
                alert = alerts.find_one({"_id": rec["candid"]})
                t3 = perf()
                aux_doc = aux.find_one({"_id": rec["objectId"]})
                t4 = perf()
                x = ztf_inputs(alert, aux_doc)
                t5 = perf()
                p = predict_proba(model, x.ts[None], np.array([x.length]), x.static[None])[0]
                t6 = perf()
                now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e3) % 1000:03d}+00:00"
                csv.writer(f, lineterminator="\n").writerow(
                    [rec["candid"], rec["objectId"], *(f"{v:.6g}" for v in p), now])
                f.flush()
                t7 = perf()
                seconds["find_alert"] += t3 - t2
                seconds["find_aux"] += t4 - t3
                seconds["inputs"] += t5 - t4
                seconds["model"] += t6 - t5
                seconds["csv"] += t7 - t6
                n_rows += 1
            t8 = perf()
            consumer.commit(message=msg, asynchronous=args.commit == "async")
            seconds["commit"] += perf() - t8
    elapsed = perf() - started if started is not None else 0.0
    cpu_used = Stats.cpu() - cpu_started if started is not None else 0.0
    consumer.close()
    (out / "baseline.json").write_text(json.dumps({
        "messages": n_msgs, "rows": n_rows, "elapsed_s": elapsed, "seconds": seconds, "cpu_s": cpu_used,
        "commit": args.commit, **{k.lower(): v for k, v in proc_status().items()}}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "baseline":
        sys.exit(baseline_main(sys.argv[2:]))
    sys.exit("usage: python -m bench.flowbench baseline --brokers ... (the driver is bench/bench_flow.py)")


# ---------------------------------------------------------------- Omni alone


def omni_rates(seconds: float = 8.0, batch: int = 32) -> dict:
    """Omni (random weights with a trained-looking layer scale: no Omni checkpoint is
    shipped) on the bundled ZTF alerts with their real reference stamps: alerts/s on
    one thread in fp32 and in each opt-in precision, and the largest probability
    change the precision causes on those alerts."""
    import copy

    import numpy as np
    import torch

    from models.oracle.loading import configure_inference
    from models.oracle.networks import build_oracle, predict_proba
    from operators.oracle.steps import pad
    from operators.oracle.store import EmbeddedStore
    from operators.oracle.surveys import ZTF
    from operators.oracle.ztf_inputs import ztf_inputs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_oracle("omni")
    state = model.state_dict()
    for key in state:
        if key.endswith(".gamma"):
            state[key] = torch.full_like(state[key], 0.5)
    model.load_state_dict(state)
    store = EmbeddedStore(ZTF.sample_dir, ZTF.collections)
    candids = list(store._alerts)
    docs = store.fetch(candids, sorted({d["objectId"] for d in store._alerts.values()}), True)
    inputs = []
    for c, alert in docs.alerts.items():
        aux = docs.aux.get(alert["objectId"])
        if aux is None:
            continue
        try:
            inputs.append(ztf_inputs(alert, aux, docs.cutouts.get(c), with_stamp=True))
        except Exception:
            continue
    ts, lengths = pad(inputs)
    static = np.stack([x.static for x in inputs])
    stamps = np.stack([x.stamp for x in inputs])
    zero = int((~stamps.reshape(len(stamps), -1).any(axis=1)).sum())
    idx = np.arange(batch) % len(inputs)
    out = {"alerts": len(inputs), "zero_stamps": zero, "batch": batch}
    fp32 = predict_proba(model, ts, lengths, static, stamps)
    for precision in ("fp32", "bf16"):
        m = copy.deepcopy(model)
        configure_inference(m, precision, "cpu")
        probs = predict_proba(m, ts, lengths, static, stamps)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            predict_proba(m, ts[idx], lengths[idx], static[idx], stamps[idx])
            n += batch
        out[precision] = {"alerts_per_s": n / (time.perf_counter() - t0),
                          "max_abs_dp": float(np.abs(probs - fp32).max())}
    return out
