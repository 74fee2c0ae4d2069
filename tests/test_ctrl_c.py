"""Ctrl-C on a Kafka run with one worker (issue 27, trap 2).

bytewax 0.21.1 runs a one-worker dataflow on the main thread, where Python runs its
signal handlers: a KeyboardInterrupt raised by the handler surfaced inside the Kafka
source's `next_batch` and bytewax's Rust code panicked on it
(`thread '<unnamed>' panicked at src/inputs.rs:446:37`). Ctrl-C now only sets a flag:
the source ends, the batches in flight are written, the run summary is logged, exit 130.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from operators.oracle.results import read_results
from operators.oracle.surveys import ZTF
from operators.runtime.config import REPO_ROOT
from operators.samples import load as load_sample
from tests.conftest import _stop_process
from tests.test_ops import clean_env

pytestmark = pytest.mark.services


def _start(tmp_path, env: dict, workers: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.ztf", "-w", workers], cwd=REPO_ROOT,
                            env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_on_a_kafka_run_stops_cleanly_with_the_summary(tmp_path, kafka, create_topic, workers):
    topic = create_topic("ZTF_alerts_results")
    sample = load_sample.read_sample(ZTF.sample_dir, ZTF.collections)
    kafka.produce(topic, sample.messages)
    results = tmp_path / "results"
    env = {**kafka.env(topic), "ORACLE_BATCH_TIMEOUT_S": "0.2", "ALERTFLOW_RESULTS_DIR": results,
           "ALERTFLOW_LOGS_DIR": tmp_path / "logs", "ALERTFLOW_RECOVERY_DIR": tmp_path / "recovery",
           "PYTHONUNBUFFERED": "1"}
    proc, lines = _start(tmp_path, env, workers)
    try:
        deadline = time.monotonic() + 180
        csv = results / "oracle_ztf_results.csv"
        while not (csv.exists() and len(read_results(csv)) > 0):  # progress: rows written
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no rows: " + "".join(lines)[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # the source is now polling the idle topic, where the panic was
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        time.sleep(0.3)  # the reader drains the pipe
    finally:
        _stop_process(proc)
    text = "".join(lines)
    assert "panicked" not in text and "Traceback" not in text and "Box<dyn Any>" not in text, text[-3000:]
    assert code == 130, (code, text[-3000:])
    assert "stopped by Ctrl-C" in text and "run summary" in text, text[-3000:]
    assert text.count("run summary") == 1, text[-3000:]  # once, not from both exit paths
    assert text.rfind("run summary") < text.rfind("stopped by Ctrl-C")
