"""`python -m dataflows listen`: real encoded results records on a Tansu topic, read back.

Which alerts pass a cut is decided here by literal probabilities, and the
expected lines, times and Parquet values are literals (times checked with
astropy: JD 2461000.75 is 2025-11-21 06:00:00 UTC, MJD 61010.125 is
2025-12-01 03:00:00 UTC), not our own functions' output.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY
from operators.oracle.listening import CutError, parse_cut, passes, result_line
from operators.oracle.result_record import encode, to_record
from operators.oracle.results import CsvLayout, Result, csv_columns

from conftest import free_port

REPO = Path(__file__).resolve().parent.parent
ZTF_NODES = ["Alert", "Persistent", "Transient", "AGN", "CV", "Varstar", "SN-Ia", "SN-II", "SN-Ib/c", "SLSN"]
MODEL = "ORACLE-btsv2:best_model_f1_ztf.pth@f1e3353cb6c0"


def ztf(candid: int, object_id: str, sn_ia: float, agn: float, sn_ii: float, jd: float = 2461000.75) -> Result:
    """A ZTF result whose leaves are SN-Ia, AGN, SN-II as given and the rest small."""
    p = dict.fromkeys(ZTF_NODES, 0.0)
    p.update({"Alert": 1.0, "SN-Ia": sn_ia, "AGN": agn, "SN-II": sn_ii, "SLSN": 0.01, "SN-Ib/c": 0.02})
    p["Transient"] = sn_ia + sn_ii + 0.03
    p["Persistent"] = 1.0 - p["Transient"]
    predicted = max(("SN-Ia", "AGN", "SN-II"), key=p.get)
    return Result(candid=candid, objectId=object_id, jd=jd, survey="ZTF", ra=150.25, dec=-12.5, probabilities=p,
                  predicted=predicted, model=MODEL, processed_at="2026-12-07T21:00:00.000+00:00")


# Literal probabilities; with --where "SN-Ia>0.8" --where "AGN<0.1" only A and D pass.
A = ztf(1000000000000001, "ZTF26aaaaaaa", sn_ia=0.9, agn=0.05, sn_ii=0.04)
B = ztf(1000000000000002, "ZTF26aaaaaab", sn_ia=0.85, agn=0.2, sn_ii=0.01)  # AGN too high
C = ztf(1000000000000003, "ZTF26aaaaaac", sn_ia=0.5, agn=0.01, sn_ii=0.45)  # SN-Ia too low
D = ztf(1000000000000004, "ZTF26aaaaaad", sn_ia=0.8001, agn=0.0999, sn_ii=0.05, jd=2461001.0)
E = ztf(1000000000000005, "ZTF26aaaaaae", sn_ia=0.8, agn=0.01, sn_ii=0.1)  # SN-Ia not > 0.8

LINE_A = "ZTF26aaaaaaa      1000000000000001  2025-11-21 06:00:00  SN-Ia      0.900  (AGN 0.050, SN-II 0.040)"
LINE_D = "ZTF26aaaaaad      1000000000000004  2025-11-21 12:00:00  SN-Ia      0.800  (AGN 0.100, SN-II 0.050)"


def records(*results):
    return [to_record(r, "BTS") for r in results]


def publish(kafka, topic, *results):
    kafka.produce(topic, [encode(r) for r in records(*results)], [r.objectId.encode() for r in results])


def env_for(kafka, topic, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ORACLE_"))}
    return {**env, "KAFKA_BROKERS": kafka.bootstrap, "ORACLE_RESULTS_TOPIC": topic, **extra}


def run_listen(env, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "dataflows", "listen", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ pure part


def test_cuts_parse_and_decide_on_literal_probabilities():
    cuts = [parse_cut("SN-Ia>0.8", ZTF_TAXONOMY), parse_cut(" AGN <0.1 ", ZTF_TAXONOMY)]
    assert [passes(r, cuts) for r in records(A, B, C, D, E)] == [True, False, False, True, False]
    assert passes(records(E)[0], [parse_cut("SN-Ia>=0.8", ZTF_TAXONOMY)])
    assert not passes(records(E)[0], [parse_cut("SN-II<=0.09", ZTF_TAXONOMY)])
    assert passes(records(E)[0], [parse_cut("SN-II<=0.1", ZTF_TAXONOMY)])
    # names with spaces and slashes (ELAsTiCC), and SN-Ib/c
    assert parse_cut("Dwarf Novae>=0.25", LSST_TAXONOMY).node == "Dwarf Novae"
    assert parse_cut("SN-Ib/c<0.5", ZTF_TAXONOMY).node == "SN-Ib/c"


@pytest.mark.parametrize("text, says", [
    ("SN-Ia>>0.8", "write NODE>P"), ("SN-Ia=0.8", "write NODE>P"), ("SN-Ia", "write NODE>P"), (">0.8", "write NODE>P"),
    ("SN-Ia>high", "'high' is not a number"), ("SN-Ia>80", "not a probability"),
    ("SNIa>0.8", "no node 'SNIa'"), ("sn-ia>0.8", "did you mean 'SN-Ia'?"),
])
def test_malformed_cuts_say_what_to_write(text, says):
    with pytest.raises(CutError) as err:
        parse_cut(text, ZTF_TAXONOMY, "ZTF")
    message = str(err.value)
    assert message.startswith(f"--where {text!r}") and says in message and "\n" not in message
    if "node" in says or "mean" in says:
        assert "nodes: Alert, Persistent, Transient, AGN, CV, Varstar, SN-Ia, SN-II, SN-Ib/c, SLSN" in message


def test_one_line_per_result():
    assert result_line(records(A)[0], ZTF_TAXONOMY) == LINE_A
    lsst = Result(candid=170000000000000042, objectId="313853702468468736", jd=61010.125 + 2400000.5,  # UTC
                  survey="LSST", probabilities={n: 0.0 for n in LSST_TAXONOMY.nodes} | {"Alert": 1.0, "SNIa": 0.7,
                                                                                       "TDE": 0.2, "SNII": 0.05},
                  predicted="SNIa", model="ORACLE-lsst_lite:x.pth@abc", processed_at="2026-12-07T21:00:00.000+00:00")
    assert result_line(to_record(lsst, "ELAsTiCC"), LSST_TAXONOMY) == (
        "313853702468468736  170000000000000042  2025-12-01 03:00:00  SNIa       0.700  (TDE 0.200, SNII 0.050)")


def test_rows_have_the_csv_columns_and_follow_them(monkeypatch):
    import operators.oracle.listening as listening

    lsst = Result(candid=42, objectId="313853702468468736", jd=61010.125 + 2400000.5, survey="LSST", ra=10.5,
                  dec=-3.25, probabilities={n: 0.0 for n in LSST_TAXONOMY.nodes} | {"Alert": 1.0, "SNIa": 0.7},
                  predicted="SNIa", model="m", processed_at="t", stamp="template")
    row = listening.csv_row(to_record(lsst, "ELAsTiCC"), LSST_TAXONOMY)
    # The LSST CSV's columns (its MJD, no Fritz columns), with the stamp the record carries.
    assert list(row) == csv_columns(LSST_TAXONOMY, CsvLayout("mjd", fritz=False, stamp=True))
    assert abs(row["mjd"] - (61010.125 + 37 / 86400)) < 1e-9 and row["SNIa"] == 0.7  # Rubin's MJD is TAI and row["stamp"] == "template"
    assert (row["ra"], row["dec"], row["predicted_probability"]) == (10.5, -3.25, 0.7)
    # another helper may add columns to the CSV: the saved rows follow, typed from the schema
    extended = lambda taxonomy, layout=CsvLayout(): [*csv_columns(taxonomy, layout), "survey"]  # noqa: E731
    monkeypatch.setattr(listening, "csv_columns", extended)
    row = listening.csv_row(to_record(lsst, "ELAsTiCC"), LSST_TAXONOMY)
    assert row["survey"] == "LSST"
    kinds = listening.column_kinds(LSST_TAXONOMY)
    assert kinds["ra"] == kinds["predicted_probability"] == kinds["mjd"] == kinds["SNIa"] == "double"
    assert kinds["candid"] == "long" and kinds["objectId"] == kinds["survey"] == "string"
    table = listening.parquet_table([to_record(lsst, "ELAsTiCC")], LSST_TAXONOMY)
    assert table.column_names == extended(LSST_TAXONOMY, listening.saved_layout(LSST_TAXONOMY))
    assert table.to_pylist()[0]["dec"] == -3.25


# ------------------------------------------------------------------ against the broker

@pytest.mark.services
def test_lines_cuts_limit_and_parquet(kafka, create_topic, tmp_path):
    topic = create_topic("results", partitions=1)  # one partition: the order below is the topic's
    publish(kafka, topic, B, A, C, E, D, B)
    save = tmp_path / "night"
    proc = run_listen(env_for(kafka, topic), "ztf", "--from-beginning", "--where", "SN-Ia>0.8", "--where", "AGN<0.1",
                      "--limit", "2", "--save", str(save))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [LINE_A, LINE_D]
    assert "Traceback" not in proc.stderr
    assert "2 result(s) shown of 5 message(s) read" in proc.stderr  # stopped at D, the last B unread
    files = sorted(save.glob("*.parquet"))
    assert files and all(f.name.startswith("oracle_ztf_") for f in files)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert table.column_names == csv_columns(ZTF_TAXONOMY, CsvLayout("jd", fritz=True, stamp=True))
    rows = table.to_pylist()
    assert [r["candid"] for r in rows] == [1000000000000001, 1000000000000004]
    assert rows[0]["objectId"] == "ZTF26aaaaaaa" and rows[0]["jd"] == 2461000.75 and rows[1]["jd"] == 2461001.0
    assert rows[0]["SN-Ia"] == 0.9 and rows[0]["AGN"] == 0.05 and rows[0]["Alert"] == 1.0
    assert rows[0]["predicted"] == "SN-Ia" and rows[0]["model"] == MODEL
    assert rows[0]["processed_at"] == "2026-12-07T21:00:00.000+00:00"
    assert rows[0]["fritz_classifications"] is None and rows[0]["stamp"] is None  # not in the record / no stamp
    assert str(table.schema.field("candid").type) == "int64" and str(table.schema.field("SN-Ia").type) == "double"


@pytest.mark.services
def test_group_resumes_where_it_stopped(kafka, create_topic):
    topic = create_topic("results", partitions=2)
    publish(kafka, topic, A, B, C)
    # Tansu answers a JoinGroup after half the session timeout: keep it short here
    env = env_for(kafka, topic, KAFKA_OPT_SESSION_TIMEOUT_MS="6000", KAFKA_OPT_HEARTBEAT_INTERVAL_MS="500")
    first = run_listen(env, "ztf", "--group-id", "night-owl", "--from-beginning", "--limit", "2")
    assert first.returncode == 0, first.stderr
    second = run_listen(env, "ztf", "--group-id", "night-owl", "--limit", "1")
    assert second.returncode == 0, second.stderr
    got = [line.split()[0] for line in first.stdout.splitlines() + second.stdout.splitlines()]
    assert sorted(got) == ["ZTF26aaaaaaa", "ZTF26aaaaaab", "ZTF26aaaaaac"]


@pytest.mark.services
def test_missing_topic_is_one_line(kafka, create_topic):
    create_topic("other")
    proc = run_listen(env_for(kafka, "no_such_oracle_topic"), "ztf")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"listen: topic no_such_oracle_topic does not exist on {kafka.bootstrap}: check --topic / "
        f"ORACLE_RESULTS_TOPIC, and that the flow runs with ORACLE_RESULTS_TOPIC set"]
    assert proc.stdout == ""


def test_unreachable_brokers_are_one_line_within_the_wait():
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ORACLE_"))}
    env.update(KAFKA_BROKERS=f"127.0.0.1:{port}", ORACLE_RESULTS_TOPIC="ZTF_alerts_oracle")
    started = time.monotonic()
    proc = run_listen(env, "lsst", "--wait", "2")
    assert time.monotonic() - started < 20
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"listen: Kafka 127.0.0.1:{port} unreachable within 2 s (") and "check KAFKA_BROKERS" in line


@pytest.mark.parametrize("args, says", [
    (["ztf", "--where", "SN-Ia>>0.8"], "listen: --where 'SN-Ia>>0.8': write NODE>P"),
    (["lsst", "--where", "SN-Ia>0.8"], "no node 'SN-Ia' in the LSST taxonomy (ELAsTiCC)"),
    (["ztf", "--limit", "0"], "listen: --limit 0: give a number of results"),
    (["ztf", "--limit", "many"], "listen: argument --limit: invalid int value"),
    (["vro"], "listen: unknown survey 'vro': use ztf or lsst"),
])
def test_bad_options_are_one_line_exit_2(args, says):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ORACLE_"))}
    env.update(KAFKA_BROKERS="127.0.0.1:9", ORACLE_RESULTS_TOPIC="ZTF_alerts_oracle")
    proc = run_listen(env, *args)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert says in line


@pytest.mark.services
@pytest.mark.parametrize("sig, status, says", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_ctrl_c_closes_the_consumer_without_a_traceback(kafka, create_topic, sig, status, says):
    topic = create_topic("results", partitions=2)
    publish(kafka, topic, A, C)
    proc = subprocess.Popen([sys.executable, "-m", "dataflows", "listen", "ztf", "--from-beginning"], cwd=REPO,
                            env=env_for(kafka, topic), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # both results, then it waits for more
        assert sorted(line.split()[0] for line in lines) == ["ZTF26aaaaaaa", "ZTF26aaaaaac"]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "2 result(s) shown of 2 message(s) read; consumer closed" in err
    assert err.strip().splitlines()[-1] == f"listen: stopped by {says}"


@pytest.mark.services
def test_in_process_entry_and_undecodable_messages(kafka, create_topic):
    """`main(argv)` as a console script calls it; a message that is not a results record is
    reported (once) and skipped."""
    from dataflows.listen import main

    topic = create_topic("results")
    kafka.produce(topic, [b"not avro at all"])
    publish(kafka, topic, A)
    out, err = io.StringIO(), io.StringIO()
    assert main(["ztf", "--from-beginning", "--limit", "1"], env_for(kafka, topic), out, err) == 0
    assert out.getvalue().splitlines() == [LINE_A]
    assert "skipped a message that is not a results record (partition 0 offset 0" in err.getvalue()


def test_ctrl_c_while_waiting_for_the_brokers():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ORACLE_"))}
    env.update(KAFKA_BROKERS=f"127.0.0.1:{free_port()}", ORACLE_RESULTS_TOPIC="ZTF_alerts_oracle")
    proc = subprocess.Popen([sys.executable, "-m", "dataflows", "listen", "ztf", "--wait", "60"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # imports done, probing
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - started < 5
    assert proc.returncode == 130 and out == ""
    assert err.strip().splitlines() == ["listen: stopped by Ctrl-C"]
