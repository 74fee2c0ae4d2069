"""Operations: Prometheus metrics, the summary line, progress, `python -m dataflows`."""

from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

from operators.runtime import metrics
from operators.io.deadletter import dead_letter
from operators.oracle.steps import Batch
from operators.runtime.progress import Progress
from operators.oracle.results import Result
from tests.conftest import _stop_process, free_port

REPO = Path(__file__).resolve().parent.parent
CONFIG_PREFIXES = ("KAFKA_", "MONGODB_", "BOOM_", "ORACLE_", "FRITZ_", "SLACK_", "POST_TO_", "ALERTFLOW_", "BYTEWAX_",
                   "FINK_VRA_", "LASAIR_")


def clean_env(**extra) -> dict:
    """This process's environment without any flow configuration, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **{k: str(v) for k, v in extra.items()}}


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def result(candid: int, received_ms=None) -> Result:
    return Result(candid=candid, objectId="ZTF21x", jd=2460000.5, survey="ZTF", probabilities={}, predicted="SN-Ia",
                  model="m", processed_at="t", received_ms=received_ms)


# ---------------------------------------------------------------- metrics


def test_counters_move_and_are_exported_with_their_labels():
    flow = "oracle_test_counters"
    z = {"flow": flow, "survey": "ZTF"}
    metrics.count_messages("ZTF", 5, flow=flow)
    metrics.count_filtered("ZTF", True, flow=flow)
    metrics.count_filtered("ZTF", False, n=2, flow=flow)
    metrics.count_dead_letters("ZTF", [dead_letter("parse", "undecodable Avro: ValueError: bad"),
                                       dead_letter("inputs", "no usable detection: no programid 1/2 point")], flow=flow)
    metrics.count_dead_letters("ZTF", dead_letter("enrich", "no aux document"), flow=flow)  # one letter alone
    batch = Batch(items=[result(1), result(2)], size_in=3, timings={"enrich": 0.01, "inputs": 0.002, "model": 0.05})
    metrics.observe_batch("ZTF", batch, flow=flow)
    metrics.observe_written("ZTF", [result(1, received_ms=1_000), result(2)], flow=flow, now_ms=3_500)
    metrics.fritz_request("success", flow=flow)
    metrics.fritz_request("retry", n=2, flow=flow)
    metrics.slack_post("failure", flow=flow)

    assert value("alertflow_messages_total", **z) == 5
    assert value("alertflow_filter_total", **z, result="passed") == 1
    assert value("alertflow_filter_total", **z, result="failed") == 2
    assert value("alertflow_dead_letters_total", **z, stage="parse", reason="undecodable avro") == 1
    assert value("alertflow_dead_letters_total", **z, stage="inputs", reason="no usable detection") == 1
    assert value("alertflow_dead_letters_total", **z, stage="enrich", reason="no aux document") == 1
    assert value("alertflow_classified_total", **z) == 2
    assert value("alertflow_batch_size_sum", **z) == 3
    assert value("alertflow_stage_seconds_count", **z, stage="model") == 1
    assert value("alertflow_stage_seconds_sum", **z, stage="model") == pytest.approx(0.05)
    assert value("alertflow_results_written_total", **z) == 2
    assert value("alertflow_end_to_end_latency_seconds_count", **z) == 1  # the result without received_ms is not timed
    assert value("alertflow_end_to_end_latency_seconds_sum", **z) == pytest.approx(2.5)
    assert value("alertflow_fritz_requests_total", **z, outcome="retry") == 2
    assert value("alertflow_slack_posts_total", **z, outcome="failure") == 1
    assert value("alertflow_last_batch_timestamp_seconds", **z) == pytest.approx(time.time(), abs=60)

    text = generate_latest(REGISTRY).decode()
    assert f'alertflow_messages_total{{flow="{flow}",survey="ZTF"}} 5.0' in text
    assert f'alertflow_filter_total{{flow="{flow}",result="passed",survey="ZTF"}} 1.0' in text
    assert 'alertflow_end_to_end_latency_seconds_bucket{' in text and 'alertflow_batch_size_bucket{' in text
    metrics.count_skipped("ZTF", 4, flow=flow)
    line = metrics.run_summary("ZTF", flow)
    assert "5 in, 1 passed filter, 2 failed filter, 2 classified, 3 dead-lettered" in line
    assert "2 written, 4 skipped as already written" in line
    assert "3 dead-lettered (enrich: no aux document 1, inputs: no usable detection 1, parse: undecodable avro 1)" in line
    assert "4 skipped as already written" in line and line.startswith("ZTF run summary")


def test_default_flow_label_is_the_oracle_flow_name():
    before = value("alertflow_messages_total", flow="oracle_lsst", survey="LSST")
    metrics.count_messages("LSST", 2)
    assert value("alertflow_messages_total", flow="oracle_lsst", survey="LSST") == before + 2


def test_free_text_labels_are_bounded():
    flow = "oracle_test_bounded"
    letters = [dead_letter("parse", f"reason number {i} {'x' * i}: detail") for i in range(metrics.MAX_LABEL_VALUES + 20)]
    metrics.count_dead_letters("ZTF", letters, flow=flow)
    reasons = {s.labels["reason"] for m in REGISTRY.collect() if m.name == "alertflow_dead_letters"
               for s in m.samples if s.labels.get("flow") == flow}
    assert len(reasons) <= metrics.MAX_LABEL_VALUES + 1
    assert "other" in reasons
    assert all("0" not in r and "1" not in r for r in reasons)  # digits folded


def test_observing_never_raises(caplog):
    metrics.observe_batch("ZTF", object(), flow="oracle_test_odd")
    metrics.count_dead_letters("ZTF", 42, flow="oracle_test_odd")  # not iterable: logged once, not raised
    metrics.observe_written("ZTF", None, flow="oracle_test_odd")
    metrics.count_messages(None, "many")


def test_summary_line_once_per_interval(caplog):
    flow = "oracle_test_summary"
    caplog.set_level(logging.INFO, logger="alertflow.metrics")
    metrics.maybe_log_summary("ZTF", every_s=60, flow=flow, now=1000.0)  # first call: baseline only
    metrics.count_messages("ZTF", 120, flow=flow)
    metrics.observe_batch("ZTF", Batch(items=[result(i) for i in range(30)], size_in=30), flow=flow)
    metrics.maybe_log_summary("ZTF", every_s=60, flow=flow, now=1030.0)
    assert not [r for r in caplog.records if "summary" in r.getMessage()]
    metrics.maybe_log_summary("ZTF", every_s=60, flow=flow, now=1060.0)
    metrics.maybe_log_summary("ZTF", every_s=60, flow=flow, now=1061.0)
    lines = [r.getMessage() for r in caplog.records if "summary" in r.getMessage()]
    assert len(lines) == 1
    assert "120 in" in lines[0] and "30 classified" in lines[0]
    assert "2.0 in/s" in lines[0] and "0.5 classified/s" in lines[0]


def test_metrics_port_reader():
    assert metrics.metrics_port({}) is None
    assert metrics.metrics_port({"ALERTFLOW_METRICS_PORT": " 9108 "}) == 9108
    assert metrics.metrics_port({"ALERTFLOW_METRICS_PORT": "http"}) is None


def test_standalone_exporter_serves_the_registry_once_per_process():
    # In a process of its own, which the test stops: the exporter lives as long as its process.
    script = ("import time\nfrom operators.runtime import metrics\n"
              "port = metrics.start_exporter(0)\n"
              "assert port and metrics.start_exporter(0) == port and metrics.start_exporter(None) == port\n"
              "metrics.count_messages('ZTF', 1, flow='oracle_test_exporter')\n"
              "print(port, flush=True)\ntime.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline() or 0)
        assert port, proc.stderr.read() if proc.poll() is not None else "no port printed"
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        _stop_process(proc)
    assert 'alertflow_messages_total{flow="oracle_test_exporter",survey="ZTF"} 1.0' in text


PROBE_FLOW = """
import time
import bytewax.operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource
from operators.runtime import metrics

def slow():
    for i in range(2000):
        time.sleep(0.02)
        yield i

def count(x):
    metrics.count_messages("ZTF", 1, flow="ops_probe")
    return x

flow = Dataflow("ops_probe")
op.output("out", op.map("count", op.input("inp", flow, TestingSource(slow())), count), StdOutSink())
"""


def test_bytewax_api_server_serves_our_metrics_and_its_own(tmp_path):
    (tmp_path / "ops_probe_flow.py").write_text(PROBE_FLOW)
    port = free_port()
    env = clean_env(BYTEWAX_DATAFLOW_API_ENABLED="true", BYTEWAX_DATAFLOW_API_PORT=port)
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "ops_probe_flow"], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    text, deadline = "", time.monotonic() + 30
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                text = ""
            if 'alertflow_messages_total{flow="ops_probe",survey="ZTF"}' in text and "bytewax_item_out_count" in text:
                break
            time.sleep(0.2)
    finally:
        _stop_process(proc)
    err = proc.stderr.read().decode(errors="replace")[-2000:]
    assert 'alertflow_messages_total{flow="ops_probe",survey="ZTF"}' in text, err
    assert 'bytewax_item_out_count_total{step_id="ops_probe.inp"' in text  # bytewax's own per-step metrics


# ---------------------------------------------------------------- progress


def test_progress_bar_with_eta_on_a_terminal():
    script = ("import time\nfrom operators.runtime.progress import Progress\n"
              "with Progress(40, 'replay', redraw_s=0) as p:\n"
              "    for _ in range(40):\n        time.sleep(0.005)\n        p.advance()\n")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=clean_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(30)
    finally:
        os.close(master)
        _stop_process(proc)
    assert code == 0
    text = out.decode(errors="replace")
    assert "\r" in text and "replay:" in text and "#" in text  # one line redrawn in place
    assert "<00:0" in text and "/s" in text  # tqdm's ETA and rate
    assert "100%" in text and "40/40" in text


def test_progress_without_terminal_writes_few_plain_lines():
    script = ("from operators.runtime.progress import Progress\n"
              "with Progress(1000, 'benchmark') as p:\n    for _ in range(1000):\n        p.advance()\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "\r" not in proc.stderr  # quick work: just the final line
    assert lines[0].startswith("benchmark: 1000/1000 (100%)") and "done in" in lines[0]


def test_progress_periodic_lines_carry_rate_and_eta():
    buf = io.StringIO()
    p = Progress(10, "al", stream=buf, every_s=0)
    for _ in range(4):
        p.advance()
    p.close()
    p.advance()  # after close: ignored
    lines = buf.getvalue().splitlines()
    assert len(lines) == 5 and all(line.startswith("al: ") for line in lines)
    assert "ETA" in lines[0] and "4/10 (40%)" in lines[3] and "done in" in lines[-1]
    unknown = io.StringIO()
    with Progress(None, "scan", stream=unknown, every_s=0) as q:
        q.advance(3)
    assert unknown.getvalue().startswith("scan: 3 ") and "ETA ?" in unknown.getvalue()


# ---------------------------------------------------------------- python -m dataflows


def dataflows_cli(*args, timeout=120, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dataflows", *args], cwd=REPO, env=clean_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_flows_and_their_variables():
    proc = dataflows_cli("--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for flow in ("ztf", "lsst", "fink_vra"):
        assert f"\n  {flow} " in out
    assert "configuration of ztf" in out
    for line_start in ("KAFKA_BROKERS", "ORACLE_ZTF_WEIGHTS", "ORACLE_BATCH_SIZE", "FRITZ_TOKEN",
                       "ALERTFLOW_METRICS_PORT", "BYTEWAX_DATAFLOW_API_ENABLED"):
        assert f"\n  {line_start} " in out, line_start
    weights_line = next(line for line in out.splitlines() if line.strip().startswith("ORACLE_ZTF_WEIGHTS"))
    assert "[data/best_model_f1_ztf.pth]" in weights_line
    batch_line = next(line for line in out.splitlines() if line.strip().startswith("ORACLE_BATCH_SIZE"))
    assert "[256]" in batch_line


def test_every_variable_a_flow_reads_has_a_description():
    """Drift guard: a new field in a settings model (config.py, fritz_config.py, ...) needs a description."""
    from dataflows.__main__ import FLOWS, describe, flow_available, flow_variables

    missing = [(info.name, v.name) for info in FLOWS.values() if flow_available(info)[0]
               for v in flow_variables(info) if not describe(v.name, info)]
    assert not missing, f"give these settings fields a description: {missing}"


def test_check_fails_clearly_when_the_weights_are_missing(tmp_path):
    proc = dataflows_cli("check", "ztf", ORACLE_ZTF_WEIGHTS="/nonexistent", ALERTFLOW_RESULTS_DIR=tmp_path / "r",
                         ALERTFLOW_LOGS_DIR=tmp_path / "l")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "weights" in line)
    assert line.startswith("FAIL") and "/nonexistent" in line and "ORACLE_ZTF_WEIGHTS" in line
    assert "check(s) failed" in proc.stdout.splitlines()[-1]


def test_check_passes_on_the_defaults(tmp_path):
    from dataflows.__main__ import run_checks

    results = run_checks("ztf", {"ALERTFLOW_RESULTS_DIR": str(tmp_path / "r"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "l")})
    assert all(r.ok for r in results), [r.line() for r in results]
    assert {"config", "weights", "input", "store", "outputs"} <= {r.name for r in results}


def test_check_names_what_to_fix_and_never_prints_secrets(tmp_path):
    from dataflows.__main__ import run_checks

    env = {"ALERTFLOW_RESULTS_DIR": str(tmp_path / "r"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "l"),
           "ORACLE_ZTF_WEIGHTS": "/nonexistent",  # the model is not what this test is about
           "MONGODB_URI": "mongodb://alertflow:pa55word-secret@127.0.0.1:1/", "MONGODB_TIMEOUT_MS": "300",
           "FRITZ_TOKEN": "fritz-secret-token", "FRITZ_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens
           "POST_TO_SLACK": "true", "ALERTFLOW_METRICS_PORT": "web"}
    lines = [r.line() for r in run_checks("ztf", env)]
    text = "\n".join(lines)
    assert "pa55word-secret" not in text and "fritz-secret-token" not in text
    by_name = {line.split()[1]: line for line in lines}
    assert by_name["mongodb"].startswith("FAIL") and "MONGODB_URI" in by_name["mongodb"]
    assert by_name["slack"].startswith("FAIL") and "SLACK_BOT_TOKEN" in by_name["slack"]
    assert by_name["metrics"].startswith("FAIL") and "ALERTFLOW_METRICS_PORT" in by_name["metrics"]
    assert by_name["fritz"].startswith("FAIL") and "FRITZ_URL" in by_name["fritz"]


@pytest.mark.services
def test_check_reaches_kafka_and_mongodb(kafka, create_topic, mongo, mongo_db, tmp_path):
    from dataflows.__main__ import run_checks
    from operators.oracle.surveys import ZTF

    topic = create_topic("ZTF_alerts_results", partitions=3)
    db = mongo.client()[mongo_db]
    for name in (ZTF.collections.alerts, ZTF.collections.aux):
        db[name].insert_one({"_id": 1})
    env = {"ALERTFLOW_RESULTS_DIR": str(tmp_path / "r"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "l"),
           "ALERTFLOW_RECOVERY_DIR": str(tmp_path / "rec"), "KAFKA_BROKERS": kafka.bootstrap, "KAFKA_TOPIC": topic,
           "MONGODB_URI": mongo.uri, "BOOM_DATABASE__NAME": mongo_db}
    by_name = {r.name: r for r in run_checks("ztf", env)}
    assert by_name["kafka"].ok and "3 partition(s)" in by_name["kafka"].detail, by_name["kafka"].line()
    assert by_name["mongodb"].ok, by_name["mongodb"].line()

    missing = run_checks("ztf", {**env, "KAFKA_TOPIC": topic + "-missing", "BOOM_DATABASE__NAME": mongo_db + "x"})
    by_name = {r.name: r for r in missing}
    assert not by_name["kafka"].ok and "does not exist" in by_name["kafka"].detail
    assert not by_name["mongodb"].ok and ZTF.collections.alerts in by_name["mongodb"].detail


def test_run_is_bytewax_run_of_the_flow_module():
    from dataflows.__main__ import bytewax_command

    assert bytewax_command("ztf", ["-w", "4"], python="py") == ["py", "-m", "bytewax.run", "dataflows.ztf", "-w", "4"]
    proc = dataflows_cli("nosuchflow")
    assert proc.returncode == 2 and "unknown" in proc.stderr
