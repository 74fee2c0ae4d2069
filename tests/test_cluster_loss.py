"""A two-process cluster that loses a process (`kill -9`, on progress): the survivor stops
with one line and status 4 (operators/runtime/exits.py), and a restart of the cluster, at
the same shape or another worker count, writes every alert and dead letter exactly once.
Also MongoDB restarted under a running cluster: the flow waits, nothing is skipped."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from operators.io.deadletter import read_dead_letters
from operators.oracle.results import read_results
from operators.oracle.surveys import ZTF
from operators.runtime.config import KafkaSettings
from operators.runtime.exits import EXIT_PEER_LOST
from operators.runtime.fritz_settings import DEFAULT_ORIGIN
from operators.samples.load import load
from tests.conftest import _stop_process, free_port
from tests.fakes import FakeSkyPortal
from tests.test_results_flow import published, same_classification
from tests.test_kafka_flow import STAMPLESS, expected_outcome, flow_env, start_flow, stop, wait_for

pytestmark = pytest.mark.services

REPEAT = 50  # 50 × 41 messages ≥ 2,000 on 4 partitions


def publish(kafka, topic: str, mongo_settings, partitions: int = 4, repeat: int = REPEAT, sample=STAMPLESS,
            before: int = 0) -> list[bytes]:
    """Publish the sample `repeat` times; every message of the topic (`before` were there already)."""
    report = load(sample, ZTF.collections, mongo_settings,
                  KafkaSettings(brokers=(kafka.bootstrap,), topic=topic, group_id="x", starting_offset="beginning"),
                  partitions=partitions, repeat=repeat)
    values = [m.value() for m in kafka.read(topic, before + report.messages, timeout_s=60)]
    assert len(values) == before + report.messages, (len(values), before, report.messages)
    return values


def cluster(env: dict, tmp_path: Path, tag: str, processes: int = 2, workers: int = 1) -> list[subprocess.Popen]:
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    shape = ["-a", addresses] if processes > 1 else []
    return [start_flow(env, *(["-i", str(i)] if processes > 1 else []), *shape, "-w", str(workers),
                       log=tmp_path / f"{tag}{i}.log") for i in range(processes)]


def rows_in(csv: Path) -> int:
    return len(read_results(csv)) if csv.exists() else 0


def kill_on_progress(procs, victim: int, csv: Path, rows: int, timeout_s: float = 120.0) -> float:
    """`kill -9` process `victim` once the CSV holds `rows` rows; returns when."""
    deadline = time.monotonic() + timeout_s
    while rows_in(csv) < rows:
        assert time.monotonic() < deadline, f"no progress: {rows_in(csv)} rows"
        assert all(p.poll() is None for p in procs), [p.returncode for p in procs]
        time.sleep(0.1)
    procs[victim].send_signal(signal.SIGKILL)
    return time.monotonic()


def assert_exactly_once(results: Path, rows_expected: set, malformed: int) -> None:
    rows = read_results(results / "oracle_ztf_results.csv")
    assert rows.candid.is_unique, "a replayed alert was written twice"
    assert set(rows.candid) == rows_expected
    letters = read_dead_letters(results / "oracle_ztf_deadletters.jsonl")
    parse = [(d["partition"], d["offset"]) for d in letters if d["stage"] == "parse"]
    assert len(parse) == len(set(parse)) == malformed
    later = [(d["stage"], d["partition"], d["offset"], d["candid"]) for d in letters if d["stage"] != "parse"]
    assert len(later) == len(set(later)), "a dead letter was written twice"  # one per message


# ---- Fritz across the loss and the restart: no duplicate annotation (issue 28 item 2) ----
# SkyPortal as it behaves (tests/fakes.py): GET shows only the caller's groups, PUT only by the
# author, one annotation per object and origin, 429 at 5 r/s (burst 10) per token. A restarted
# process knows no annotation id: its POST is refused ("already exists"), it must find its own
# annotation and update it in place, not fail or write another.

FRITZ_TOKEN = "fritz-cluster-loss-token-0123456789"


@pytest.fixture
def fritz():
    objects = tuple(d["_id"] for d in STAMPLESS.aux)
    with FakeSkyPortal(token=FRITZ_TOKEN, sources=objects, rate=(5.0, 10)) as fake:
        yield fake


def fritz_env(fritz: FakeSkyPortal) -> dict:
    # Reads do not hold batches back (they still share the token's budget with the annotations).
    return {"FRITZ_TOKEN": FRITZ_TOKEN, "FRITZ_URL": fritz.url, "FRITZ_CONTEXT_TIMEOUT": 0}


def wait_for_fritz(fritz: FakeSkyPortal, csv: Path, timeout_s: float = 90.0) -> None:
    """Until every object with a row is annotated and Fritz has heard nothing for 2 s (Ctrl-C
    does not wait for the annotations still queued: the next alert of the object sends them)."""
    objects = set(read_results(csv).objectId)
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        calls = fritz.calls()
        quiet = not calls or time.monotonic() - calls[-1]["t"] > 2.0
        if quiet and all(fritz.annotations_on(o) for o in objects):
            print(f"waited {time.monotonic() - started:.1f} s for Fritz after the last row")
            return
        time.sleep(0.3)
    raise AssertionError(f"Fritz: {sum(bool(fritz.annotations_on(o)) for o in objects)} of {len(objects)} "
                         f"objects annotated")


def assert_one_annotation_per_object(fritz: FakeSkyPortal, csv: Path, before: dict, restarted_at: float,
                                     second_log: str) -> None:
    rows = read_results(csv)
    for obj, of_obj in rows.groupby("objectId"):
        (note,) = fritz.annotations_on(obj)  # exactly one
        assert note["author_id"] == fritz.bot.id and note["origin"] == DEFAULT_ORIGIN
        assert note["data"]["SN-Ia"] in {round(v, 4) for v in of_obj["SN-Ia"]}, obj  # one of its classifications
        if obj in before:
            assert note["id"] == before[obj]["id"], "the annotation was replaced, not updated"
    updated = [c for c in fritz.calls("PUT") if c["t"] > restarted_at and c["parts"][-1] in
               {str(a["id"]) for a in before.values()}]
    print(f"Fritz: {len(before)} objects annotated before the loss, {len(updated)} updates of them after the "
          f"restart, {len(fritz.limited)} requests answered 429")
    if before:
        assert updated, "the restart never updated an annotation written before the loss"
    totals = re.findall(r"Fritz annotations this run: (\{[^}]*\})", second_log)
    assert totals and not any(k in t for t in totals for k in ("'failed'", "'forbidden'")), totals


@pytest.mark.parametrize("victim, restart", [(1, dict(processes=2, workers=1)), (0, dict(processes=1, workers=2))],
                         ids=["restart-same-shape", "restart-as-one-process-two-workers"])
def test_a_lost_process_stops_the_survivor_with_one_line_and_the_restart_loses_nothing(
        tmp_path, kafka, create_topic, mongo, mongo_db, victim, restart, fritz):
    topic = create_topic("ztf_lost", partitions=4)
    results_topic = create_topic("ztf_lost_results", partitions=4)
    values = publish(kafka, topic, mongo.settings(mongo_db))
    rows_expected, malformed = expected_outcome(values)
    env = flow_env(tmp_path, kafka, topic, mongo.uri, mongo_db, ORACLE_BATCH_SIZE=64,
                   ORACLE_RESULTS_COLLECTION="ZTF_alerts_oracle", ORACLE_RESULTS_TOPIC=results_topic,
                   **fritz_env(fritz))
    csv = tmp_path / "results" / "oracle_ztf_results.csv"
    procs = cluster(env, tmp_path, "first")
    try:
        killed_at = kill_on_progress(procs, victim, csv, rows=len(rows_expected) // 10)
        survivor = procs[1 - victim]
        code = survivor.wait(timeout=60)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            _stop_process(p)
    log = (tmp_path / f"first{1 - victim}.log").read_text()
    assert code == EXIT_PEER_LOST, log[-3000:]
    assert "Traceback" not in log and "panic" not in log.lower(), log[-3000:]
    lines = [line for line in log.splitlines() if "of the cluster" in line]
    assert len(lines) == 1, lines
    assert f"lost process {victim} (" in lines[0] and "Restart every process of the cluster" in lines[0]
    assert "resumes from the last snapshot" in lines[0] and str(tmp_path / "recovery") in lines[0]
    assert waited < 30, f"the survivor took {waited:.0f} s to stop"
    # Usually rows are missing here (the victim's partitions stopped); under load the survivor may
    # have written them all before it noticed: the restart must then add nothing.
    print(f"rows before the restart: {rows_in(csv)} of {len(rows_expected)}")

    before = {a["obj_id"]: a for a in (dict(a) for a in fritz.annotations.values())}  # Fritz at the restart
    restarted_at = time.monotonic()
    procs = cluster(env, tmp_path, "second", **restart)
    try:
        wait_for(tmp_path / "results", len(rows_expected), malformed, procs, timeout_s=240)
        time.sleep(2.0)  # nothing more should arrive
        wait_for_fritz(fritz, csv)
    finally:
        codes = stop(*procs)
    assert all(c in (0, 130, -signal.SIGINT) for c in codes), codes
    assert_exactly_once(tmp_path / "results", rows_expected, malformed)
    ids = [d["_id"] for d in mongo.client()[mongo_db]["ZTF_alerts_oracle"].find({}, {"_id": 1})]
    assert set(ids) == rows_expected, "an alert is missing from the results collection"
    # The topic: every alert at least once; a repeat only for an alert classified again after
    # the last snapshot (docs/results-outputs.md), with the same classification.
    on_topic = published(kafka, results_topic)
    assert set(on_topic) == rows_expected, (f"{len(rows_expected - set(on_topic))} alerts missing from the "
                                            f"results topic, {len(set(on_topic) - rows_expected)} unexpected")
    repeated = {c: recs for c, recs in on_topic.items() if len(recs) > 1}
    assert all(same_classification(recs) for recs in repeated.values())
    print(f"results topic: {len(on_topic)} alerts, {len(repeated)} published again after the restart")
    second_log = "".join(p.read_text() for p in tmp_path.glob("second*.log"))
    assert_one_annotation_per_object(fritz, csv, before, restarted_at, second_log)


def test_mongodb_restart_under_a_running_cluster_skips_nothing(tmp_path, kafka, create_topic, restartable_mongo):
    mongo = restartable_mongo
    sample = STAMPLESS  # nx-27017's on-disk store cannot hold raw bytes either
    topic = create_topic("ztf_mongo_restart", partitions=4)
    load(sample, ZTF.collections, mongo.settings("boom"), None, repeat=12)  # every document first
    first = publish(kafka, topic, None, repeat=4, sample=sample)
    env = flow_env(tmp_path, kafka, topic, mongo.uri, "boom", ORACLE_BATCH_SIZE=32, MONGODB_TIMEOUT_MS=1000)
    csv = tmp_path / "results" / "oracle_ztf_results.csv"
    procs = cluster(env, tmp_path, "flow")
    try:
        rows_first, bad_first = expected_outcome(first)
        wait_for(tmp_path / "results", len(rows_first), bad_first, procs)
        mongo.stop()
        # More alerts arrive on every partition while the database is down (copies 1-4 again, then 5-12).
        everything = publish(kafka, topic, None, repeat=12, sample=sample, before=len(first))
        rows_expected, malformed = expected_outcome(everything)
        time.sleep(4)
        assert all(p.poll() is None for p in procs), "the cluster must wait for MongoDB, not exit"
        assert rows_in(csv) == len(rows_first), "rows written while MongoDB was down"
        mongo.start()
        wait_for(tmp_path / "results", len(rows_expected), malformed, procs, timeout_s=240)
        time.sleep(1.0)
    finally:
        stop(*procs)
    assert_exactly_once(tmp_path / "results", rows_expected, malformed)
    logs = "".join((tmp_path / f"flow{i}.log").read_text() for i in (0, 1))
    assert "the flow waits" in logs
