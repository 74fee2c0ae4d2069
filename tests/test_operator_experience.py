"""What an operator meets when something is wrong (issue 17): bad settings, dead brokers,
short runs, dead letters to replay, a demo run twice, the labelling CLI on a mixed folder."""

from __future__ import annotations

import base64
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fastavro
import pytest
from bytewax.testing import run_main

from dataflows.oracle import build_flow
from operators.samples import load as load_sample
from operators.runtime.config import REPO_ROOT
from operators.io.deadletter import read_dead_letters
from operators.io.kafka import EXIT_UNREACHABLE, BrokerWatch, RateLimitedLog
from operators.oracle.results import read_results
from operators.oracle.surveys import ZTF
from tests.conftest import _stop_process, free_port
from tests.helpers import sample_truth, settings_for
from tests.test_ops import clean_env

LSST_WEIGHTS = REPO_ROOT / "data" / "best_model_f1_lsst.pth"


def flow_process(module: str, tmp_path: Path, **env) -> subprocess.Popen:
    base = {"ALERTFLOW_RESULTS_DIR": tmp_path / "results", "ALERTFLOW_LOGS_DIR": tmp_path / "logs",
            "ALERTFLOW_RECOVERY_DIR": tmp_path / "recovery", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bytewax.run", module], cwd=REPO_ROOT,
                            env=clean_env(**{**base, **env}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def run_flow(module: str, tmp_path: Path, timeout: float = 300, **env) -> tuple[int, str]:
    proc = flow_process(module, tmp_path, **env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        _stop_process(proc)
    return proc.returncode, out


# ---------------------------------------------------------------- configuration errors (items 2, 3)


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint\n" * 10)
    return path


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_file" / "results"


BAD_SETTINGS = {
    "batch size not a number": (lambda t: {"ORACLE_BATCH_SIZE": "abc"}, "ORACLE_BATCH_SIZE"),
    "missing weights": (lambda t: {"ORACLE_ZTF_WEIGHTS": t / "nope.pth"}, "ORACLE_ZTF_WEIGHTS"),
    "wrong-survey weights": (lambda t: {"ORACLE_ZTF_WEIGHTS": LSST_WEIGHTS}, "ORACLE_ZTF_WEIGHTS"),
    "garbage weights": (lambda t: {"ORACLE_ZTF_WEIGHTS": _garbage(t)}, "ORACLE_ZTF_WEIGHTS"),
    "results dir cannot be created": (lambda t: {"ALERTFLOW_RESULTS_DIR": _under_a_file(t)}, "ALERTFLOW_RESULTS_DIR"),
    "starting offset": (lambda t: {"KAFKA_BROKERS": "127.0.0.1:1", "KAFKA_STARTING_OFFSET": "middle"},
                        "KAFKA_STARTING_OFFSET"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_each_bad_setting_is_one_line_and_exit_code_2(tmp_path, case):
    make_env, variable = BAD_SETTINGS[case]
    code, out = run_flow("dataflows.ztf", tmp_path, **make_env(tmp_path))
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2, out
    assert len(lines) == 1, out
    assert lines[0].startswith("configuration error: ") and variable in lines[0] and " -> " in lines[0], lines[0]
    assert not (tmp_path / "results" / "oracle_ztf_results.csv").exists()


def test_a_traceback_only_at_debug(tmp_path):
    code, out = run_flow("dataflows.ztf", tmp_path, ORACLE_ZTF_WEIGHTS=_garbage(tmp_path), ALERTFLOW_LOG_LEVEL="DEBUG")
    assert code == 2 and "Traceback" in out and out.strip().splitlines()[-1].startswith("configuration error: ")


def test_fink_vra_bad_setting_is_one_line_and_exit_code_2(tmp_path):
    code, out = run_flow("dataflows.fink_vra", tmp_path, FINK_VRA_OUT_PARTITIONS="many",
                         FINK_VRA_OUT_DIR=tmp_path / "out", FINK_VRA_DEADLETTERS=tmp_path / "dl.jsonl")
    assert code == 2 and len(out.strip().splitlines()) == 1 and "FINK_VRA_OUT_PARTITIONS" in out, out
    code, out = run_flow("dataflows.fink_vra", tmp_path, FINK_VRA_OUT_DIR=_under_a_file(tmp_path),
                         FINK_VRA_DEADLETTERS=tmp_path / "dl.jsonl")
    assert code == 2 and len(out.strip().splitlines()) == 1 and "FINK_VRA_OUT_DIR" in out, out


def test_check_fails_the_wrong_survey_checkpoint_as_the_flow_does(tmp_path):
    from dataflows.__main__ import run_checks

    env = {"ALERTFLOW_RESULTS_DIR": str(tmp_path / "r"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "l"),
           "ORACLE_ZTF_WEIGHTS": str(LSST_WEIGHTS)}
    weights = next(r for r in run_checks("ztf", env) if r.name == "weights")
    assert not weights.ok and "ORACLE_ZTF_WEIGHTS" in weights.line() and "BTS" in weights.detail


def test_check_tries_the_output_directories_for_real(tmp_path):
    from dataflows.__main__ import run_checks

    env = {"ALERTFLOW_RESULTS_DIR": str(_under_a_file(tmp_path)), "ALERTFLOW_LOGS_DIR": str(tmp_path / "l")}
    outputs = next(r for r in run_checks("ztf", env) if r.name == "outputs")
    assert not outputs.ok and "ALERTFLOW_RESULTS_DIR" in outputs.line()
    assert not (tmp_path / "l").exists()  # checking creates nothing


def test_no_forced_photometry_variable_for_ztf():
    from dataflows.__main__ import FLOWS, flow_variables

    ztf = {v.name for v in flow_variables(FLOWS["ztf"])}
    lsst = {v.name for v in flow_variables(FLOWS["lsst"])}
    assert not any("FORCED_PHOTOMETRY" in name for name in ztf)
    assert "ORACLE_LSST_FORCED_PHOTOMETRY" in lsst
    assert "ORACLE_ZTF_FORCED_PHOTOMETRY" not in (REPO_ROOT / "docs" / "configuration.md").read_text()


# ---------------------------------------------------------------- Kafka away (item 1)


def read_lines(proc: subprocess.Popen) -> list[str]:
    """The process's output lines, filled by a thread as they come (never blocks the test)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return lines


def wait_for_line(proc: subprocess.Popen, lines: list[str], text: str, count: int = 1, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(text in line for line in list(lines)) < count:
        assert proc.poll() is None, f"exited with {proc.returncode}: " + "".join(lines)[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} line within {timeout_s:.0f} s: " + "".join(lines)[-3000:]
        time.sleep(0.1)


def interrupt(proc: subprocess.Popen, lines: list[str]) -> float:
    """Ctrl-C; seconds until the flow says it stopped (or exits), at most 30."""
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30 and proc.poll() is None and not any("stopped by Ctrl-C" in x for x in list(lines)):
        time.sleep(0.05)
    return time.monotonic() - t0


def _stops_on_sigint_and_stays_quiet(module: str, tmp_path: Path, **env) -> str:
    proc = flow_process(module, tmp_path, **env)
    lines = read_lines(proc)
    try:
        wait_for_line(proc, lines, "unreachable")  # torch import, then the first attempt
        watched_from = len(lines)
        time.sleep(12)  # librdkafka alone wrote ~19 lines a second here
        quiet = lines[watched_from:]
        interrupt(proc, lines)
        code = proc.wait(timeout=30)  # a wait that Ctrl-C did not end would go on: Kafka never comes
        time.sleep(0.5)  # the reader drains the pipe
    finally:
        _stop_process(proc)
    text = "".join(lines)
    assert code == 130, text
    assert len(quiet) <= 2, "".join(quiet)  # at most one line per 30 s
    assert "Traceback" not in text and "CONFWARN" not in text and "%3|" not in text, text
    return text


@pytest.mark.services
def test_ztf_flow_against_a_closed_port_stops_on_sigint_and_logs_little(tmp_path):
    text = _stops_on_sigint_and_stays_quiet("dataflows.ztf", tmp_path, KAFKA_BROKERS=f"127.0.0.1:{free_port()}")
    assert "stopped by Ctrl-C" in text


@pytest.mark.services
def test_fink_vra_against_a_closed_port_stops_on_sigint_and_logs_little(tmp_path):
    _stops_on_sigint_and_stays_quiet("dataflows.fink_vra", tmp_path, FINK_VRA_KAFKA_BROKERS=f"127.0.0.1:{free_port()}",
                                     FINK_VRA_OUT_DIR=tmp_path / "out", FINK_VRA_DEADLETTERS=tmp_path / "dl.jsonl")


@pytest.mark.services
def test_unreachable_kafka_exits_non_zero_when_asked(tmp_path):
    code, out = run_flow("dataflows.ztf", tmp_path, timeout=120, KAFKA_BROKERS=f"127.0.0.1:{free_port()}",
                         KAFKA_UNREACHABLE_EXIT_S="2")
    assert code == EXIT_UNREACHABLE, out
    assert "KAFKA_UNREACHABLE_EXIT_S=2" in out.strip().splitlines()[-1] and "Traceback" not in out


@pytest.mark.services
def test_two_workers_waiting_on_mongodb_stop_on_sigint(tmp_path, kafka, create_topic):
    topic = create_topic("ZTF_alerts_results")
    kafka.produce(topic, load_sample.read_sample(ZTF.sample_dir, ZTF.collections).messages)
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.ztf", "-w", "2"], cwd=REPO_ROOT,
                            env=clean_env(**kafka.env(topic), MONGODB_URI=f"mongodb://127.0.0.1:{free_port()}/",
                                          MONGODB_TIMEOUT_MS="300", ORACLE_BATCH_TIMEOUT_S="0.2",
                                          ALERTFLOW_RESULTS_DIR=tmp_path / "results",
                                          ALERTFLOW_LOGS_DIR=tmp_path / "logs",
                                          ALERTFLOW_RECOVERY_DIR=tmp_path / "recovery", PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = read_lines(proc)
    try:
        wait_for_line(proc, lines, "unavailable during the fetch", count=3)  # the workers backing off
        signalled_at = len(lines)
        interrupt(proc, lines)
        code = proc.wait(timeout=30)  # MONGODB_RETRIES is unlimited: only Ctrl-C ends the waits
        time.sleep(0.5)
    finally:
        _stop_process(proc)
    text = "".join(lines)
    assert code == 130, (code, text[-3000:])
    # At most the attempt each of the 2 workers had in flight is said after Ctrl-C: no pause is slept out.
    assert sum("unavailable during the fetch" in x for x in lines[signalled_at:]) <= 2, text[-3000:]
    assert "Traceback" not in text and "stopped by Ctrl-C" in text


def test_librdkafka_lines_are_rate_limited_and_say_how_many_were_held():
    now = [0.0]
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test.rdkafka")
    logger.addHandler(Capture())
    logger.setLevel(logging.INFO)
    rl = RateLimitedLog(logger, every_s=30, clock=lambda: now[0], redact=lambda s: s.replace("s3cret", "***"))
    for i in range(600):  # 30 s at librdkafka's ~20 lines a second
        now[0] = i * 0.05
        rl.log(40, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect to 127.0.0.1:1 failed (s3cret)")
    now[0] = 31.0
    rl.log(40, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connect to 127.0.0.1:1 failed (s3cret)")
    assert len(records) == 2
    assert "599 more like it" in records[1] and "s3cret" not in "".join(records)


def test_broker_watch_exits_after_the_limit_when_the_brokers_stay_away():
    from confluent_kafka import KafkaError

    exits: list[int] = []
    watch = BrokerWatch({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, "dead", exit_after_s=1.5,
                        exit=exits.append)
    watch(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    watch(KafkaError(KafkaError._ALL_BROKERS_DOWN))  # one probe at a time
    deadline = time.monotonic() + 60
    while not exits and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exits == [EXIT_UNREACHABLE]


# ---------------------------------------------------------------- summaries (item 4)


def test_a_replay_ends_with_its_summary_and_a_rerun_says_what_it_skipped(tmp_path):
    passing, failing, malformed = sample_truth(ZTF)
    code, out = run_flow("dataflows.ztf", tmp_path)
    assert code == 0, out
    summary = next(line for line in out.splitlines() if "ZTF run summary" in line)
    rows = read_results(tmp_path / "results" / "oracle_ztf_results.csv")
    letters = read_dead_letters(tmp_path / "results" / "oracle_ztf_deadletters.jsonl")
    assert f"{len(passing) + len(failing) + malformed} in, {len(passing)} passed filter, " \
           f"{len(failing)} failed filter, {len(rows)} classified, {len(letters)} dead-lettered" in summary
    assert "enrich: no aux document 1" in summary and f"{len(rows)} written, 0 skipped" in summary
    code, out = run_flow("dataflows.ztf", tmp_path)
    summary = next(line for line in out.splitlines() if "ZTF run summary" in line)
    assert code == 0 and f"0 written, {len(rows)} skipped as already written" in summary, summary


def test_fink_vra_replay_ends_with_its_summary(tmp_path):
    alerts = 0
    for path in sorted((REPO_ROOT / "data" / "fink").glob("fink_ztf*.avro")):
        with path.open("rb") as f:
            alerts += sum(1 for _ in fastavro.reader(f))
    env = {"FINK_VRA_OUT_DIR": tmp_path / "out", "FINK_VRA_DEADLETTERS": tmp_path / "dl.jsonl"}
    code, out = run_flow("dataflows.fink_vra", tmp_path, **env)
    summary = next(line for line in out.splitlines() if "fink_vra run summary" in line)
    assert code == 0 and f"{alerts} alerts" in summary and f"{alerts} rows written" in summary, summary
    code, out = run_flow("dataflows.fink_vra", tmp_path, **env)
    summary = next(line for line in out.splitlines() if "fink_vra run summary" in line)
    assert f"0 rows written, {alerts} rows skipped as already written" in summary, summary


# ---------------------------------------------------------------- dead letters keep their payload (item 5)


@pytest.mark.services
def test_enrich_dead_letters_replay_into_rows_once_their_documents_exist(tmp_path, mongo, mongo_db):
    sample = load_sample.read_sample(ZTF.sample_dir, ZTF.collections)
    held_back = sorted({d["_id"] for d in sample.aux})[:2]  # these objects' aux documents come later
    db = mongo.client()[mongo_db]
    load_sample.upsert_documents(db[ZTF.collections.alerts], sample.alerts)
    load_sample.upsert_documents(db[ZTF.collections.aux], [d for d in sample.aux if d["_id"] not in held_back])
    env = {"MONGODB_URI": mongo.uri, "BOOM_DATABASE__NAME": mongo_db}
    settings = settings_for(ZTF, tmp_path, **env)
    run_main(build_flow(ZTF, settings))

    letters = [d for d in read_dead_letters(settings.deadletters) if d["stage"] == "enrich"]
    waiting = {d["candid"] for d in letters if d["objectId"] in held_back}
    assert waiting and all(d["payload_b64"] for d in letters)
    assert not waiting & set(read_results(settings.results_csv).candid)

    load_sample.upsert_documents(db[ZTF.collections.aux], [d for d in sample.aux if d["_id"] in held_back])
    before = len(read_dead_letters(settings.deadletters))
    proc = subprocess.run([sys.executable, "-m", "dataflows", "replay-dead-letters", str(settings.deadletters)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=clean_env(ALERTFLOW_RESULTS_DIR=settings.outputs.results_dir,
                                        ALERTFLOW_LOGS_DIR=settings.outputs.logs_dir, **env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_results(settings.results_csv)
    assert waiting <= set(rows.candid) and rows.candid.is_unique
    assert len(read_dead_letters(settings.deadletters)) == before  # those failing again are not written twice


@pytest.mark.services
def test_replay_publishes_the_payloads_back_to_the_topic(tmp_path, kafka, create_topic):
    settings = settings_for(ZTF, tmp_path)
    run_main(build_flow(ZTF, settings))
    letters = read_dead_letters(settings.deadletters)
    topic = create_topic("ZTF_alerts_results")
    proc = subprocess.run([sys.executable, "-m", "dataflows", "replay-dead-letters", str(settings.deadletters)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=clean_env(**kafka.env(topic)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    published = sorted(m.value() for m in kafka.read(topic, len(letters)))
    assert published == sorted(base64.b64decode(d["payload_b64"]) for d in letters)


# ---------------------------------------------------------------- the local demo, twice (item 6)


@pytest.mark.services
def test_load_sample_twice_in_a_row_succeeds(mongo, mongo_db):
    args = ["--survey", "ztf", "--mongodb-uri", mongo.uri, "--database", mongo_db, "--skip-kafka", "--repeat", "2"]
    assert load_sample.main(args, env={}) == 0
    counts = {name: mongo.client()[mongo_db][name].count_documents({}) for name in
              (ZTF.collections.alerts, ZTF.collections.aux, ZTF.collections.cutouts)}
    assert load_sample.main(args, env={}) == 0
    assert counts == {name: mongo.client()[mongo_db][name].count_documents({}) for name in counts}
    sample = load_sample.read_sample(ZTF.sample_dir, ZTF.collections)
    assert counts[ZTF.collections.aux] == len({d["_id"] for d in sample.aux})
    doc = mongo.client()[mongo_db][ZTF.collections.cutouts].find_one({"_id": sample.cutouts[0]["_id"]})
    assert isinstance(doc["cutoutTemplate"], bytes) and doc["cutoutTemplate"]  # stamps survive the second load


@pytest.mark.services
def test_load_sample_producer_gets_no_consumer_settings(kafka, create_topic):
    topic = create_topic("ZTF_alerts_results")
    proc = subprocess.run([sys.executable, "-m", "operators.samples.load", "--skip-mongo", "--kafka-brokers",
                           kafka.bootstrap, "--topic", topic], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env=clean_env(KAFKA_OPT_GROUP_ID="a-consumer-group"))
    assert proc.returncode == 0, proc.stderr
    assert "CONFWARN" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- labelling CLI (item 7)


def test_labelling_cli_skips_alerts_that_are_not_ztf(tmp_path):
    from models.vetting.labeling import read_alerts, ztf_only

    everything = read_alerts([REPO_ROOT / "data" / "fink"])
    rubin = sum(1 for a in everything if "candidate" not in a)  # Rubin packets carry diaSource instead
    assert rubin > 0
    kept, others = ztf_only(everything)
    assert others == rubin and all("candid" in a for a in kept)
    proc = subprocess.run([sys.executable, "-m", "models.vetting.labeling", "proxy", "--alerts", "data/fink", "--out",
                           str(tmp_path / "labeled.csv")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {rubin} alert(s) that are not ZTF" in proc.stderr and "Traceback" not in proc.stderr
    assert f"of {len(kept)} alerts" in proc.stdout


def test_labelling_options_have_help():
    proxy = subprocess.run([sys.executable, "-m", "models.vetting.labeling", "proxy", "--help"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=120, env=clean_env()).stdout
    assert "non-ZTF alerts are skipped" in proxy and "labeled.csv format" in proxy
    round_ = subprocess.run([sys.executable, "-m", "models.vetting.active_learning", "round", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, env=clean_env()).stdout
    assert "models.vetting.labeling label" in round_ and "next_batch" in round_
