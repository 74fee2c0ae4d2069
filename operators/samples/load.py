"""Load a sample into a MongoDB and a Kafka topic, to try a flow end to end.

    python -m operators.samples.load --survey ztf \\
        --mongodb-uri mongodb://localhost:27017/ --kafka-brokers localhost:9092 \\
        [--topic ZTF_alerts_results] [--partitions 4] [--repeat N]

Every option defaults to the variable `Settings.from_env` reads (MONGODB_URI or
BOOM_DATABASE__*, BOOM_DATABASE__NAME, KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_OPT_*,
ALERTFLOW_SAMPLE_DIR). Steps:

1. the sample's `{SURVEY}_alerts`, `_aux` and `_cutouts` documents are upserted
   by `_id` into the database (NaN → null, as JSON-backed servers need);
2. its messages are published to the topic (created with `--partitions`
   partitions if absent), keyed by their index in the stream.

`--repeat N` publishes the sample N times: copies 2..N of every decodable
message get a new candid (from `SYNTHETIC_CANDID_BASE` upwards, far above real
ZTF candids), re-encoded with the message's own Avro schema and codec, and the
matching `{SURVEY}_alerts`/`_cutouts` documents are inserted under the new
candid (the object, hence its `_aux` document, is unchanged). Messages that do
not decode are repeated as they are, with `--repeat-broken`; by default copies
leave out every message the flow dead-letters (`is_broken`). Documents of each chunk are written before
its messages, so a flow never reads a message whose documents are missing.

`repeat_sample` / `iter_repeated` are pure and reusable (benchmarks).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import fastavro

from operators.runtime.config import KafkaSettings, MongoSettings, Settings
from operators.samples.bundle import read_messages
from operators.oracle.store import Collections, nan_to_none, read_documents

log = logging.getLogger("alertflow.load_sample")

# First candid given to synthesized copies: above any real ZTF candid (~3.4e18),
# below the int64 limit (9.22e18) with room for millions of copies.
SYNTHETIC_CANDID_BASE = 9_000_000_000_000_000_000
UPSERT_CHUNK = 200  # documents per bulk_write (cutouts are ~50 kB each)


# ---------------------------------------------------------------- the sample


@dataclass
class SampleData:
    """A sample directory's content: messages in order and documents per collection."""

    messages: list[bytes]
    alerts: list[dict] = field(default_factory=list)
    aux: list[dict] = field(default_factory=list)
    cutouts: list[dict] = field(default_factory=list)


def read_sample(sample_dir: Path, collections: Collections) -> SampleData:
    sample_dir = Path(sample_dir)
    return SampleData(
        messages=read_messages(sample_dir),
        alerts=read_documents(sample_dir / f"{collections.alerts}.jsonl"),
        aux=read_documents(sample_dir / f"{collections.aux}.jsonl"),
        cutouts=read_documents(sample_dir / f"{collections.cutouts}.jsonl"),
    )


@dataclass(frozen=True)
class _Template:
    """A decoded single-record Avro container, ready to re-encode with another candid."""

    schema: dict
    codec: str
    metadata: dict
    record: dict


def _template(payload: bytes) -> Optional[_Template]:
    try:
        reader = fastavro.reader(io.BytesIO(payload))
        records = list(reader)
    except Exception:
        return None
    if len(records) != 1 or not isinstance(records[0], dict):
        return None
    candid = records[0].get("candid")
    if not isinstance(candid, int) or isinstance(candid, bool):
        return None
    metadata = {k: v for k, v in reader.metadata.items() if not k.startswith("avro.")}
    return _Template(fastavro.parse_schema(reader.writer_schema), reader.codec, metadata, records[0])


def with_candid(template: _Template, candid: int) -> bytes:
    """The template's message re-encoded (same schema and codec) with another candid."""
    out = io.BytesIO()
    fastavro.writer(out, template.schema, [{**template.record, "candid": candid}],
                    codec=template.codec, metadata=template.metadata or None)
    return out.getvalue()


def change_candid(payload: bytes, candid: int) -> bytes:
    """A BOOM message with its `candid` replaced; ValueError if it is not one."""
    template = _template(payload)
    if template is None:
        raise ValueError("not a single-record Avro container with an integer candid")
    return with_candid(template, candid)


def _alert_copy(doc: dict, candid: int) -> dict:
    copy = {**doc, "_id": candid}
    if isinstance(doc.get("candidate"), dict):
        copy["candidate"] = {**doc["candidate"], "candid": candid}
    return copy


@dataclass(frozen=True)
class Item:
    """One message to publish and the documents to write before it (if any)."""

    value: bytes
    alert: Optional[dict] = None
    cutout: Optional[dict] = None


def is_broken(value: bytes, template: Optional[_Template], alerts: Mapping[int, dict], aux_ids: set) -> bool:
    """A message the flow would dead-letter: it does not decode or parse, or its alert or
    object (aux) document is missing from the sample."""
    from types import SimpleNamespace

    from operators.oracle.messages import FilterResult, parse_message

    if template is None or not isinstance(parse_message(SimpleNamespace(value=value)), FilterResult):
        return True
    return template.record["candid"] not in alerts or template.record.get("objectId") not in aux_ids


def iter_repeated(
    sample: SampleData, repeat: int, first_candid: int = SYNTHETIC_CANDID_BASE, broken: bool = False
) -> Iterator[Item]:
    """The sample's messages `repeat` times, in order; copies after the first
    carry new candids (`first_candid`, `first_candid + 1`, ...) and documents to
    match. Copies leave out the messages the flow dead-letters (`is_broken`: a
    sample's few broken ones, 500 times over, would be 2,000 warnings) unless
    `broken`. The original documents are not included (load them with the sample).
    Lazy: 20,000 messages of ~40 kB are not held in memory at once."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    alerts = {int(d["_id"]): d for d in sample.alerts}
    cutouts = {int(d["_id"]): d for d in sample.cutouts}
    aux_ids = {d["_id"] for d in sample.aux}
    yield from (Item(value) for value in sample.messages)
    templates = [_template(value) for value in sample.messages] if repeat > 1 else []
    if not broken:
        kept = [(v, t) for v, t in zip(sample.messages, templates) if not is_broken(v, t, alerts, aux_ids)]
    candid = first_candid
    for _ in range(1, repeat):
        for value, template in (zip(sample.messages, templates) if broken else kept):
            if template is None:
                yield Item(value)
                continue
            old = template.record["candid"]
            alert = _alert_copy(alerts[old], candid) if old in alerts else None
            cutout = {**cutouts[old], "_id": candid} if old in cutouts else None
            yield Item(with_candid(template, candid), alert, cutout)
            candid += 1


def repeat_sample(sample: SampleData, repeat: int, first_candid: int = SYNTHETIC_CANDID_BASE,
                  broken: bool = False) -> SampleData:
    """`iter_repeated` collected: all messages, and all documents (originals + copies)."""
    out = SampleData(messages=[], alerts=list(sample.alerts), aux=list(sample.aux), cutouts=list(sample.cutouts))
    for item in iter_repeated(sample, repeat, first_candid, broken):
        out.messages.append(item.value)
        if item.alert is not None:
            out.alerts.append(item.alert)
        if item.cutout is not None:
            out.cutouts.append(item.cutout)
    return out


# ---------------------------------------------------------------- MongoDB


def upsert_documents(collection, docs: Iterable[dict], chunk: int = UPSERT_CHUNK) -> int:
    """Replace-or-insert documents by `_id` (NaN → null); returns how many were written.

    Written as delete-then-insert per chunk rather than `ReplaceOne(upsert=True)`:
    nx-27017 refuses raw bytes (the cutouts) in an update, so a second load of the
    same sample failed there; inserts take them, on nx-27017 and on MongoDB alike."""
    n = 0
    batch: list = []

    def flush() -> int:
        latest = {d["_id"]: d for d in batch}  # an _id twice in a chunk: the last one wins, as with replace
        collection.delete_many({"_id": {"$in": list(latest)}})
        collection.insert_many(list(latest.values()), ordered=False)
        return len(batch)

    for doc in docs:
        batch.append(nan_to_none(doc))
        if len(batch) >= chunk:
            n += flush()
            batch = []
    if batch:
        n += flush()
    return n


# ---------------------------------------------------------------- Kafka


def ensure_topic(kafka_config: Mapping[str, str], topic: str, partitions: int, timeout_s: float = 30.0) -> int:
    """Create `topic` with `partitions` partitions if absent; returns its partition count."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(dict(kafka_config))
    existing = admin.list_topics(timeout=timeout_s).topics.get(topic)
    if existing is None or existing.error is not None:
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        try:
            futures[topic].result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if md is not None and md.error is None and md.partitions:
            if len(md.partitions) != partitions:
                log.warning("topic %s exists with %d partitions (asked for %d); keeping it",
                            topic, len(md.partitions), partitions)
            return len(md.partitions)
        time.sleep(0.1)
    raise RuntimeError(f"topic {topic} did not appear within {timeout_s:.0f} s")


class Publisher:
    """A confluent-kafka producer that counts deliveries and failures."""

    def __init__(self, kafka_config: Mapping[str, str], topic: str):
        from confluent_kafka import Producer

        config = {"linger.ms": 20, "queue.buffering.max.kbytes": 262144, **dict(kafka_config)}
        self._producer = Producer(config)
        self._topic = topic
        self.delivered = 0
        self.errors: list[str] = []

    def _done(self, err, _msg) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.errors.append(str(err))

    def publish(self, value: bytes, key: Optional[bytes]) -> None:
        while True:
            try:
                self._producer.produce(self._topic, value=value, key=key, on_delivery=self._done)
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining or self.errors:
            raise RuntimeError(
                f"publishing to {self._topic}: {remaining} messages unsent, {len(self.errors)} failed "
                f"(first: {self.errors[:1]})"
            )


# ---------------------------------------------------------------- the whole load


@dataclass
class LoadReport:
    documents: int = 0
    documents_s: float = 0.0
    messages: int = 0
    messages_s: float = 0.0
    topic: Optional[str] = None
    partitions: Optional[int] = None

    def summary(self) -> str:
        parts = []
        if self.documents_s:
            parts.append(f"{self.documents} documents upserted in {self.documents_s:.1f} s "
                         f"({self.documents / self.documents_s:.0f}/s)")
        if self.topic:
            rate = self.messages / self.messages_s if self.messages_s else 0.0
            parts.append(f"{self.messages} messages published to {self.topic} ({self.partitions} partitions) "
                         f"in {self.messages_s:.1f} s ({rate:.0f}/s)")
        return "; ".join(parts) or "nothing to do"


def kafka_client_config(kafka: KafkaSettings) -> dict[str, str]:
    """A producer's (and admin client's) settings: consumer-only properties (`KAFKA_OPT_GROUP_ID`, ...)
    are left to the flow's consumer, so librdkafka has nothing to warn about."""
    from operators.io.kafka import admin_config

    return admin_config({"bootstrap.servers": ",".join(kafka.brokers), **dict(kafka.client_config)})


def load(
    sample: SampleData,
    collections: Collections,
    mongo: Optional[MongoSettings],
    kafka: Optional[KafkaSettings],
    partitions: int = 4,
    repeat: int = 1,
    first_candid: int = SYNTHETIC_CANDID_BASE,
    chunk: int = 1000,
    broken: bool = False,
) -> LoadReport:
    """Write the sample's documents to `mongo` and publish its messages to `kafka`
    (either may be None to skip it), `repeat` times over (copies of the broken
    messages too with `broken`, see `iter_repeated`)."""
    from operators.oracle.mongo_store import acquire_client, release_client

    report = LoadReport()
    db = acquire_client(mongo)[mongo.database] if mongo is not None else None
    publisher = None
    try:
        if db is not None:
            t0 = time.perf_counter()
            for name, docs in ((collections.alerts, sample.alerts), (collections.aux, sample.aux),
                               (collections.cutouts, sample.cutouts)):
                report.documents += upsert_documents(db[name], docs)
            report.documents_s += time.perf_counter() - t0
        if kafka is not None:
            report.topic = kafka.topic
            report.partitions = ensure_topic(kafka_client_config(kafka), kafka.topic, partitions)
            publisher = Publisher(kafka_client_config(kafka), kafka.topic)
        index = 0
        items = iter_repeated(sample, repeat, first_candid, broken)
        while True:
            block = [item for _, item in zip(range(chunk), items)]
            if not block:
                break
            if db is not None:  # documents before their messages
                t0 = time.perf_counter()
                report.documents += upsert_documents(db[collections.alerts], [i.alert for i in block if i.alert])
                report.documents += upsert_documents(db[collections.cutouts], [i.cutout for i in block if i.cutout])
                report.documents_s += time.perf_counter() - t0
            if publisher is not None:
                t0 = time.perf_counter()
                for item in block:
                    publisher.publish(item.value, str(index).encode())
                    index += 1
                report.messages_s += time.perf_counter() - t0
        if publisher is not None:
            t0 = time.perf_counter()
            publisher.flush()
            report.messages_s += time.perf_counter() - t0
            report.messages = publisher.delivered
    finally:
        if mongo is not None:
            release_client(mongo)
    return report


def _settings(args: argparse.Namespace, env: Mapping[str, str]):
    from operators.oracle.surveys import survey_named

    survey = survey_named(args.survey)
    env = dict(env)
    overrides = {
        "MONGODB_URI": args.mongodb_uri,
        "BOOM_DATABASE__NAME": args.database,
        "KAFKA_BROKERS": args.kafka_brokers,
        "KAFKA_TOPIC": args.topic,
        "ALERTFLOW_SAMPLE_DIR": args.sample_dir,
    }
    env.update({k: v for k, v in overrides.items() if v})
    return survey, Settings.from_env(survey, env)


def main(argv: Optional[Sequence[str]] = None, env: Mapping[str, str] = os.environ) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m operators.samples.load",
        description="Load a sample's documents into MongoDB and publish its messages to Kafka.",
    )
    ap.add_argument("--survey", default="ztf", help="survey whose sample to load (default: ztf)")
    ap.add_argument("--sample-dir", help="sample directory (default: ALERTFLOW_SAMPLE_DIR or the survey's)")
    ap.add_argument("--mongodb-uri", help="MongoDB URI (default: MONGODB_URI or BOOM_DATABASE__*)")
    ap.add_argument("--database", help="database name (default: BOOM_DATABASE__NAME or boom)")
    ap.add_argument("--kafka-brokers", help="bootstrap servers, comma-separated (default: KAFKA_BROKERS)")
    ap.add_argument("--topic", help="topic (default: KAFKA_TOPIC or the survey's filter-results topic)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions if the topic is created (default: 4)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="publish the sample N times, copies with new candids (default: 1)")
    ap.add_argument("--repeat-broken", action="store_true",
                    help="with --repeat, copy also the messages the flow dead-letters (by default only the "
                         "first pass has them)")
    ap.add_argument("--skip-mongo", action="store_true", help="do not write documents")
    ap.add_argument("--skip-kafka", action="store_true", help="do not publish messages")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.repeat < 1 or args.partitions < 1:
        ap.error("--repeat and --partitions must be at least 1")
    survey, settings = _settings(args, env)
    mongo = None if args.skip_mongo else settings.mongo
    kafka = None if args.skip_kafka else settings.kafka
    if mongo is None and not args.skip_mongo:
        ap.error("no MongoDB: pass --mongodb-uri, set MONGODB_URI or BOOM_DATABASE__HOST, or use --skip-mongo")
    if kafka is None and not args.skip_kafka:
        ap.error("no Kafka: pass --kafka-brokers, set KAFKA_BROKERS, or use --skip-kafka")
    if not (settings.outputs.sample_dir / "messages.jsonl").exists():
        ap.error(f"{settings.outputs.sample_dir} holds no messages.jsonl")
    sample = read_sample(settings.outputs.sample_dir, survey.collections)
    log.info(
        "loading %s (%d messages × %d) into %s and %s",
        settings.outputs.sample_dir, len(sample.messages), args.repeat,
        mongo.describe() + f" db={mongo.database}" if mongo else "no MongoDB",
        f"{','.join(kafka.brokers)} topic={kafka.topic}" if kafka else "no Kafka",
    )
    if args.repeat > 1 and not args.repeat_broken:
        alerts, aux_ids = {int(d["_id"]): d for d in sample.alerts}, {d["_id"] for d in sample.aux}
        broken = sum(is_broken(v, _template(v), alerts, aux_ids) for v in sample.messages)
        if broken:
            log.info("copies 2..%d leave out the %d message(s) the flow dead-letters (--repeat-broken keeps them)",
                     args.repeat, broken)
    try:
        report = load(sample, survey.collections, mongo, kafka, args.partitions, args.repeat,
                      broken=args.repeat_broken)
    except Exception as exc:
        from operators.oracle.mongo_store import describe_error

        reason = describe_error(exc, mongo) if mongo is not None else f"{type(exc).__name__}: {exc}"
        log.error("load failed: %s", settings.redact(reason))
        return 1
    log.info("%s", report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
