"""The log directory (ALERTFLOW_LOGS_DIR) filling up mid-run stops nothing (issue 28 item 4,
docs/reliability.md): file logging is suspended with one line on stderr naming the directory,
not a traceback per record, and resumes by itself once there is room; results are what matter.
Same small tmpfs as tests/test_disk_trouble.py."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import time

from operators.io.deadletter import read_dead_letters
from operators.runtime.config import REPO_ROOT
from tests.helpers import LogLines
from tests.test_disk_trouble import fill, small_disk  # noqa: F401 - small_disk is a fixture


def test_a_full_log_directory_suspends_file_logging_with_one_line_and_resumes(
        small_disk, monkeypatch, capfd):  # noqa: F811 - the fixture
    from operators.runtime.logs import LogFile

    monkeypatch.setattr(LogFile, "RETRY_S", 0.5)
    logs = small_disk / "logs"
    logs.mkdir()
    file_handler, console = LogFile(logs / "oracle_ztf.log"), LogLines()
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
