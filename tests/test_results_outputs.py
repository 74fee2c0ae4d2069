"""The results topic and collection (issue 25): written by every worker, against the
Kafka-protocol (Tansu) and MongoDB-protocol (nx-27017) test servers."""

from __future__ import annotations

import math

import pytest
from bytewax.testing import run_main
from pymongo.errors import AutoReconnect, OperationFailure

from dataflows.oracle import build_flow
from models.oracle.taxonomy import ZTF_TAXONOMY
from operators.io.deadletter import read_dead_letters
from operators.oracle.result_record import decode, to_record
from operators.oracle.results import Result, read_results
from operators.oracle.store import EmbeddedStore
from operators.oracle.surveys import ZTF
from operators.runtime.settings import ConfigError
from operators.sinks.results_collection import NotAllowed, ResultsCollectionSink, document, prepare_collection
from operators.sinks.results_outputs import check_results, settings_problems
from tests.helpers import SAMPLE_TRUTH, settings_for

pytestmark = pytest.mark.services

CLASSIFIED = SAMPLE_TRUTH["ZTF"]["passing"] - SAMPLE_TRUTH["ZTF"]["no_aux"]


def run_bundled(settings):
    """The ZTF flow over the bundled sample, enriched from the bundled documents (the MongoDB
    named in `settings` only receives the results)."""
    run_main(build_flow(ZTF, settings, store=EmbeddedStore(ZTF.sample_dir, ZTF.collections)))


def result(candid=1, object_id="ZTF1", ra=10.0, dec=-5.0, model="ORACLE-btsv2:test@abc") -> Result:
    probs = {n: 0.1 for n in ZTF_TAXONOMY.nodes}
    return Result(candid=candid, objectId=object_id, jd=2460000.5, survey="ZTF", probabilities=probs,
                  predicted="SN-Ia", model=model, processed_at="2026-12-07T21:00:00.000+00:00", ra=ra, dec=dec)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("env, variable", [
    ({"ORACLE_RESULTS_TOPIC": "ztf results!"}, "ORACLE_RESULTS_TOPIC"),
    ({"ORACLE_RESULTS_TOPIC": "a" * 250}, "ORACLE_RESULTS_TOPIC"),
    ({"ALERTFLOW_DEADLETTER_TOPIC": ".."}, "ALERTFLOW_DEADLETTER_TOPIC"),
    ({"ORACLE_RESULTS_COLLECTION": "oracle$results"}, "ORACLE_RESULTS_COLLECTION"),
    ({"ORACLE_RESULTS_COLLECTION": "system.oracle"}, "ORACLE_RESULTS_COLLECTION"),
    ({"ORACLE_RESULTS_COLLECTION": "x", "ORACLE_RESULTS_DATABASE": "bo/om"}, "ORACLE_RESULTS_DATABASE"),
    ({"ALERTFLOW_RESULTS_CSV": "false"}, "ALERTFLOW_RESULTS_CSV"),
])
def test_names_kafka_or_mongodb_reject_are_one_line_naming_the_variable(tmp_path, env, variable):
    with pytest.raises(ConfigError) as err:
        settings_for(ZTF, tmp_path, **env)
    line = str(err.value)
    assert "\n" not in line and line.startswith(variable) and " -> " in line, line


def test_boom_collections_and_a_collection_without_mongodb_are_refused(tmp_path, mongo):
    s = settings_for(ZTF, tmp_path, ORACLE_RESULTS_COLLECTION="ZTF_alerts_aux", MONGODB_URI=mongo.uri)
    (p,) = settings_problems(s, ZTF)
    assert "one of BOOM's own collections" in p.detail and "ZTF_alerts_oracle" in p.fix
    s = settings_for(ZTF, tmp_path, ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle")
    (p,) = settings_problems(s, ZTF)
    assert "needs a MongoDB" in p.detail and "MONGODB_URI" in p.fix
    s = settings_for(ZTF, tmp_path, ORACLE_RESULTS_TOPIC="ZTF_alerts_oracle")
    (p,) = settings_problems(s, ZTF)
    assert "KAFKA_BROKERS is unset" in p.detail


# ---------------------------------------------------------------- the collection


def test_the_collection_gets_one_document_per_alert_and_a_replay_changes_nothing(tmp_path, mongo, mongo_db):
    s = settings_for(ZTF, tmp_path, MONGODB_URI=mongo.uri, BOOM_DATABASE__NAME=mongo_db,
                     ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle")
    run_bundled(s)
    coll = mongo.client()[mongo_db]["ZTF_alerts_oracle"]
    docs = {d["_id"]: d for d in coll.find({})}
    assert set(docs) == CLASSIFIED
    rows = read_results(s.results_csv).set_index("candid")
    for candid, doc in docs.items():
        assert doc["objectId"] == rows.loc[candid, "objectId"] and doc["survey"] == "ZTF"
        assert set(doc["probabilities"]) == set(ZTF_TAXONOMY.nodes)
        for node in ZTF_TAXONOMY.nodes:  # the CSV keeps 6 significant digits
            assert math.isclose(doc["probabilities"][node], rows.loc[candid, node], rel_tol=1e-5, abs_tol=1e-9)
        assert doc["predicted"] == rows.loc[candid, "predicted"] and doc["jd"] == rows.loc[candid, "jd"]
        assert doc["mjd"] is None and isinstance(doc["ra"], float)
    keys = {tuple(k for k, _ in ix["key"].items()) for ix in coll.list_indexes()}
    assert ("objectId", "jd") in keys and ("jd",) in keys
    assert coll.count_documents({"_id": "alertflow-write-check"}) == 0

    run_bundled(settings_for(ZTF, tmp_path / "again", MONGODB_URI=mongo.uri, BOOM_DATABASE__NAME=mongo_db,
                             ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle"))
    again = {d["_id"]: d for d in coll.find({})}
    assert set(again) == CLASSIFIED
    assert all(again[c]["probabilities"] == docs[c]["probabilities"] for c in CLASSIFIED)
    assert "ZTF_alerts" not in mongo.client()[mongo_db].list_collection_names()  # BOOM's are never written


def test_csv_off_keeps_results_in_the_collection_and_dead_letters_per_process(tmp_path, mongo, mongo_db):
    s = settings_for(ZTF, tmp_path, MONGODB_URI=mongo.uri, BOOM_DATABASE__NAME=mongo_db,
                     ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle", ALERTFLOW_RESULTS_CSV="false")
    run_bundled(s)
    assert not s.results_csv.exists()
    assert mongo.client()[mongo_db]["ZTF_alerts_oracle"].count_documents({}) == len(CLASSIFIED)
    assert not s.deadletters.exists()
    letters = read_dead_letters(s.deadletters.with_name("oracle_ztf_deadletters-0.jsonl"))
    assert sorted(d["offset"] for d in letters if d["stage"] == "parse") == sorted(SAMPLE_TRUTH["ZTF"]["malformed_offsets"])


def test_nan_positions_are_stored_as_null(mongo, mongo_db):
    doc = document(to_record(result(ra=float("nan"), dec=float("nan")), "BTS"))
    assert doc["ra"] is None and doc["dec"] is None and doc["_id"] == 1
    mongo.client()[mongo_db]["r"].replace_one({"_id": 1}, doc, upsert=True)  # nx-27017 rejects NaN
    assert mongo.client()[mongo_db]["r"].find_one({"_id": 1})["ra"] is None


class ReadOnly:
    """A collection whose user may read only: what MongoDB answers (code 13, Unauthorized)."""

    def __init__(self):
        self.calls = 0

    def __getitem__(self, name):
        return self

    def create_index(self, *args, **kwargs):
        raise OperationFailure("not authorized on boom to execute command { createIndexes: ... }", code=13,
                               details={"errmsg": "not authorized on boom (user reader, pwd s3cret-pw)", "code": 13})

    replace_one = bulk_write = create_index


def test_a_read_only_user_gets_one_line_saying_so(mongo):
    with pytest.raises(NotAllowed) as err:
        prepare_collection(ReadOnly(), mongo.settings("boom", uri="mongodb://reader:s3cret-pw@127.0.0.1:1/"), "boom",
                           "ZTF_alerts_oracle", "ZTF", wait=False)
    line = str(err.value)
    assert "\n" not in line and "code 13" in line and "readWrite" in line and "ORACLE_RESULTS_DATABASE" in line
    assert "s3cret" not in line  # a server echoing the password: scrubbed


class Flaky:
    """A collection that is unreachable for the first `down` writes (an outage), then works."""

    def __init__(self, down: int):
        self.down, self.written = down, []

    def __getitem__(self, name):
        return self

    def bulk_write(self, ops, ordered):
        if self.down:
            self.down -= 1
            raise AutoReconnect("connection refused")
        self.written.extend(op._doc["_id"] for op in ops)


def test_an_outage_during_writing_waits_and_loses_nothing(mongo):
    from operators.sinks import results_collection

    flaky, letters, pauses = Flaky(down=3), [], []
    sink = ResultsCollectionSink(mongo.settings("boom"), "boom", "c", survey="ZTF", taxonomy="BTS",
                                 refuse=letters.extend, client=flaky, sleep=pauses.append)
    results_collection._prepared.add((sink.mongo.describe(), "boom", "c"))  # no indexes on the fake
    part = sink.build("s", 0, 1)
    part.write_batch([[result(1), result(2)], [result(3)]])
    assert flaky.written == [1, 2, 3] and len(pauses) == 3 and letters == []


# ---------------------------------------------------------------- the topic


def test_the_topic_gets_one_avro_record_per_alert_keyed_by_object(tmp_path, kafka, create_topic, mongo, mongo_db):
    topic = create_topic("oracle", partitions=2)
    s = settings_for(ZTF, tmp_path, KAFKA_BROKERS=kafka.bootstrap, KAFKA_TOPIC="unused", ALERTFLOW_RECOVERY="false",
                     ORACLE_RESULTS_TOPIC=topic)
    from prometheus_client import REGISTRY

    from operators.samples.source import SampleSource

    def published():
        return REGISTRY.get_sample_value("alertflow_results_published_total",
                                         {"flow": "oracle_ztf", "survey": "ZTF", "sink": "topic"}) or 0.0

    before = published()
    run_main(build_flow(ZTF, s, source=SampleSource(s.outputs.sample_dir, ZTF.topic),
                        store=EmbeddedStore(ZTF.sample_dir, ZTF.collections)))
    assert published() - before == len(CLASSIFIED)
    msgs = kafka.read_to_end(topic)
    records = [(m.key().decode(), decode(m.value())) for m in msgs]
    assert sorted(r[0]["candid"] for _, r in records) == sorted(CLASSIFIED)
    assert all(key == r[0]["objectId"] and len(r) == 1 for key, r in records)
    rows = read_results(s.results_csv).set_index("candid")
    for _, (rec,) in records:
        assert rec["schemavsn"] == "1.0" and rec["taxonomy"] == "BTS" and rec["predicted"] == rows.loc[rec["candid"], "predicted"]


def test_check_reports_the_topic_and_collection(tmp_path, kafka, create_topic, mongo, mongo_db):
    present = create_topic("present")
    s = settings_for(ZTF, tmp_path, KAFKA_BROKERS=kafka.bootstrap, KAFKA_TOPIC=present, ORACLE_RESULTS_TOPIC=present,
                     ALERTFLOW_DEADLETTER_TOPIC=present + ".absent", MONGODB_URI=mongo.uri,
                     BOOM_DATABASE__NAME=mongo_db, ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle")
    # The results topic may not be the input topic: found before any server is asked.
    (line,) = check_results(s, ZTF)
    assert not line.ok and "KAFKA_TOPIC" in line.detail
    s = settings_for(ZTF, tmp_path, KAFKA_BROKERS=kafka.bootstrap, KAFKA_TOPIC="in", ORACLE_RESULTS_TOPIC=present,
                     ALERTFLOW_DEADLETTER_TOPIC=present + ".absent", MONGODB_URI=mongo.uri,
                     BOOM_DATABASE__NAME=mongo_db, ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle")
    lines = check_results(s, ZTF)
    assert [c.ok for c in lines] == [True, True, True], [(c.detail, c.fix) for c in lines]
    assert "present" in lines[0].detail and "can be created" in lines[1].detail and "writable" in lines[2].detail
    # check asks with validate_only (a real Kafka creates nothing); Tansu ignores the flag and creates it.

    # `python -m dataflows check ztf` prints them among its lines.
    from dataflows.__main__ import run_checks

    env = {"KAFKA_BROKERS": kafka.bootstrap, "KAFKA_TOPIC": present, "ORACLE_RESULTS_TOPIC": present + ".out",
           "MONGODB_URI": mongo.uri, "BOOM_DATABASE__NAME": mongo_db, "ORACLE_RESULTS_COLLECTION": "ZTF_alerts_aux"}
    lines = {c.name: c for c in run_checks("ztf", env)}
    assert not lines["results"].ok and "BOOM's own" in lines["results"].detail
    env["ORACLE_RESULTS_COLLECTION"] = "ZTF_alerts_oracle"
    lines = {c.name: c for c in run_checks("ztf", env)}
    assert lines["results"].ok and lines["oracle_results_topic"].ok, [c.line() for c in lines.values()]


# ---------------------------------------------------------------- shadow and backfill


def test_the_shadow_model_writes_its_own_collection_and_never_the_topic(tmp_path, kafka, create_topic, mongo,
                                                                          mongo_db):
    from operators.samples.source import SampleSource
    from tests.helpers import perturbed_weights

    topic = create_topic("oracle")
    other = perturbed_weights(ZTF.weights, tmp_path / "retrained_ztf.pth", scale=0.02)
    s = settings_for(ZTF, tmp_path, KAFKA_BROKERS=kafka.bootstrap, KAFKA_TOPIC="unused", ALERTFLOW_RECOVERY="false",
                     ORACLE_RESULTS_TOPIC=topic, MONGODB_URI=mongo.uri, BOOM_DATABASE__NAME=mongo_db,
                     ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle", ORACLE_ZTF_SHADOW_WEIGHTS=other)
    run_main(build_flow(ZTF, s, source=SampleSource(s.outputs.sample_dir, ZTF.topic),
                        store=EmbeddedStore(ZTF.sample_dir, ZTF.collections)))
    db = mongo.client()[mongo_db]
    main = {d["_id"]: d for d in db["ZTF_alerts_oracle"].find({})}
    shadow = {d["_id"]: d for d in db["ZTF_alerts_oracle_shadow"].find({})}
    assert set(main) == set(shadow) == CLASSIFIED
    assert all(d["model"].startswith("ORACLE-btsv2:retrained_ztf.pth@") for d in shadow.values())
    assert not any(d["model"].startswith("ORACLE-btsv2:retrained_ztf.pth@") for d in main.values())
    on_topic = [decode(m.value())[0] for m in kafka.read_to_end(topic)]
    assert len(on_topic) == len(CLASSIFIED) and {r["model"] for r in on_topic} == {next(iter(main.values()))["model"]}


def test_a_backfill_upserts_into_the_collection_and_publishes_only_when_asked(tmp_path, kafka, create_topic, mongo,
                                                                              mongo_db):
    from dataflows.backfill import Job, build_backfill_flow
    from operators.oracle.store import read_documents
    from operators.samples.load import upsert_documents
    from tests.helpers import perturbed_weights

    db = mongo.client()[mongo_db]
    for name in (ZTF.collections.alerts, ZTF.collections.aux):
        upsert_documents(db[name], read_documents(ZTF.sample_dir / f"{name}.jsonl"))
    topic = create_topic("oracle")
    env = dict(KAFKA_BROKERS=kafka.bootstrap, KAFKA_TOPIC="unused", ORACLE_RESULTS_TOPIC=topic,
               MONGODB_URI=mongo.uri, BOOM_DATABASE__NAME=mongo_db, ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle")

    def backfill(home, publish=False, weights=None):
        job = Job(ZTF, 2_400_001.0, 2_500_000.0, "a", "b", weights=weights, slices=4, publish=publish)
        flow, csv = build_backfill_flow(job, settings_for(ZTF, home, **env))
        run_main(flow)
        return read_results(csv)

    rows = backfill(tmp_path / "first")
    coll = db["ZTF_alerts_oracle"]
    first = {d["_id"]: d for d in coll.find({})}
    assert set(first) == set(rows.candid) and len(first) > 30
    assert kafka.read_to_end(topic) == []  # no --publish: nothing on the topic

    other = perturbed_weights(ZTF.weights, tmp_path / "retrained_ztf.pth", scale=0.05)
    backfill(tmp_path / "second", publish=True, weights=other)
    second = {d["_id"]: d for d in coll.find({})}
    assert set(second) == set(first)  # overwritten in place: same _id, no second document
    assert all(d["model"].startswith("ORACLE-btsv2:retrained_ztf.pth@") for d in second.values())
    assert any(second[c]["probabilities"] != first[c]["probabilities"] for c in first)
    on_topic = [decode(m.value())[0] for m in kafka.read_to_end(topic)]
    assert sorted(r["candid"] for r in on_topic) == sorted(first)


# ---------------------------------------------------------------- delivery: refusals, outages, dead-letter topic


def test_dead_letters_also_go_to_the_dead_letter_topic(tmp_path, kafka, create_topic):
    import json

    from operators.samples.source import SampleSource

    topic, dead_topic = create_topic("oracle"), create_topic("dead")
    s = settings_for(ZTF, tmp_path, KAFKA_BROKERS=kafka.bootstrap, KAFKA_TOPIC="unused", ALERTFLOW_RECOVERY="false",
                     ORACLE_RESULTS_TOPIC=topic, ALERTFLOW_DEADLETTER_TOPIC=dead_topic)
    run_main(build_flow(ZTF, s, source=SampleSource(s.outputs.sample_dir, ZTF.topic),
                        store=EmbeddedStore(ZTF.sample_dir, ZTF.collections)))
    in_file = sorted(json.dumps(d, sort_keys=True) for d in read_dead_letters(s.deadletters))
    on_topic = sorted(m.value().decode() for m in kafka.read_to_end(dead_topic))
    assert len(in_file) == 4 and on_topic == in_file  # 3 malformed messages, 1 alert without documents


def topic_sink(kafka, topic, letters, **config):
    from operators.sinks.results_topic import ResultsTopicSink

    return ResultsTopicSink(kafka.bootstrap, topic, config, survey="ZTF", refuse=letters.extend,
                            backoff_initial_s=0.2, backoff_max_s=0.5)


def test_a_record_larger_than_kafka_takes_is_a_dead_letter_and_the_rest_is_delivered(kafka, create_topic):
    from operators.sinks.results_topic import result_message

    topic, letters = create_topic("oracle"), []
    part = topic_sink(kafka, topic, letters, **{"message.max.bytes": "5000"}).build("s", 0, 1)
    big = result(candid=7, object_id="ZTF" + "x" * 6000)
    part.write_batch([result_message("BTS", result(1)), result_message("BTS", big), result_message("BTS", result(2))])
    part.close()
    assert sorted(decode(m.value())[0]["candid"] for m in kafka.read_to_end(topic)) == [1, 2]
    (letter,) = letters
    assert letter.candid == 7 and letter.stage == "results_topic" and "too large" in letter.reason.lower()
    assert decode(__import__("base64").b64decode(letter.payload_b64))[0]["objectId"] == big.objectId


class RefusingProducer:
    """Kafka's answer in a delivery report (a broker whose topic takes smaller records than we
    send; Tansu does not enforce max.message.bytes): every message with "big" in its key fails."""

    def __init__(self):
        self.reports, self.sent = [], []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        self.reports.append((key, value, on_delivery))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        from confluent_kafka import KafkaError

        for key, value, report in self.reports:
            if b"big" in key:
                report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"), None)
            else:
                self.sent.append(key)
        self.reports = []
        return 0


def test_a_refusal_in_a_delivery_report_is_a_dead_letter_with_kafkas_reason(kafka):
    from operators.sinks.results_topic import _ResultsTopicPartition, result_message

    letters = []
    sink = topic_sink(kafka, "t", letters)
    producer = RefusingProducer()
    part = _ResultsTopicPartition(sink, producer)
    part.write_batch([result_message("BTS", result(1, "ZTFa")), result_message("BTS", result(2, "ZTFbig"))])
    assert producer.sent == [b"ZTFa"]
    (letter,) = letters
    assert letter.candid == 2 and letter.reason == "results topic refused: Broker: Message size too large"


def test_a_broker_outage_while_writing_is_waited_out_and_nothing_is_lost(tmp_path):
    import threading
    import time

    from operators.runtime.logs import STOPPING
    from operators.sinks.results_topic import result_message
    from tests.conftest import KafkaService

    broker = KafkaService(tmp_path)
    broker.start()
    try:
        topic = broker.create_topic("oracle", unique=False)
        letters = []
        part = topic_sink(broker, topic, letters, **{"message.timeout.ms": "1500"}).build("s", 0, 1)
        part.write_batch([result_message("BTS", result(0))])
        broker.stop()
        done = threading.Event()
        writer = threading.Thread(target=lambda: (part.write_batch(
            [result_message("BTS", result(c)) for c in (1, 2, 3)]), done.set()), daemon=True)
        writer.start()
        time.sleep(4.0)  # several 1.5 s delivery timeouts: produced again each time
        assert not done.is_set(), "write_batch returned while the broker was down"
        broker.start()
        broker._admin = None
        broker.create_topic("oracle", unique=False)  # memory storage: the topic went with the broker
        assert done.wait(60), "not delivered after the broker came back"
        got = sorted(decode(m.value())[0]["candid"] for m in broker.read(topic, 3, timeout_s=10))
        assert got == [1, 2, 3] and letters == []

        # Ctrl-C during an outage ends the wait at once.
        broker.stop()
        stopped = []
        writer = threading.Thread(target=lambda: _catch(stopped, part.write_batch, [result_message("BTS", result(4))]))
        writer.start()
        time.sleep(2.0)
        STOPPING.set()
        writer.join(5)
        assert stopped == ["KeyboardInterrupt"]
    finally:
        STOPPING.clear()
        broker.stop()


def _catch(out: list, fn, *args):
    try:
        fn(*args)
    except KeyboardInterrupt:
        out.append("KeyboardInterrupt")


def test_a_mongodb_outage_while_writing_is_waited_out_on_a_real_server(restartable_mongo):
    import time

    server = restartable_mongo
    letters, pauses = [], []
    sink = ResultsCollectionSink(server.settings("boom", timeout_ms=500), "boom", "ZTF_alerts_oracle", survey="ZTF",
                                 taxonomy="BTS", refuse=letters.extend,
                                 sleep=lambda s: (pauses.append(s), time.sleep(min(s, 0.5))))
    part = sink.build("c", 0, 1)  # indexes created while the server is up
    server.stop()
    back = server.start_later(2.0)
    part.write_batch([[result(1), result(2)], [result(3)]])
    back.join()
    assert sorted(d["_id"] for d in server.client()["boom"]["ZTF_alerts_oracle"].find({})) == [1, 2, 3]
    assert pauses and letters == []
