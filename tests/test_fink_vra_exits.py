"""The Fink VRA flow stops as the ORACLE flows do (issue 28 items 2 and 4, docs/reliability.md):
its feature dataset filling up mid-run (the small tmpfs of tests/test_disk_trouble.py) is one
line and status 5, and a restart loses and doubles nothing; a lost process of a two-process
cluster is one line and status 4 on the survivor."""

from __future__ import annotations

import copy
import errno
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fastavro
import pytest

from operators.io.deadletter import read_dead_letters
from operators.runtime.config import REPO_ROOT
from operators.runtime.exits import EXIT_DISK, EXIT_PEER_LOST
from operators.vra.steps import read_features
from tests.conftest import _stop_process, free_port
from tests.test_disk_trouble import fill, one_line, small_disk  # noqa: F401 - small_disk is a fixture

SAMPLE = REPO_ROOT / "data" / "fink" / "fink_ztf_sample.avro"


def fink_messages(copy_number: int, copies: int) -> tuple[list[bytes], list[bytes], set[int]]:
    """The real Fink alerts `copies` times, each copy with new candids (a new night), as Fink
    publishes them (schemaless Avro, the writer schema in the key): values, keys, candids."""
    with SAMPLE.open("rb") as f:
        reader = fastavro.reader(f)
        schema, records = reader.writer_schema, list(reader)
    parsed, key = fastavro.parse_schema(schema), json.dumps(schema).encode()
    values, candids = [], set()
    for c in range(copy_number, copy_number + copies):
        for i, rec in enumerate(records):
            rec = copy.deepcopy(rec)
            rec["candid"] = rec["candidate"]["candid"] = 10**15 * (c + 1) + i
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, rec)
            values.append(buf.getvalue())
            candids.add(rec["candid"])
    return values, [key] * len(values), candids


def rows_in(out_dir: Path) -> int:
    try:
        return len(read_features(out_dir))
    except (OSError, ValueError):  # no file yet
        return 0


def start_vra(env: dict, log: Path, *args: str) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.fink_vra", *args], cwd=REPO_ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def vra_env(kafka, topic: str, out: Path, deadletters: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINK_VRA_", "LASAIR_", "KAFKA_"))}
    env.update({"FINK_VRA_KAFKA_BROKERS": kafka.bootstrap, "FINK_VRA_TOPIC": topic, "FINK_VRA_STREAM_FILTER": "false",
                "FINK_VRA_OUT_DIR": str(out), "FINK_VRA_DEADLETTERS": str(deadletters), "PYTHONUNBUFFERED": "1"})
    return env


@pytest.mark.services
def test_fink_vra_output_full_stops_with_status_5_and_a_restart_loses_nothing(
        tmp_path, small_disk, kafka, create_topic):  # noqa: F811 - the fixture
    topic = create_topic("fink_vra_full", partitions=2)
    values, keys, first = fink_messages(0, 4)
    kafka.produce(topic, values + [b"\x01\x02 not an alert"], keys + [keys[0]])
    out = small_disk / "fink_vra"
    env = vra_env(kafka, topic, out, tmp_path / "dl.jsonl")
    proc = start_vra(env, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 120
        while rows_in(out) < len(first):
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        filler = fill(small_disk)
        values, keys, second = fink_messages(4, 4)  # the next night arrives: its rows cannot be written
        kafka.produce(topic, values, keys)
        code = proc.wait(timeout=60)
    finally:
        _stop_process(proc)
    log = (tmp_path / "first.log").read_text()
    assert code == EXIT_DISK, log[-3000:]
    line = one_line(log)
    assert f"cannot write {out}: {os.strerror(errno.ENOSPC)}" in line and "then restart" in line, line
    assert rows_in(out) < len(first | second)
    assert not list(out.glob(".*.tmp")), "a half-written file was left on the full disk"

    filler.unlink()
    proc = start_vra(env, tmp_path / "second.log")
    try:
        deadline = time.monotonic() + 120
        while rows_in(out) < len(first | second) or len(read_dead_letters(tmp_path / "dl.jsonl")) < 1:
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # nothing more should arrive
    finally:
        _stop_process(proc)
    rows = read_features(out)
    assert rows.index.is_unique and set(rows.index) == first | second
    (letter,) = read_dead_letters(tmp_path / "dl.jsonl")  # the garbage message, once
    assert letter["reason"].startswith("undecodable")


@pytest.mark.services
def test_fink_vra_cluster_losing_a_process_stops_the_survivor_with_one_line(tmp_path, kafka, create_topic):
    topic = create_topic("fink_vra_lost", partitions=2)
    values, keys, _ = fink_messages(0, 2)
    kafka.produce(topic, values, keys)
    out = tmp_path / "fink_vra"
    env = vra_env(kafka, topic, out, tmp_path / "dl.jsonl")
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    procs = [start_vra(env, tmp_path / f"proc{i}.log", "-i", str(i), "-a", addresses) for i in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while rows_in(out) < len(values):  # both processes run and wrote their partitions' rows
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                (tmp_path / "proc0.log").read_text()[-3000:]
            time.sleep(0.2)
        procs[1].kill()  # kill -9
        code = procs[0].wait(timeout=60)
    finally:
        for p in procs:
            _stop_process(p)
    log = (tmp_path / "proc0.log").read_text()
    assert code == EXIT_PEER_LOST, log[-3000:]
    assert "Traceback" not in log and "panic" not in log.lower(), log[-3000:]
    (line,) = [m for m in log.splitlines() if "of the cluster" in m]
    assert "lost process 1 (127.0.0.1:" in line and "Restart every process of the cluster" in line, line
