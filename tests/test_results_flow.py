"""The results topic and collection as users run them: `python -m bytewax.run dataflows.ztf`
in subprocesses against Tansu and nx-27017 — `kill -9` and restart, a two-process cluster
without a shared filesystem, records Kafka refuses, and names refused before the start."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from operators.io.deadletter import read_dead_letters
from operators.oracle.result_record import decode
from operators.runtime.config import REPO_ROOT, KafkaSettings
from operators.samples.load import load
from operators.oracle.surveys import ZTF
from tests.conftest import _stop_process, free_port
from tests.test_kafka_flow import SAMPLE, STAMPLESS, expected_outcome, flow_env, start_flow, stop

pytestmark = pytest.mark.services


def published(kafka, topic: str) -> dict[int, list[dict]]:
    """Every record on `topic` by candid (a list: duplicates kept)."""
    out: dict[int, list[dict]] = defaultdict(list)
    for m in kafka.read_to_end(topic):
        (rec,) = decode(m.value())
        assert m.key().decode() == rec["objectId"]
        out[rec["candid"]].append(rec)
    return out


VARYING = {"processed_at", "probabilities", "predicted_probability"}


def same_classification(records: list[dict]) -> bool:
    """Duplicates of a re-classified alert: the same record but for when it was classified and
    float32 noise in the probabilities (a batch of another size sums in another order: ~1e-7)."""
    first = records[0]
    return all({k: v for k, v in r.items() if k not in VARYING} == {k: v for k, v in first.items() if k not in VARYING}
               and all(abs(r["probabilities"][n] - p) < 1e-5 for n, p in first["probabilities"].items())
               for r in records[1:])


def wait_until(done, procs, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"flow exited early with {p.returncode}"
        if done():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_loses_nothing_on_the_topic_and_duplicates_nothing_in_the_collection(
        tmp_path, kafka, create_topic, mongo, mongo_db):
    topic = create_topic("in", partitions=2)
    results_topic = create_topic("oracle", partitions=2)
    repeat = 60  # 60 × 41 messages
    sent = load(STAMPLESS, ZTF.collections, mongo.settings(mongo_db),
                KafkaSettings(brokers=(kafka.bootstrap,), topic=topic, group_id="x", starting_offset="beginning"),
                partitions=2, repeat=repeat).messages
    values = [m.value() for m in kafka.read(topic, sent, timeout_s=60)]
    assert len(values) == sent
    expected, _ = expected_outcome(values)
    env = flow_env(tmp_path, kafka, topic, mongo.uri, mongo_db, ORACLE_BATCH_SIZE=32,
                   ORACLE_RESULTS_TOPIC=results_topic, ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle")
    coll = mongo.client()[mongo_db]["ZTF_alerts_oracle"]
    rng = random.Random(25)
    kills = 0
    for attempt in range(2):
        proc = start_flow(env, "-w", str(1 + attempt), log=tmp_path / "flow.log")
        try:  # kill -9 once the run has made progress, at a random moment
            wait_until(lambda: coll.count_documents({}) >= 150 * (attempt + 1), [proc], 120, "progress")
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            kills += 1
            proc.wait()
        finally:
            _stop_process(proc)
    assert kills == 2 and coll.count_documents({}) < len(expected), "the run ended before the last kill"
    proc = start_flow(env, "-w", "2", log=tmp_path / "flow.log")
    try:
        wait_until(lambda: coll.count_documents({}) >= len(expected), [proc], 240, "every alert in the collection")
        wait_until(lambda: len(published(kafka, results_topic)) >= len(expected), [proc], 60,
                   "every alert on the topic")
        time.sleep(1.0)
    finally:
        stop(proc)
    ids = [d["_id"] for d in coll.find({}, {"_id": 1})]
    assert len(ids) == len(set(ids)) and set(ids) == expected  # _id is unique by construction; nothing lost
    on_topic = published(kafka, results_topic)
    assert set(on_topic) == expected, "an alert classified before a kill is missing from the topic"
    duplicated = {c: recs for c, recs in on_topic.items() if len(recs) > 1}
    differing = {c: [{k: v for k, v in r.items() if v != recs[0][k]} for r in recs[1:]]
                 for c, recs in duplicated.items() if not same_classification(recs)}
    assert not differing, list(differing.items())[:3]
    extra = sum(len(r) - 1 for r in duplicated.values())
    identical = sum(r == {**recs[0], "processed_at": r["processed_at"]} for recs in duplicated.values() for r in recs[1:])
    print(f"\nkill -9 x{kills}: {len(expected)} alerts, {len(duplicated)} re-classified after the last snapshot "
          f"published twice or more ({extra} extra records, {identical} identical but for processed_at), "
          f"collection {len(ids)} documents")
    assert "Traceback" not in (tmp_path / "flow.log").read_text().split("Killed")[-1]


def test_two_processes_without_a_shared_filesystem(tmp_path, kafka, create_topic, mongo, mongo_db):
    topic = create_topic("cluster", partitions=4)
    results_topic = create_topic("oracle", partitions=2)
    sent = load(STAMPLESS, ZTF.collections, mongo.settings(mongo_db),
                KafkaSettings(brokers=(kafka.bootstrap,), topic=topic, group_id="x", starting_offset="beginning"),
                partitions=4, repeat=3).messages
    values = [m.value() for m in kafka.read(topic, sent)]
    assert len(values) == sent
    expected, malformed = expected_outcome(values)
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "BOOM_", "MONGODB_", "ALERTFLOW_"))}
    env.update({"KAFKA_BROKERS": kafka.bootstrap, "KAFKA_TOPIC": topic, "MONGODB_URI": mongo.uri,
                "BOOM_DATABASE__NAME": mongo_db, "ORACLE_BATCH_TIMEOUT_S": "0.2", "PYTHONUNBUFFERED": "1",
                "ALERTFLOW_SNAPSHOT_INTERVAL_S": "1", "PYTHONPATH": str(REPO_ROOT),
                "ORACLE_RESULTS_TOPIC": results_topic, "ORACLE_RESULTS_COLLECTION": "ZTF_alerts_oracle",
                "ALERTFLOW_RESULTS_CSV": "false"})
    homes = [tmp_path / f"host{i}" for i in (0, 1)]  # each process's own working directory, nothing shared
    procs = []
    for i, home in enumerate(homes):
        home.mkdir()
        with (home / "flow.log").open("ab") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.ztf", "-i", str(i),
                                           "-a", addresses], cwd=home, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
    coll = mongo.client()[mongo_db]["ZTF_alerts_oracle"]
    letters = lambda: [d for h in homes for d in read_dead_letters(  # noqa: E731
        h / "results" / f"oracle_ztf_deadletters-{homes.index(h)}.jsonl") if d["stage"] == "parse"]
    try:
        wait_until(lambda: coll.count_documents({}) >= len(expected) and len(letters()) >= malformed, procs, 180,
                   "every alert in the collection")
        time.sleep(1.0)
    finally:
        codes = stop(*procs)
    logs = [(h / "flow.log").read_text() for h in homes]
    assert all(c in (0, 130, -signal.SIGINT) and "Traceback" not in t for c, t in zip(codes, logs)), logs
    ids = [d["_id"] for d in coll.find({}, {"_id": 1})]
    assert len(ids) == len(set(ids)) and set(ids) == expected  # every alert exactly once
    assert set(published(kafka, results_topic)) == expected  # at least once on the topic
    assert all("ZTF batch:" in t for t in logs), "both processes classified"
    assert not any((h / "results" / "oracle_ztf_results.csv").exists() for h in homes)
    assert sorted((d["partition"], d["offset"]) for d in letters()) == sorted(
        {(d["partition"], d["offset"]) for d in letters()})
    assert len(letters()) == malformed


def test_records_kafka_refuses_become_dead_letters_with_the_reason(tmp_path, kafka, create_topic, mongo, mongo_db):
    topic = create_topic("in")
    results_topic = create_topic("oracle")
    load(SAMPLE, ZTF.collections, mongo.settings(mongo_db),
         KafkaSettings(brokers=(kafka.bootstrap,), topic=topic, group_id="x", starting_offset="beginning"),
         partitions=1)
    values = [m.value() for m in kafka.read(topic, len(SAMPLE.messages))]
    expected, _ = expected_outcome(values)
    # Every record (~3 kB: the schema travels with it) is larger than the producer may send.
    env = flow_env(tmp_path, kafka, topic, mongo.uri, mongo_db, ORACLE_RESULTS_TOPIC=results_topic,
                   KAFKA_OPT_MESSAGE_MAX_BYTES=1000)
    delivery = tmp_path / "results" / "oracle_ztf_deadletters-delivery-0.jsonl"
    proc = start_flow(env, log=tmp_path / "flow.log")
    try:
        wait_until(lambda: len(read_dead_letters(delivery)) >= len(expected), [proc], 120, "the dead letters")
        time.sleep(0.5)
    finally:
        stop(proc)
    letters = read_dead_letters(delivery)
    assert {d["candid"] for d in letters} == expected and len(letters) == len(expected)
    assert all(d["stage"] == "results_topic" and "too large" in d["reason"].lower() and d["payload_b64"]
               for d in letters), letters[0]
    assert kafka.read_to_end(results_topic) == []


@pytest.mark.parametrize("env, variable", [
    ({"ORACLE_RESULTS_COLLECTION": "oracle$results", "MONGODB_URI": "mongodb://127.0.0.1:1/"},
     "ORACLE_RESULTS_COLLECTION"),
    ({"ORACLE_RESULTS_COLLECTION": "ZTF_alerts_oracle"}, "MONGODB_URI"),
])
def test_bad_results_settings_stop_the_flow_before_it_starts(tmp_path, env, variable):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "BOOM_", "MONGODB_", "ALERTFLOW_",
                                                                       "ORACLE_"))}
    base.update({"ALERTFLOW_RESULTS_DIR": str(tmp_path / "r"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "l"), **env})
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.ztf"], cwd=REPO_ROOT, env=base,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and variable in lines[0] and " -> " in lines[0], done.stderr
    assert not Path(tmp_path / "r").exists() or not any(Path(tmp_path / "r").iterdir())
