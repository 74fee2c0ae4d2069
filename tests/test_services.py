"""The service fixtures, `MongoStore` against a real wire-protocol server, and
`operators.samples.load` against a real Kafka-protocol broker."""

from __future__ import annotations

import copy
import io
import logging
import time
import traceback
from pathlib import Path

import fastavro
import numpy as np
import pytest
from bson import json_util
from pymongo import MongoClient, monitoring

from operators.samples import load as load_sample
from operators.oracle.mongo_store import MongoStore, StoreUnavailable
from operators.oracle.store import EmbeddedStore, write_documents
from operators.oracle.surveys import ZTF

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent
BOOM = REPO / "data" / "boom"
SAMPLE = REPO / "data" / "ztf_sample"
COLLECTIONS = ZTF.collections
PASSWORD = "Fake-Pa55word-7c1e"  # must never show up in logs or errors
CANDID0 = 4_000_000_000_000_000_000


# ---------------------------------------------------------------- documents


def boom_alert() -> dict:
    return json_util.loads((BOOM / "ztf_alert.json").read_text())


def boom_aux() -> dict:
    return json_util.loads((BOOM / "ztf_alert_aux.json").read_text())


def make_docs(n: int, n_objects: int = 3, nan: bool = True) -> tuple[list[dict], list[dict], list[dict]]:
    """n alerts (candids CANDID0+i) of n_objects objects, their aux and small cutouts;
    some values are NaN, as in real BOOM documents."""
    alert0, aux0 = boom_alert(), boom_aux()
    alerts, cutouts = [], []
    for i in range(n):
        doc = copy.deepcopy(alert0)
        candid = CANDID0 + i
        doc["_id"] = candid
        doc["objectId"] = f"ZTF26test{i % n_objects:03d}"
        doc["candidate"]["candid"] = candid
        doc["candidate"]["magpsf"] = 16.0 + i / 100
        if nan and i % 2 == 0:
            doc["candidate"]["drb"] = float("nan")
            doc["candidate"]["sgscore2"] = float("nan")
        alerts.append(doc)
        cutouts.append({"_id": candid, "cutoutScience": b"s" * 64, "cutoutTemplate": b"t%d" % i,
                        "cutoutDifference": b"d" * 64})
    auxes = []
    for j in range(n_objects):
        doc = copy.deepcopy(aux0)
        doc["_id"] = f"ZTF26test{j:03d}"
        if nan:
            doc["prv_candidates"][0]["magap"] = float("nan")
        auxes.append(doc)
    return alerts, auxes, cutouts


def load_docs(db, alerts, auxes, cutouts) -> None:
    load_sample.upsert_documents(db[COLLECTIONS.alerts], alerts)
    load_sample.upsert_documents(db[COLLECTIONS.aux], auxes)
    load_sample.upsert_documents(db[COLLECTIONS.cutouts], cutouts)


def allowed(fields: tuple[str, ...]) -> dict[str, set[str] | None]:
    """Top-level field -> allowed subfields (None: the whole field)."""
    out: dict[str, set[str] | None] = {"_id": None}
    for name in fields:
        top, _, sub = name.partition(".")
        if not sub:
            out[top] = None
        elif out.get(top, set()) is not None:
            out.setdefault(top, set()).add(sub)
    return out


def assert_projected(doc: dict, fields: tuple[str, ...]) -> None:
    spec = allowed(fields)
    assert set(doc) <= set(spec), f"unexpected fields {set(doc) - set(spec)}"
    for top, subs in spec.items():
        if subs is not None and top in doc:
            assert set(doc[top]) <= subs, f"unexpected {top} fields {set(doc[top]) - subs}"


class CommandCounter(monitoring.CommandListener):
    def __init__(self):
        self.commands: list[tuple[str, str]] = []

    def started(self, event):
        coll = event.command.get(event.command_name)
        self.commands.append((event.command_name, coll if isinstance(coll, str) else ""))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


# ---------------------------------------------------------------- fixtures answer


def test_kafka_fixture_answers(kafka, create_topic):
    topic = create_topic("alerts", partitions=3)
    other = create_topic("alerts", partitions=3)
    assert topic != other, "topic names are unique"
    md = kafka.admin().list_topics(topic, timeout=5).topics[topic]
    assert len(md.partitions) == 3
    kafka.produce(topic, [b"v%d" % i for i in range(6)], keys=[b"%d" % i for i in range(6)])
    got = kafka.read(topic, 6, timeout_s=10)
    assert sorted(m.value() for m in got) == sorted(b"v%d" % i for i in range(6))


def test_read_to_end_returns_every_message_once_without_waiting(kafka, create_topic):
    topic = create_topic("outputs", partitions=2)
    values = [b"v%d" % i for i in range(300)]  # batched by the producer: Tansu's end offset falls short
    kafka.produce(topic, values[:150], keys=[b"%d" % i for i in range(150)])
    assert sorted(m.value() for m in kafka.read_to_end(topic)) == sorted(values[:150])
    kafka.produce(topic, values[150:], keys=[b"%d" % i for i in range(150, 300)])
    started = time.monotonic()
    got = kafka.read_to_end(topic)  # the first call's markers are skipped too
    assert sorted(m.value() for m in got) == sorted(values)
    assert time.monotonic() - started < 5.0


def test_mongo_fixture_answers(mongo, mongo_db):
    client = mongo.client()
    assert client.admin.command("ping")["ok"] == 1
    assert mongo_db not in client.list_database_names()
    client[mongo_db]["c"].insert_one({"_id": 1, "x": 2})
    assert client[mongo_db]["c"].find_one({"_id": 1}) == {"_id": 1, "x": 2}


# ---------------------------------------------------------------- MongoStore


def test_fetch_returns_exactly_the_requested_documents_with_projected_fields(mongo, mongo_db):
    alerts, auxes, cutouts = make_docs(8, n_objects=3, nan=True)
    load_docs(mongo.client()[mongo_db], alerts, auxes, cutouts)  # NaN → null on the way in
    store = MongoStore(mongo.settings(mongo_db), COLLECTIONS)
    try:
        wanted = [CANDID0 + 1, CANDID0 + 4, CANDID0 + 999]  # the last one does not exist
        objects = ["ZTF26test001", "ZTF26test002", "ZTF26nothere"]
        docs = store.fetch(wanted, objects, with_cutouts=False)
        assert set(docs.alerts) == {CANDID0 + 1, CANDID0 + 4}
        assert set(docs.aux) == {"ZTF26test001", "ZTF26test002"}
        assert docs.cutouts == {}
        for candid, doc in docs.alerts.items():
            assert isinstance(candid, int) and doc["_id"] == candid
            assert_projected(doc, COLLECTIONS.alert_fields)
            # dotted projections come back nested, as the input builders read them
            assert doc["candidate"]["magpsf"] == pytest.approx(16.0 + (candid - CANDID0) / 100)
            assert doc["coordinates"]["l"] == pytest.approx(alerts[0]["coordinates"]["l"])
            assert "created_at" not in doc and "classifications" not in doc
        assert docs.alerts[CANDID0 + 4]["candidate"]["drb"] is None  # was NaN
        for doc in docs.aux.values():
            assert_projected(doc, COLLECTIONS.aux_fields)
            assert set(doc) == {"_id", "prv_candidates", "cross_matches"}
            assert doc["prv_candidates"][0]["magap"] is None  # was NaN

        with_cutouts = store.fetch([CANDID0 + 2, CANDID0 + 3], ["ZTF26test002"], with_cutouts=True)
        assert set(with_cutouts.cutouts) == {CANDID0 + 2, CANDID0 + 3}
        for candid, doc in with_cutouts.cutouts.items():
            assert set(doc) == {"_id", "cutoutTemplate"}
            assert bytes(doc["cutoutTemplate"]) == b"t%d" % (candid - CANDID0)

        assert store.fetch([], [], with_cutouts=True).alerts == {}
    finally:
        store.close()


def test_fetch_makes_one_round_trip_per_collection(mongo, mongo_db):
    alerts, auxes, cutouts = make_docs(300, n_objects=2, nan=False)
    load_docs(mongo.client()[mongo_db], alerts, auxes, cutouts)
    counter = CommandCounter()
    client = MongoClient(mongo.uri, event_listeners=[counter], serverSelectionTimeoutMS=2000)
    store = MongoStore(mongo.settings(mongo_db), COLLECTIONS, client=client)
    try:
        candids = [CANDID0 + i for i in range(300)]
        objects = [a["objectId"] for a in alerts]  # repeated objects are asked once
        counter.commands.clear()
        docs = store.fetch(candids, objects, with_cutouts=True)
        assert len(docs.alerts) == 300 and len(docs.cutouts) == 300 and len(docs.aux) == 2
        assert sorted(counter.commands) == sorted([
            ("find", COLLECTIONS.alerts), ("find", COLLECTIONS.aux), ("find", COLLECTIONS.cutouts)])
        counter.commands.clear()
        store.fetch(candids[:256], objects[:256], with_cutouts=False)
        assert sorted(counter.commands) == sorted([("find", COLLECTIONS.alerts), ("find", COLLECTIONS.aux)])
    finally:
        store.close()
        client.close()


@pytest.mark.skipif(not (SAMPLE / "messages.jsonl").exists(), reason="no data/ztf_sample")
def test_mongo_and_embedded_stores_give_the_same_model_inputs(mongo, mongo_db):
    """Loaded through the loader, MongoStore's projected documents build the same
    ORACLE inputs as the bundled sample read by EmbeddedStore."""
    sample = load_sample.read_sample(SAMPLE, COLLECTIONS)
    load_docs(mongo.client()[mongo_db], sample.alerts, sample.aux, [])
    embedded = EmbeddedStore(SAMPLE, COLLECTIONS)
    store = MongoStore(mongo.settings(mongo_db), COLLECTIONS)
    try:
        candids = [int(d["_id"]) for d in sample.alerts]
        objects = [d["objectId"] for d in sample.alerts]
        ours, theirs = store.fetch(candids, objects, False), embedded.fetch(candids, objects, False)
        assert set(ours.alerts) == set(theirs.alerts) and set(ours.aux) == set(theirs.aux)
        built = 0
        for candid in candids:
            obj = ours.alerts[candid]["objectId"]
            try:
                expected = ZTF.build_inputs(theirs.alerts[candid], theirs.aux.get(obj), None, False)
            except ValueError as exc:
                with pytest.raises(type(exc)):
                    ZTF.build_inputs(ours.alerts[candid], ours.aux.get(obj), None, False)
                continue
            got = ZTF.build_inputs(ours.alerts[candid], ours.aux.get(obj), None, False)
            np.testing.assert_array_equal(got.ts, expected.ts)
            np.testing.assert_array_equal(got.static, expected.static)
            built += 1
        assert built >= len(candids) // 2
    finally:
        store.close()


def _secret_settings(server, database: str, **overrides):
    # nx-27017 has no authentication; PLAIN is the one mechanism that works
    # against it, so credentials really travel through pymongo here.
    uri = f"mongodb://alertflow:{PASSWORD}@127.0.0.1:{server.port}/?authMechanism=PLAIN&authSource=admin"
    return server.settings(database, uri=uri, **overrides)


def test_fetch_retries_through_a_server_restart(restartable_mongo, caplog):
    db = "boom"
    alerts, auxes, cutouts = make_docs(4, n_objects=2)
    load_docs(restartable_mongo.client()[db], alerts, auxes, cutouts)
    settings = _secret_settings(restartable_mongo, db, timeout_ms=500, retries=20)
    store = MongoStore(settings, COLLECTIONS, backoff_initial_s=0.1, backoff_max_s=0.5)
    caplog.set_level(logging.DEBUG)
    try:
        assert len(store.fetch([CANDID0], ["ZTF26test000"], False).alerts) == 1  # connected
        restartable_mongo.stop()
        restarter = restartable_mongo.start_later(1.0)
        started = time.monotonic()
        docs = store.fetch([CANDID0, CANDID0 + 1], ["ZTF26test000", "ZTF26test001"], with_cutouts=True)
        waited = time.monotonic() - started
        restarter.join(timeout=30)
        assert set(docs.alerts) == {CANDID0, CANDID0 + 1}
        assert set(docs.cutouts) == {CANDID0, CANDID0 + 1}
        assert set(docs.aux) == {"ZTF26test000", "ZTF26test001"}
        assert waited >= 0.9, "the fetch waited for the server"
    finally:
        store.close()
    warnings = [r for r in caplog.records if r.name == "operators.oracle.mongo_store" and r.levelno == logging.WARNING]
    assert warnings, "each retry logs a WARNING"
    assert "retry 1/19" in warnings[0].getMessage()
    assert "127.0.0.1" in warnings[0].getMessage()
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_store_unavailable_after_the_retry_bound(restartable_mongo, caplog):
    settings = _secret_settings(restartable_mongo, "boom", timeout_ms=200, retries=3)
    store = MongoStore(settings, COLLECTIONS, backoff_initial_s=0.05, backoff_max_s=0.1)
    restartable_mongo.stop()
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.fetch([CANDID0], ["ZTF26test000"], with_cutouts=False)
    finally:
        store.close()
    message = str(info.value)
    assert "3 attempts" in message and "Check" in message and "MONGODB_URI" in message
    assert f"127.0.0.1:{restartable_mongo.port}" in message
    assert PASSWORD not in message
    assert PASSWORD not in "".join(traceback.format_exception(info.value))
    warnings = [r for r in caplog.records if r.name == "operators.oracle.mongo_store" and r.levelno == logging.WARNING]
    assert len(warnings) == 2  # attempts 1 and 2; the third raises
    assert PASSWORD not in caplog.text


# ---------------------------------------------------------------- load_sample


def _candid(value: bytes):
    try:
        return next(fastavro.reader(io.BytesIO(value)))["candid"]
    except Exception:
        return None


def _tiny_sample(tmp_path: Path) -> Path:
    """A sample dir built from data/boom (used when data/ztf_sample is absent)."""
    alerts, auxes, cutouts = make_docs(5, n_objects=2)
    schema = fastavro.parse_schema({
        "type": "record", "name": "Alert", "fields": [
            {"name": "candid", "type": "long"}, {"name": "objectId", "type": "string"},
            {"name": "jd", "type": "double"}, {"name": "ra", "type": "double"},
            {"name": "dec", "type": "double"}, {"name": "cutoutTemplate", "type": "bytes"}]})
    values = []
    for doc in alerts:
        out = io.BytesIO()
        c = doc["candidate"]
        fastavro.writer(out, schema, [{"candid": doc["_id"], "objectId": doc["objectId"], "jd": c["jd"],
                                       "ra": c["ra"], "dec": c["dec"], "cutoutTemplate": b"t"}], codec="snappy")
        values.append(out.getvalue())
    values.append(b"not avro")
    from operators.samples.bundle import write_messages

    write_messages(tmp_path, values)
    write_documents(tmp_path / f"{COLLECTIONS.alerts}.jsonl", alerts)
    write_documents(tmp_path / f"{COLLECTIONS.aux}.jsonl", auxes)
    write_documents(tmp_path / f"{COLLECTIONS.cutouts}.jsonl", cutouts)
    return tmp_path


def test_load_sample_publishes_and_loads_repeated_messages(kafka, mongo, mongo_db, tmp_path, request):
    sample_dir = SAMPLE if (SAMPLE / "messages.jsonl").exists() else _tiny_sample(tmp_path)
    sample = load_sample.read_sample(sample_dir, COLLECTIONS)
    topic = f"{request.node.name}-{mongo_db}"  # created by the loader
    repeat = 3
    code = load_sample.main(
        ["--survey", "ztf", "--sample-dir", str(sample_dir), "--mongodb-uri", mongo.uri,
         "--database", mongo_db, "--kafka-brokers", kafka.bootstrap, "--topic", topic,
         "--partitions", "2", "--repeat", str(repeat)],
        env={},
    )
    assert code == 0
    expected = load_sample.repeat_sample(sample, repeat)
    n = len(expected.messages)
    # Copies leave out the messages the flow dead-letters: the ZTF sample's 3 malformed ones and its orphan.
    assert sample_dir != SAMPLE or n == 40 + (repeat - 1) * 36
    got = kafka.read(topic, n, timeout_s=20)
    assert len(got) == n
    assert len(kafka.admin().list_topics(topic, timeout=5).topics[topic].partitions) == 2
    assert sorted(map(str, (_candid(m.value()) for m in got))) == sorted(
        map(str, (_candid(v) for v in expected.messages)))
    assert sorted(int(m.key()) for m in got) == list(range(n))
    synthesized = [c for c in map(_candid, expected.messages) if c and c >= load_sample.SYNTHETIC_CANDID_BASE]
    assert len(synthesized) == len(set(synthesized)) > 0
    # documents for the new candids are there, objects unchanged
    db = mongo.client()[mongo_db]
    assert db[COLLECTIONS.alerts].count_documents({}) == len(expected.alerts)
    assert db[COLLECTIONS.cutouts].count_documents({}) == len(expected.cutouts)
    assert db[COLLECTIONS.aux].count_documents({}) == len(sample.aux)
    store = MongoStore(mongo.settings(mongo_db), COLLECTIONS)
    try:
        some = synthesized[:5]
        docs = store.fetch(some, [], with_cutouts=True)
        assert docs.alerts, "synthesized candids have alert documents"
        raw = db[COLLECTIONS.alerts].find_one({"_id": some[0]}) or {}
        assert raw.get("candidate", {}).get("candid") in (None, some[0])
        for candid in docs.alerts:
            assert candid in docs.cutouts
    finally:
        store.close()
