"""Disk trouble beyond the ORACLE flows' results and recovery directories (issue 28 item 4,
docs/reliability.md): the Fink VRA flow's feature dataset filling up mid-run stops it with the
same one line and status 5 as the ORACLE flows, and a restart loses and doubles nothing; the
log directory filling up stops nothing (file logging is suspended with one line on stderr and
resumes by itself once there is room). Same small tmpfs as tests/test_disk_trouble.py."""

from __future__ import annotations

import copy
import errno
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import fastavro
import pytest

from operators.io.deadletter import read_dead_letters
from operators.runtime.config import REPO_ROOT
from operators.runtime.exits import EXIT_DISK
from operators.vra.steps import read_features
from tests.conftest import _stop_process
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


def start_vra(env: dict, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.fink_vra"], cwd=REPO_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.services
def test_fink_vra_output_full_stops_with_status_5_and_a_restart_loses_nothing(
        tmp_path, small_disk, kafka, create_topic):  # noqa: F811 - the fixture
    topic = create_topic("fink_vra_full", partitions=2)
    values, keys, first = fink_messages(0, 4)
    kafka.produce(topic, values + [b"\x01\x02 not an alert"], keys + [keys[0]])
    out = small_disk / "fink_vra"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINK_VRA_", "LASAIR_", "KAFKA_"))}
    env.update({"FINK_VRA_KAFKA_BROKERS": kafka.bootstrap, "FINK_VRA_TOPIC": topic, "FINK_VRA_STREAM_FILTER": "false",
                "FINK_VRA_OUT_DIR": str(out), "FINK_VRA_DEADLETTERS": str(tmp_path / "dl.jsonl"),
                "PYTHONUNBUFFERED": "1"})
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


class _Console(logging.Handler):
    """What the console handler would print (stderr)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_full_log_directory_suspends_file_logging_with_one_line_and_resumes(
        small_disk, monkeypatch, capfd):  # noqa: F811 - the fixture
    from operators.runtime.logs import LogFile

    monkeypatch.setattr(LogFile, "RETRY_S", 0.5)
    logs = small_disk / "logs"
    logs.mkdir()
    file_handler, console = LogFile(logs / "oracle_ztf.log"), _Console()
    root, log = logging.getLogger(), logging.getLogger("alertflow.test_logs")
    root.addHandler(file_handler)
    root.addHandler(console)
    try:
        log.warning("before the disk filled")
        filler = fill(small_disk)
        for i in range(200):  # past the log file's last page
            log.warning("line %d while the disk is full %s", i, "x" * 100)
        said = [m for m in console.lines if "cannot be written" in m]
        assert len(said) == 1, said  # once, not once per record
        assert f"ALERTFLOW_LOGS_DIR={logs}: {os.strerror(errno.ENOSPC)}" in said[0] and "flow goes on" in said[0]
        assert "--- Logging error ---" not in capfd.readouterr().err
        assert file_handler.suspended_since is not None and file_handler.missed > 100

        filler.unlink()
        time.sleep(0.6)
        log.warning("after space was freed")
        resumed = [m for m in console.lines if "file logging resumed" in m]
        assert len(resumed) == 1 and "went to stderr only" in resumed[0], resumed
    finally:
        root.removeHandler(file_handler)
        root.removeHandler(console)
        file_handler.close()
    text = (logs / "oracle_ztf.log").read_text(errors="replace")
    assert "before the disk filled" in text and "after space was freed" in text and "file logging resumed" in text
    assert "--- Logging error ---" not in capfd.readouterr().err


def test_the_flow_goes_on_when_its_log_directory_is_full(tmp_path, small_disk):  # noqa: F811 - the fixture
    """The bundled replay with ALERTFLOW_LOGS_DIR on a full disk: every row written, status 0,
    one line on stderr naming the directory, no "--- Logging error ---" per record."""
    from operators.oracle.results import read_results
    from operators.oracle.surveys import ZTF
    from tests.helpers import sample_truth

    logs = small_disk / "logs"
    logs.mkdir()
    fill(small_disk)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "BOOM_", "MONGODB_", "ALERTFLOW_", "FRITZ_", "SLACK_", "POST_TO_SLACK"))}
    env.update({"ALERTFLOW_RESULTS_DIR": str(tmp_path / "results"), "ALERTFLOW_LOGS_DIR": str(logs),
                "PYTHONUNBUFFERED": "1"})
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.ztf"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "cannot be written" in line]
    assert len(said) == 1 and f"ALERTFLOW_LOGS_DIR={logs}" in said[0], said
    assert "Logging error" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "run summary" in done.stderr  # the lines still reach stderr
    passing, _, _ = sample_truth(ZTF)  # each a row or (no light curve to classify) a dead letter: nothing lost
    rows = read_results(tmp_path / "results" / "oracle_ztf_results.csv")
    later = {d["candid"] for d in read_dead_letters(tmp_path / "results" / "oracle_ztf_deadletters.jsonl")
             if d["stage"] != "parse"}
    assert rows.candid.is_unique and set(rows.candid) | later == passing and len(rows) >= 20
