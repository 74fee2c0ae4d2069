"""The ZTF flow against a real Kafka-protocol broker and a real MongoDB-protocol server,
run the way users run it: `python -m bytewax.run dataflows.ztf` in a subprocess."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from bytewax.testing import run_main

from dataflows.oracle import build_flow
from models.oracle.taxonomy import ZTF_TAXONOMY
from operators.runtime.config import REPO_ROOT, KafkaSettings
from operators.io.deadletter import read_dead_letters
from operators.samples.load import load, read_sample
from operators.oracle.messages import decode_avro
from operators.oracle.results import read_results
from operators.oracle.surveys import ZTF
from tests.conftest import _stop_process, free_port
from tests.helpers import settings_for

pytestmark = pytest.mark.services

SAMPLE = read_sample(ZTF.sample_dir, ZTF.collections)
# The default model (BTSv2) reads no cutouts (operators/oracle/steps.py `enrich`): tests that load
# many copies leave them out. At ~50 kB each they were most of nx-27017's loading time.
STAMPLESS = replace(SAMPLE, cutouts=[])


def expected_outcome(values: list[bytes]) -> tuple[set[int], int]:
    """Candids that must get a row, and how many messages are malformed."""
    aux_ids = {d["_id"] for d in SAMPLE.aux}
    rows, malformed = set(), 0
    for v in values:
        try:
            rec = decode_avro(v)
            names = {f.get("filter_name") or f["filter_id"] for f in rec["filters"]}
            rec["candid"]
        except Exception:
            malformed += 1
            continue
        if ZTF.filter_name in names and rec["objectId"] in aux_ids:
            rows.add(rec["candid"])
    return rows, malformed


def flow_env(tmp_path: Path, kafka, topic: str, mongo_uri: str, database: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "BOOM_", "MONGODB_", "ALERTFLOW_"))}
    env.update({
        "KAFKA_BROKERS": kafka.bootstrap, "KAFKA_TOPIC": topic,
        "MONGODB_URI": mongo_uri, "BOOM_DATABASE__NAME": database,
        "ALERTFLOW_RESULTS_DIR": str(tmp_path / "results"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "logs"),
        "ALERTFLOW_RECOVERY_DIR": str(tmp_path / "recovery"), "ALERTFLOW_SNAPSHOT_INTERVAL_S": "1",
        "ORACLE_BATCH_TIMEOUT_S": "0.2", "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_flow(env: dict, *args: str, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.ztf", *args],
                                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(results_dir: Path, rows: int, letters: int, procs, timeout_s: float = 120.0) -> None:
    csv, dead = results_dir / "oracle_ztf_results.csv", results_dir / "oracle_ztf_deadletters.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"flow exited early with {p.returncode}"
        n_rows = len(read_results(csv)) if csv.exists() else 0
        if n_rows >= rows and len(read_dead_letters(dead)) >= letters:
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out: {n_rows}/{rows} rows, {len(read_dead_letters(dead))}/{letters} dead letters")


def stop(*procs: subprocess.Popen) -> list[int]:
    for p in procs:
        p.send_signal(signal.SIGINT)  # what Ctrl-C does
    try:
        return [p.wait(timeout=30) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise


def embedded_rows(tmp_path: Path):
    settings = settings_for(ZTF, tmp_path / "embedded")
    run_main(build_flow(ZTF, settings))
    return read_results(settings.results_csv).set_index("candid")


def test_two_workers_drain_the_topic_with_the_embedded_probabilities(tmp_path, kafka, create_topic, mongo, mongo_db):
    topic = create_topic("ztf_results", partitions=2)
    load(SAMPLE, ZTF.collections, mongo.settings(mongo_db),
         KafkaSettings(brokers=(kafka.bootstrap,), topic=topic, group_id="x", starting_offset="beginning"),
         partitions=2)
    values = [m.value() for m in kafka.read(topic, len(SAMPLE.messages))]
    rows_expected, malformed = expected_outcome(values)
    env = flow_env(tmp_path, kafka, topic, mongo.uri, mongo_db)
    proc = start_flow(env, "-w", "2", log=tmp_path / "flow.log")
    try:
        wait_for(tmp_path / "results", len(rows_expected), malformed, [proc])
        time.sleep(1.0)  # nothing more should arrive
    finally:
        code, = stop(proc)
    log = (tmp_path / "flow.log").read_text()
    assert code in (0, 130, -signal.SIGINT) and "Traceback" not in log, log[-3000:]
    assert "stopped by Ctrl-C" in log

    rows = read_results(tmp_path / "results" / "oracle_ztf_results.csv")
    assert rows.candid.is_unique and set(rows.candid) == rows_expected
    letters = read_dead_letters(tmp_path / "results" / "oracle_ztf_deadletters.jsonl")
    parse = [d for d in letters if d["stage"] == "parse"]
    assert len(parse) == malformed
    assert all(d["topic"] == topic and d["partition"] in (0, 1) and d["offset"] is not None for d in parse)
    assert any(d["reason"] == "no aux document" for d in letters)

    embedded = embedded_rows(tmp_path)
    nodes = list(ZTF_TAXONOMY.nodes)
    mine = rows.set_index("candid").loc[sorted(rows_expected), nodes]
    np.testing.assert_allclose(mine.to_numpy(), embedded.loc[sorted(rows_expected), nodes].to_numpy(), atol=1e-5)
    assert "recovery on" in log
    assert "password" not in log.lower()


def test_two_process_cluster_shares_partitions_and_classifies_each_alert_once(
        tmp_path, kafka, create_topic, mongo, mongo_db):
    topic = create_topic("ztf_cluster", partitions=4)
    load(STAMPLESS, ZTF.collections, mongo.settings(mongo_db),
         KafkaSettings(brokers=(kafka.bootstrap,), topic=topic, group_id="x", starting_offset="beginning"),
         partitions=4, repeat=3, broken=True)
    values = [m.value() for m in kafka.read(topic, 3 * len(SAMPLE.messages))]
    rows_expected, malformed = expected_outcome(values)
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    env = flow_env(tmp_path, kafka, topic, mongo.uri, mongo_db)
    procs = [start_flow(env, "-i", str(i), "-a", addresses, log=tmp_path / f"proc{i}.log") for i in (0, 1)]
    try:
        wait_for(tmp_path / "results", len(rows_expected), malformed, procs)
        time.sleep(1.0)
    finally:
        codes = stop(*procs)
    logs = [(tmp_path / f"proc{i}.log").read_text() for i in (0, 1)]
    assert all(c in (0, 130, -signal.SIGINT) and "Traceback" not in t for c, t in zip(codes, logs)), logs
    rows = read_results(tmp_path / "results" / "oracle_ztf_results.csv")
    assert rows.candid.is_unique and set(rows.candid) == rows_expected
    # Both processes did model work: batches are spread over the cluster.
    assert all("ZTF batch:" in text for text in logs)


def test_kill_9_at_random_points_loses_and_duplicates_nothing(tmp_path, kafka, create_topic, mongo, mongo_db):
    topic = create_topic("ztf_crash", partitions=2)
    repeat = 50  # 50 × 41 messages ≥ 2,000
    load(STAMPLESS, ZTF.collections, mongo.settings(mongo_db),
         KafkaSettings(brokers=(kafka.bootstrap,), topic=topic, group_id="x", starting_offset="beginning"),
         partitions=2, repeat=repeat, broken=True)  # the broken messages too, at scale
    values = [m.value() for m in kafka.read(topic, repeat * len(SAMPLE.messages), timeout_s=60)]
    assert len(values) >= 2000
    rows_expected, malformed = expected_outcome(values)
    env = flow_env(tmp_path, kafka, topic, mongo.uri, mongo_db, ORACLE_BATCH_SIZE=64)
    csv = tmp_path / "results" / "oracle_ztf_results.csv"
    rng = random.Random(7)
    kills = 0
    for attempt in range(3):
        proc = start_flow(env, "-w", str(1 + attempt % 2), log=tmp_path / "flow.log")
        try:
            # Kill once some rows exist, at a random moment.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (not csv.exists() or csv.stat().st_size < 2000 * (attempt + 1)):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        finally:
            _stop_process(proc)
    assert kills >= 2
    proc = start_flow(env, "-w", "2", log=tmp_path / "flow.log")
    try:
        wait_for(tmp_path / "results", len(rows_expected), malformed, [proc], timeout_s=240)
        time.sleep(2.0)
    finally:
        stop(proc)
    rows = read_results(csv)
    assert rows.candid.is_unique, "a replayed alert was written twice"
    assert set(rows.candid) == rows_expected
    letters = read_dead_letters(tmp_path / "results" / "oracle_ztf_deadletters.jsonl")
    parse = [(d["partition"], d["offset"]) for d in letters if d["stage"] == "parse"]
    assert len(parse) == len(set(parse)) == malformed
