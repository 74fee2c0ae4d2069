"""The ZTF flow against a SkyPortal fake that behaves as Fritz does: the per-token
rate limit across a 2-process cluster, an annotation another user owns, a server
that echoes the token."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bytewax.testing import run_main

from dataflows.oracle import build_flow
from operators.runtime.config import REPO_ROOT
from operators.io.deadletter import read_dead_letters
from operators.oracle.results import read_results
from operators.samples.bundle import read_messages
from operators.samples.source import SampleSource
from operators.oracle.store import read_documents
from operators.oracle.surveys import ZTF
from tests.conftest import _stop_process, free_port
from tests.fakes import FakeSkyPortal
from tests.helpers import sample_truth, settings_for

TOKEN = "fritz-cluster-token-0123456789abcdef"
OBJECTS = tuple(d["_id"] for d in read_documents(ZTF.sample_dir / "ZTF_alerts_aux.jsonl"))


def flow_env(tmp_path: Path, fritz: FakeSkyPortal, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "BOOM_", "MONGODB_", "ALERTFLOW_", "FRITZ_", "SLACK_", "POST_TO_SLACK"))}
    env.update({"ALERTFLOW_RESULTS_DIR": str(tmp_path / "results"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "logs"),
                "ORACLE_BATCH_TIMEOUT_S": "0.2", "ORACLE_BATCH_SIZE": "4", "PYTHONUNBUFFERED": "1",
                "FRITZ_TOKEN": TOKEN, "FRITZ_URL": fritz.url})
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.mark.slow
def test_two_process_cluster_stays_within_the_per_token_limit(tmp_path):
    # nginx in front of Fritz: 5 r/s, burst 10, per Authorization value, 429 without Retry-After.
    with FakeSkyPortal(token=TOKEN, sources=OBJECTS, rate=(5.0, 10)) as fritz:
        addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
        env = flow_env(tmp_path, fritz)
        logs = [tmp_path / f"proc{i}.log" for i in (0, 1)]
        procs = []
        try:
            for i, log in enumerate(logs):
                with log.open("wb") as out:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "bytewax.run", "dataflows.ztf", "-w", "1", "-i", str(i), "-a", addresses],
                        cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
            codes = [p.wait(timeout=300) for p in procs]
        finally:
            for p in procs:
                _stop_process(p)
        texts = [log.read_text() for log in logs]
        assert codes == [0, 0] and not any("Traceback" in t for t in texts), texts
        assert all("ZTF batch:" in t for t in texts), "both processes classified"

        rows = read_results(tmp_path / "results" / "oracle_ztf_results.csv")
        passing, _, _ = sample_truth(ZTF)
        assert set(rows.candid) == passing & set(rows.candid) and len(rows) >= 20
        for obj in set(rows.objectId):
            (note,) = fritz.annotations_on(obj)  # exactly one per object
            row = rows[rows.objectId == obj].iloc[0]
            assert note["data"]["SN-Ia"] == round(row["SN-Ia"], 4)
        # Every 429 was retried: the same request came again later.
        calls = fritz.calls()
        print(f"cluster: {len(calls)} Fritz requests, {len(fritz.limited)} answered 429, "
              f"{len(fritz.annotations)} annotations for {rows.objectId.nunique()} objects")
        for limited in fritz.limited:
            assert any(c["t"] > limited["t"] and (c["method"], c["path"]) == (limited["method"], limited["path"])
                       for c in calls), limited
        # One worker of the cluster made every Fritz request: one bucket for the token.
        said = [t for t in texts if "Fritz annotations this run: {" in t and "'created'" in t]
        assert len(said) == 1, texts
        assert "Fritz annotation of" not in "".join(texts)  # no failure after the retries
        assert TOKEN not in "".join(texts)


def test_restart_with_an_annotation_owned_by_another_user(tmp_path, caplog):
    owned = OBJECTS[0]
    with FakeSkyPortal(token=TOKEN, sources=OBJECTS) as fritz:
        older = fritz.add_user("older-deployment-token-0123456789", "oracle_bot_2024", {1, 1959}, {"Annotate"})
        aid = fritz.annotate_as(older, owned, "oracle_omni", {"SN-Ia": 0.5}, [1959])
        twice = read_messages(ZTF.sample_dir) * 2  # every alert twice: the object comes back
        settings = settings_for(ZTF, tmp_path, FRITZ_TOKEN=TOKEN, FRITZ_URL=fritz.url, FRITZ_CONTEXT_TIMEOUT=0)
        with caplog.at_level(logging.INFO):
            run_main(build_flow(ZTF, settings, source=SampleSource(ZTF.sample_dir, ZTF.topic, values=twice)))
        rows = read_results(settings.results_csv)
        passing, _, _ = sample_truth(ZTF)
        assert set(rows.candid) == {c for c in passing if c in set(rows.candid)} and len(rows) >= 20
        assert owned in set(rows.objectId)  # classified and written like the others
        about = [r.getMessage() for r in caplog.records if owned in r.getMessage() and r.levelno >= logging.WARNING]
        assert len(about) == 1 and "only an annotation's author" in about[0] and "oracle_bot_2024" not in TOKEN
        assert fritz.annotations[aid]["data"] == {"SN-Ia": 0.5}
        assert len([c for c in fritz.calls("PUT") if owned in c["path"]]) == 1  # not retried
        assert all(len(fritz.annotations_on(o)) == 1 for o in set(rows.objectId))


def test_the_token_is_nowhere_even_when_the_server_echoes_it(tmp_path, caplog):
    with FakeSkyPortal(token=TOKEN, sources=OBJECTS, echo_token=True) as fritz:
        fritz.classifications[OBJECTS[2]] = [  # a classification whose text carries the token
            {"classification": f"SN Ia (token {TOKEN})", "probability": 0.9, "ml": False}]
        # group 424242 does not exist: every POST is 400 quoting the token
        settings = settings_for(ZTF, tmp_path, FRITZ_TOKEN=TOKEN, FRITZ_URL=fritz.url, FRITZ_CONTEXT_TIMEOUT=5,
                                FRITZ_GROUP_IDS="1959,424242")
        with caplog.at_level(logging.DEBUG):
            run_main(build_flow(ZTF, settings))
        assert any("has no access" in c for c in caplog.messages)  # the server did quote it
    rows = read_results(settings.results_csv)
    assert "SN Ia (token ***)(0.9)" in set(rows.fritz_classifications)
    letters = read_dead_letters(settings.deadletters)
    everything = (caplog.text + settings.results_csv.read_text() + settings.deadletters.read_text()
                  + settings.log_file.read_text() + repr(letters))
    assert TOKEN not in everything
