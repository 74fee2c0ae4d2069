"""Backfills: past alert documents through the live flow's steps, resumable, split over workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bytewax.testing import TestingSource, cluster_main, run_main
from bytewax.connectors.kafka import KafkaSourceMessage

from dataflows.backfill import Job, build_backfill_flow, main, narrowing_of, parse_time
from dataflows.oracle import build_flow
from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY
from operators.oracle.backfill_source import EmbeddedScanner, MongoScanner, slice_query
from operators.io.deadletter import read_dead_letters
from operators.samples.load import read_sample, repeat_sample, upsert_documents
from operators.oracle.results import read_results
from operators.samples.bundle import read_messages
from operators.oracle.store import write_documents
from operators.oracle.surveys import LSST, ZTF
from tests.fakes import FakeSkyPortal
from tests.helpers import settings_for

REPO = Path(__file__).resolve().parent.parent
WHOLE = (2_400_001.0, 2_500_000.0)  # every bundled document


def raw_docs(survey, sample_dir=None) -> list[dict]:
    """The bundled alert documents read with json alone (not our readers)."""
    path = Path(sample_dir or survey.sample_dir) / f"{survey.collections.alerts}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def raw_aux_ids(survey) -> set[str]:
    path = survey.sample_dir / f"{survey.collections.aux}.jsonl"
    return {json.loads(line)["_id"] for line in path.read_text().splitlines() if line.strip()}


def candid_of(doc) -> int:
    v = doc["_id"]
    return int(v["$numberLong"]) if isinstance(v, dict) else int(v)


def job(survey, since=WHOLE[0], until=WHOLE[1], **kw) -> Job:
    return Job(survey, since, until, str(since), str(until), **kw)


def backfill(tmp_path, survey, workers=1, settings_env=None, **kw):
    settings = settings_for(survey, tmp_path, **(settings_env or {}))
    flow, csv = build_backfill_flow(job(survey, **kw), settings)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return read_results(csv), csv


def live(tmp_path, survey, **env):
    settings = settings_for(survey, tmp_path, **env)
    source = TestingSource([KafkaSourceMessage(key=None, value=v, topic="t", partition=0, offset=i)
                            for i, v in enumerate(read_messages(survey.sample_dir))])
    run_main(build_flow(survey, settings, source=source))
    return read_results(settings.results_csv)


@pytest.mark.parametrize("survey", [ZTF, LSST], ids=["ztf", "lsst"])
def test_backfill_of_the_bundled_documents_equals_the_live_rows(tmp_path, survey):
    rows, csv = backfill(tmp_path / "backfill", survey)
    live_rows = live(tmp_path / "live", survey)
    assert csv.parent.name == "backfill" and csv.name.startswith(f"oracle_{survey.name.lower()}_")
    # every document with an aux document is classified once (filter or not: the past is taken as found)
    expected = {candid_of(d) for d in raw_docs(survey) if d["objectId"] in raw_aux_ids(survey)}
    assert rows.candid.is_unique and set(rows.candid) == expected
    assert set(live_rows.candid) <= set(rows.candid) and len(live_rows) >= 4
    nodes = list((ZTF_TAXONOMY if survey is ZTF else LSST_TAXONOMY).nodes)
    a = live_rows.set_index("candid").sort_index()
    b = rows.set_index("candid").loc[a.index]
    # Float32 rounding only: the two runs batch the alerts differently (a batch's GRU sums in
    # another order than one alert's), which over LSST's 300-400-point series reaches ~4e-6.
    np.testing.assert_allclose(b[nodes].to_numpy(), a[nodes].to_numpy(), atol=2e-6 if survey is ZTF else 5e-6)
    assert (a.predicted == b.predicted).all() and (a.objectId == b.objectId).all()
    assert (a.model == b.model).all() and a.model.iloc[0].count("@") == 1
    time = "jd" if survey is ZTF else "mjd"  # the survey's own time
    np.testing.assert_array_equal(a[time].to_numpy(), b[time].to_numpy())


def test_backfill_runs_on_the_configured_backend(tmp_path, monkeypatch):
    """ORACLE_BACKEND=onnxruntime: the backfill loads the model as the live flow does, through
    ONNX Runtime (every batch is an ONNX Runtime run; with torch, none is), and its rows are
    the live flow's on the same backend."""
    ort = pytest.importorskip("onnxruntime")
    runs = []
    real_run = ort.InferenceSession.run

    def counted_run(self, *args, **kwargs):
        runs.append(self._model_path)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counted_run)
    cache = tmp_path / "onnx"
    env = {"ORACLE_BACKEND": "onnxruntime", "ORACLE_ONNX_CACHE_DIR": cache}
    flow, csv = build_backfill_flow(job(ZTF), settings_for(ZTF, tmp_path / "backfill", **env))
    [export] = cache.glob("*.onnx")  # exported (and checked against torch) before the flow runs
    before = len(runs)
    run_main(flow)
    assert len(runs) > before and set(runs[before:]) == {str(export)}, "the backfill's batches did not run on ONNX Runtime"
    rows = read_results(csv).set_index("candid").sort_index()
    assert len(rows) >= 20
    live_runs = len(runs)
    live_rows = live(tmp_path / "live", ZTF, **env).set_index("candid").sort_index()
    assert len(runs) > live_runs  # the live flow ran on ONNX Runtime too
    nodes = list(ZTF_TAXONOMY.nodes)
    np.testing.assert_allclose(rows.loc[live_rows.index, nodes].to_numpy(), live_rows[nodes].to_numpy(), atol=1e-6)
    torch_runs = len(runs)
    backfill(tmp_path / "torch", ZTF)
    assert len(runs) == torch_runs  # the default backend never touches ONNX Runtime


def test_window_query_and_candid_file_narrow_the_documents(tmp_path):
    docs = [d for d in raw_docs(ZTF) if d["objectId"] in raw_aux_ids(ZTF)]
    since, until = 2461121.8, 2461121.95
    in_window = {candid_of(d) for d in docs if since <= d["candidate"]["jd"] < until}
    assert 0 < len(in_window) < len(docs)
    rows, _ = backfill(tmp_path / "w", ZTF, since=since, until=until)
    assert set(rows.candid) == in_window

    picked = sorted(in_window)[:2]
    by_object = next(d["objectId"] for d in docs if candid_of(d) not in in_window)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# two candids and an object\n{picked[0]}\n{picked[1]}\n{by_object}\n")
    rows, _ = backfill(tmp_path / "c", ZTF, narrowing=narrowing_of(None, ids))
    assert set(rows.candid) == set(picked) | {candid_of(d) for d in docs if d["objectId"] == by_object}

    query = '{"candidate.drb": {"$gt": 0.99}, "candidate.fid": 1}'
    rows, _ = backfill(tmp_path / "q", ZTF, narrowing=narrowing_of(query, None))
    want = {candid_of(d) for d in docs if d["candidate"].get("drb", 0) > 0.99 and d["candidate"]["fid"] == 1}
    assert want and set(rows.candid) == want


def test_two_workers_split_the_window_and_write_the_same_rows(tmp_path):
    seen: dict[int, set] = {}
    lock = threading.Lock()

    class Spy(EmbeddedScanner):
        def scan(self, query, fields, batch_size):
            with lock:
                seen.setdefault(threading.get_ident(), set()).add(json.dumps(query, sort_keys=True))
            return super().scan(query, fields, batch_size)

    spy = Spy(ZTF.sample_dir, ZTF.collections.alerts, ZTF.time_field)
    settings = settings_for(ZTF, tmp_path / "two")
    flow, csv = build_backfill_flow(job(ZTF, since=2458802.0, until=2461123.0, slices=8), settings, scanner=spy)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    two = read_results(csv)
    assert len(seen) == 2, "both workers read slices"
    a, b = seen.values()
    assert not a & b and len(a | b) == 8, "each slice is read by one worker"
    one, _ = backfill(tmp_path / "one", ZTF, since=2458802.0, until=2461123.0)
    assert sorted(two.candid) == sorted(one.candid) and len(one) > 30


def test_time_arguments():
    assert parse_time("2000-01-01T12:00:00")[0] == pytest.approx(2451545.0, abs=1e-9)  # J2000.0
    assert parse_time("2026-11-01") == (pytest.approx(2461345.5, abs=1e-9), "2026-11-01")
    assert parse_time("2461121.5") == (2461121.5, "2461121.5")
    with pytest.raises(ValueError, match="Julian date"):
        parse_time("61121.5")


def test_bad_arguments_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["ztf", "--since", "2026-11-08", "--until", "2026-11-01"]) == 2
    assert main(["ztf", "--since", "2026-11-01", "--until", "2026-11-08", "--query", "[1]"]) == 2
    assert main(["ztf", "--since", "2026-11-01", "--until", "2026-11-08", "--weights", "nope.pth"]) == 2
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ORACLE_BACKEND", "onnxruntime")  # as the flow: its cache must be writable
    monkeypatch.setenv("ORACLE_ONNX_CACHE_DIR", str(tmp_path / "a-file"))
    assert main(["ztf", "--since", "2026-11-01", "--until", "2026-11-08"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("backfill: ") for line in err)
    assert "--until" in err[0] and "JSON object" in err[1] and "nope.pth does not exist" in err[2]
    assert err[3].startswith("backfill: ORACLE_ONNX_CACHE_DIR=") and "ORACLE_ONNX_CACHE_DIR to a writable" in err[3]


def test_nothing_is_posted_unless_annotate(tmp_path):
    token = "fritz-secret-token-123"
    objects = tuple(raw_aux_ids(ZTF))
    with FakeSkyPortal(token=token, sources=objects) as fritz:
        env = {"FRITZ_TOKEN": token, "FRITZ_URL": fritz.url}
        rows, _ = backfill(tmp_path / "quiet", ZTF, settings_env=env)
        assert len(rows) > 30 and fritz.calls() == []
        rows, _ = backfill(tmp_path / "loud", ZTF, settings_env=env, annotate=True)
        annotated = {o for o in set(rows.objectId) if fritz.annotations_on(o)}
        assert annotated == set(rows.objectId)


def _big_sample(tmp_path: Path, repeat: int) -> Path:
    """The ZTF sample's alert and aux documents `repeat` times (copies get new candids), as a
    sample directory (no cutouts: the default model does not read them)."""
    data = repeat_sample(read_sample(ZTF.sample_dir, ZTF.collections), repeat)
    out = tmp_path / "sample"
    c = ZTF.collections
    write_documents(out / f"{c.alerts}.jsonl", data.alerts)
    write_documents(out / f"{c.aux}.jsonl", data.aux)
    return out


def _csv_rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def test_a_killed_backfill_resumes_without_duplicates_or_gaps(tmp_path):
    sample = _big_sample(tmp_path, 30)
    expected = {candid_of(d) for d in raw_docs(ZTF, sample) if d["objectId"] in raw_aux_ids(ZTF)}
    env = {**os.environ, "PYTHONPATH": str(REPO), "ALERTFLOW_SAMPLE_DIR": str(sample),
           "ALERTFLOW_SNAPSHOT_INTERVAL_S": "0.1", "ALERTFLOW_RESULTS_DIR": str(tmp_path / "results"),
           "ALERTFLOW_LOGS_DIR": str(tmp_path / "logs")}
    cmd = [sys.executable, "-m", "dataflows", "backfill", "ztf", "--since", "2458000", "--until", "2462000",
           "--batch-size", "4", "--slices", "4", "-w", "2"]
    csv = tmp_path / "results" / "backfill"
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
    proc = None
    try:
        with log1.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(csv.glob("*.csv"))
            if files and _csv_rows(files[0]) >= 100:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the backfill ended before it could be killed: " + log1.read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    (path,) = csv.glob("*.csv")
    assert 0 < _csv_rows(path) < len(expected)
    with log2.open("wb") as out:
        assert subprocess.run(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=600).returncode == 0, log2.read_text()[-3000:]
    rows = read_results(path)
    assert rows.candid.is_unique and set(rows.candid) == expected
    assert "resumes after" in log2.read_text(), "the second run started from the snapshot, not from scratch"


@pytest.mark.services
def test_backfill_from_mongodb_equals_the_embedded_one(tmp_path, mongo, mongo_db):
    db = mongo.client()[mongo_db]
    c = ZTF.collections
    for name in (c.alerts, c.aux):
        from operators.oracle.store import read_documents

        upsert_documents(db[name], read_documents(ZTF.sample_dir / f"{name}.jsonl"))
    rows, _ = backfill(tmp_path / "mongo", ZTF, settings_env=mongo.env(mongo_db), slices=4)
    embedded, _ = backfill(tmp_path / "embedded", ZTF, slices=4)
    assert sorted(rows.candid) == sorted(embedded.candid) and len(rows) > 30
    nodes = list(ZTF_TAXONOMY.nodes)
    a, b = rows.set_index("candid").sort_index(), embedded.set_index("candid").sort_index()
    np.testing.assert_allclose(a[nodes].to_numpy(), b[nodes].to_numpy(), atol=2e-6)

    # A position inside a slice (what a resume reads from) selects the same documents on both stores.
    docs = sorted(raw_docs(ZTF), key=lambda d: (d["candidate"]["jd"], candid_of(d)))
    pivot = docs[len(docs) // 2]
    after = (pivot["candidate"]["jd"], candid_of(pivot))
    query = slice_query(ZTF.time_field, *WHOLE, {"candidate.fid": {"$in": [1, 2]}}, after)
    fields = (ZTF.time_field, "objectId")
    on_mongo = [d["_id"] for d in MongoScanner(mongo.settings(mongo_db), c.alerts, ZTF.time_field).scan(query, fields, 5)]
    embedded_ids = [d["_id"] for d in EmbeddedScanner(ZTF.sample_dir, c.alerts, ZTF.time_field).scan(query, fields, 5)]
    want = [candid_of(d) for d in docs[len(docs) // 2 + 1:] if d["candidate"]["fid"] in (1, 2)]
    assert on_mongo == embedded_ids == want
