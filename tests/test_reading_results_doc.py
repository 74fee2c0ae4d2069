"""docs/reading-results.md cannot drift or rot: its schema table is the .avsc's, and its
code blocks run against the Kafka- and MongoDB-protocol test servers.

The expected output is written here from literal probabilities and times (JD
2461000.75 is 2025-11-21 06:00:00 UTC, checked with astropy), not from our code.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from operators.oracle.listening import result_line
from operators.oracle.result_record import SCHEMA_PATH, encode, to_record
from operators.oracle.results import Result
from models.oracle.taxonomy import ZTF_TAXONOMY

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reading-results.md"
NODES = ["Alert", "Persistent", "Transient", "AGN", "CV", "Varstar", "SN-Ia", "SN-II", "SN-Ib/c", "SLSN"]


def schema_table() -> str:
    """The doc's table, from the .avsc (paste this between the schema-table markers)."""
    def kind(t) -> str:
        if isinstance(t, list):
            return f"{kind(next(x for x in t if x != 'null'))} or null"
        if isinstance(t, dict):
            return f"map of string to {t['values']}"
        return t

    rows = ["| field | type | meaning |", "|---|---|---|"]
    for f in json.loads(SCHEMA_PATH.read_text())["fields"]:
        doc = f["doc"].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        rows.append(f"| `{f['name']}` | {kind(f['type'])} | {doc} |")
    return "\n".join(rows)


def code_block(marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\n```python\n(.*?)\n```", DOC.read_text(), re.S)
    assert m, f"no python block after <!-- {marker} --> in {DOC}"
    return m.group(1)


def result(candid, jd, sn_ia, predicted="SN-Ia", model="ORACLE-btsv2:best_model_f1_ztf.pth@f1e3353cb6c0"):
    p = dict.fromkeys(NODES, 0.0) | {"Alert": 1.0, "Transient": 0.95, "Persistent": 0.05, "SN-Ia": sn_ia,
                                     "SN-II": 0.95 - sn_ia, "AGN": 0.05}
    return Result(candid=candid, objectId="ZTF26aaaaaaa", jd=jd, survey="ZTF", ra=150.25, dec=-12.5,
                  probabilities=p, predicted=predicted, model=model, processed_at="2026-12-07T21:00:00.000+00:00")


def test_schema_table_is_the_avsc():
    text = DOC.read_text()
    m = re.search(r"<!-- schema-table:begin -->\n(.*?)\n<!-- schema-table:end -->", text, re.S)
    assert m, "schema-table markers missing"
    assert m.group(1) == schema_table(), "docs/reading-results.md: replace the table with:\n" + schema_table()


def test_listen_example_line_is_what_listen_prints():
    line = next(l for l in DOC.read_text().splitlines() if l.startswith("ZTF26aaaaaaa "))
    p = dict.fromkeys(NODES, 0.0) | {"Alert": 1.0, "SN-Ia": 0.9, "AGN": 0.05, "SN-II": 0.04}
    rec = to_record(Result(candid=1000000000000001, objectId="ZTF26aaaaaaa", jd=2461000.75, survey="ZTF",
                           probabilities=p, predicted="SN-Ia", model="m", processed_at="t", ra=1.0, dec=2.0), "BTS")
    assert result_line(rec, ZTF_TAXONOMY) == line


@pytest.mark.services
def test_example_consumer_runs(kafka, create_topic, tmp_path):
    topic = create_topic("ZTF_alerts_oracle")
    kafka.produce(topic, [encode(to_record(result(3141592653589, 2461000.75, 0.875), "BTS"))], [b"ZTF26aaaaaaa"])
    script = tmp_path / "consumer.py"
    script.write_text(code_block("example-consumer"))
    env = {**os.environ, "KAFKA_BROKERS": kafka.bootstrap, "ORACLE_RESULTS_TOPIC": topic}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()  # blocks until the group is joined and the record read
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert line.strip() == "ZTF26aaaaaaa 3141592653589 SN-Ia 0.875 SN-Ia=0.875"
    assert proc.returncode == 0 and "Traceback" not in err


@pytest.mark.services
def test_history_query_runs(mongo, mongo_db, tmp_path):
    collection = "ZTF_alerts_oracle"
    model_b = "ORACLE-btsv2:retrained.pth@0123456789ab"
    docs = []
    for r in (result(103, 2461002.5, 0.9, model=model_b), result(101, 2461000.25, 0.3, predicted="SN-II"),
              result(102, 2461001.5, 0.6)):
        docs.append({"_id": r.candid, **to_record(r, "BTS")})
    other = result(201, 2461001.0, 0.99)
    docs.append({"_id": 201, **to_record(other, "BTS"), "objectId": "ZTF26bbbbbbb"})
    coll = mongo.client()[mongo_db][collection]
    coll.insert_many(docs)
    coll.create_index("objectId")
    coll.create_index("jd")
    script = tmp_path / "history.py"
    script.write_text(code_block("example-history"))
    env = {**os.environ, "MONGODB_URI": mongo.uri, "ORACLE_RESULTS_DATABASE": mongo_db,
           "ORACLE_RESULTS_COLLECTION": collection}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    m = "ORACLE-btsv2:best_model_f1_ztf.pth@f1e3353cb6c0"
    assert lines[:3] == [
        f"101 2461000.25 SN-II 0.650 SN-Ia=0.300 {m}",
        f"102 2461001.5 SN-Ia 0.600 SN-Ia=0.600 {m}",
        f"103 2461002.5 SN-Ia 0.900 SN-Ia=0.900 {model_b}",
    ]
    assert sorted(lines[3:]) == ["candidate ZTF26aaaaaaa 103", "candidate ZTF26bbbbbbb 201"]
