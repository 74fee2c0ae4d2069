"""Disk trouble mid-run: the results directory or the recovery directory fills up (a small
tmpfs of the test's own, filled by another file on progress: ENOSPC in the CSV sink's write,
SQLITE_FULL in bytewax's snapshot write). The flow stops with one line naming what could
not be written and status 5 (operators/runtime/exits.py); once space is freed, a restart
loses and duplicates nothing. Tests run as root, so permissions cannot make a directory
unwritable; a full file system is what really refuses the writes here."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from operators.runtime.exits import EXIT_DISK
from tests.conftest import _stop_process, _unavailable
from tests.test_cluster_loss import assert_exactly_once, publish, rows_in
from tests.test_kafka_flow import expected_outcome, flow_env, start_flow, stop, wait_for

pytestmark = pytest.mark.services


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs mounted at tmp_path/disk (needs the right to mount: root here and in CI)."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        _unavailable(f"cannot mount a small tmpfs to fill: {done.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> Path:
    """Take every free byte of `directory`'s file system (another program filling the disk)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        for size in (4096, 512, 1):  # the last pages
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk[:size])
    assert os.statvfs(directory).f_bavail == 0
    return filler


def run_until_full(env: dict, tmp_path: Path, directory: Path, csv: Path, rows: int) -> tuple[int, str]:
    proc = start_flow(env, log=tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 120
        while rows_in(csv) < rows:
            assert time.monotonic() < deadline and proc.poll() is None, "no progress before filling the disk"
            time.sleep(0.1)
        fill(directory)
        code = proc.wait(timeout=60)
    finally:
        _stop_process(proc)
    return code, (tmp_path / "first.log").read_text()


def resume_after_freeing(env: dict, tmp_path: Path, filler: Path, rows_expected: set, malformed: int) -> None:
    filler.unlink()
    proc = start_flow(env, log=tmp_path / "second.log")
    try:
        wait_for(Path(env["ALERTFLOW_RESULTS_DIR"]), len(rows_expected), malformed, [proc], timeout_s=240)
        time.sleep(2.0)
    finally:
        stop(proc)
    assert_exactly_once(Path(env["ALERTFLOW_RESULTS_DIR"]), rows_expected, malformed)


def one_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "cannot write" in line]
    assert len(lines) == 1, lines
    assert "Traceback" not in log and "panic" not in log.lower(), log[-3000:]
    return lines[0]


def test_results_directory_full_stops_with_status_5_and_a_restart_loses_nothing(
        tmp_path, small_disk, kafka, create_topic, mongo, mongo_db):
    topic = create_topic("ztf_results_full", partitions=2)
    values = publish(kafka, topic, mongo.settings(mongo_db), partitions=2)
    rows_expected, malformed = expected_outcome(values)
    env = flow_env(tmp_path, kafka, topic, mongo.uri, mongo_db, ORACLE_BATCH_SIZE=32,
                   ALERTFLOW_RESULTS_DIR=small_disk)
    csv = small_disk / "oracle_ztf_results.csv"
    code, log = run_until_full(env, tmp_path, small_disk, csv, rows=len(rows_expected) // 5)
    assert code == EXIT_DISK, log[-3000:]
    line = one_line(log)
    assert f"cannot write {small_disk}/oracle_ztf_" in line and os.strerror(errno.ENOSPC) in line, line
    assert "then restart" in line
    assert rows_in(csv) < len(rows_expected), "filled too late: nothing left to resume"
    resume_after_freeing(env, tmp_path, small_disk / "filler", rows_expected, malformed)


def test_recovery_directory_full_stops_with_status_5_and_a_restart_loses_nothing(
        tmp_path, small_disk, kafka, create_topic, mongo, mongo_db):
    topic = create_topic("ztf_recovery_full", partitions=2)
    values = publish(kafka, topic, mongo.settings(mongo_db), partitions=2)
    rows_expected, malformed = expected_outcome(values)
    env = flow_env(tmp_path, kafka, topic, mongo.uri, mongo_db, ORACLE_BATCH_SIZE=32,
                   ALERTFLOW_RECOVERY_DIR=small_disk / "recovery")
    csv = tmp_path / "results" / "oracle_ztf_results.csv"
    code, log = run_until_full(env, tmp_path, small_disk, csv, rows=len(rows_expected) // 5)
    assert code == EXIT_DISK, log[-3000:]
    line = one_line(log)
    assert f"cannot write {small_disk / 'recovery'}: recovery store:" in line, line
    # (the rows after the last snapshot are cut and written again on restart; idle, the flow
    # still snapshots every second, so it stops even when every row was already written)
    resume_after_freeing(env, tmp_path, small_disk / "filler", rows_expected, malformed)
