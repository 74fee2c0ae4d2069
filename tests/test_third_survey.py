"""A third survey, defined here alone: one `Survey`, one input builder, one taxonomy.

The architecture guide (docs/architecture.md) promises that a new survey is one more `Survey` and one input builder.
This module holds the proof: a DECam-like survey with its own small taxonomy
(Alert -> {Transient -> {SN, Other}, Variable}), its own input builder, a tiny
random ORACLE checkpoint of that taxonomy and a tiny BOOM-shaped sample, run
through the ORACLE flow (`dataflows/oracle.py`) end to end, Slack posts (tree
plot, channel variable, link) included. Nothing outside this file knows DECam.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.testing import TestingSource, run_main

from dataflows.oracle import build_flow, load_survey_model
from models.oracle.loading import load_oracle
from models.oracle.networks import TaxonomyMismatch, build_oracle
from models.oracle.taxonomy import Taxonomy
from operators.io.deadletter import read_dead_letters
from operators.oracle.inputs import InputError, ModelInputs, candidate_and_series, number, time_series
from dataflows.preflight import validate
from operators.oracle.results import read_results
from operators.samples.bundle import encode_result, write_messages
from operators.oracle.store import Collections, write_documents
from operators.oracle.surveys import ZTF, Survey
from operators.oracle.tree_plot import detect_taxonomy, plot_csv
from tests.fakes import FakeSkyPortal, FakeSlack
from tests.helpers import settings_for

DECAM_TAXONOMY = Taxonomy.from_tree("DECam-toy", {"Alert": {"Transient": {"SN": {}, "Other": {}}, "Variable": {}}})
LEAVES = ["SN", "Other", "Variable"]
BAND_WAVELENGTH_UM = {"g": 0.475, "r": 0.635, "i": 0.775, "z": 0.925}  # DECam filter centres
FILTER = "decam_toy_filter"
TOKEN = "xoxb-decam-test-token"
FRITZ_TOKEN = "fritz-decam-test-token"


def decam_inputs(alert: dict, aux, cutout=None, with_stamp: bool = False) -> ModelInputs:
    """Detections (jd, flux, flux error, band) of the object up to this alert -> ORACLE's series."""
    cand, (history,) = candidate_and_series(alert, aux, "prv_candidates")
    points = [p for p in [*history, cand] if number(p, "flux") is not None and p.get("band") in BAND_WAVELENGTH_UM
              and number(p, "jd") is not None and number(p, "jd") <= cand["jd"]]
    if not points:
        raise InputError("no usable detection: no point with flux and a DECam band")
    return ModelInputs(ts=time_series([p["jd"] for p in points], [p["flux"] for p in points],
                                      [p["flux_err"] for p in points],
                                      [BAND_WAVELENGTH_UM[p["band"]] for p in points], 1.0))


def decam_survey(tmp_path: Path) -> Survey:
    return Survey(
        name="DECAM",  # BOOM's survey enum spells it so
        topic="DECAM_alerts_results",
        filter_name=FILTER,
        collections=Collections(alerts="DECAM_alerts", aux="DECAM_alerts_aux", cutouts="DECAM_alerts_cutouts",
                                alert_fields=("objectId", "candidate"), aux_fields=("prv_candidates",)),
        build_inputs=decam_inputs,
        taxonomy=DECAM_TAXONOMY,
        weights=tmp_path / "oracle_decam.pth",
        sample_dir=tmp_path / "decam_sample",
        object_link="https://decam-viewer.example/objects/{object_id}",
        link_site="DECam viewer",
        slack_channel_env="SLACK_ORACLE_DECAM_CHANNEL_ID",
    )


def point(jd: float, rng) -> dict:
    return {"jd": jd, "flux": float(rng.uniform(500, 5000)), "flux_err": float(rng.uniform(20, 80)),
            "band": str(rng.choice(list(BAND_WAVELENGTH_UM)))}


def record(candid: int, object_id: str, cand: dict, filter_name: str) -> dict:
    return {"candid": candid, "objectId": object_id, "jd": cand["jd"], "ra": 150.1, "dec": 2.2, "survey": "DECAM",
            "filters": [{"filter_id": filter_name, "filter_name": filter_name, "passed_at": cand["jd"],
                         "annotations": "{}"}],
            "classifications": [], "photometry": [], "cutoutScience": b"", "cutoutTemplate": b"",
            "cutoutDifference": b""}


def write_sample(survey: Survey) -> dict:
    """Five objects with a few detections each: four alerts pass the filter, one does
    not, one passing alert's object has no aux document, and one message is not Avro."""
    rng = np.random.default_rng(16)
    alerts, aux, messages = [], [], []
    truth = {"passing": set(), "failing": set(), "no_aux": set()}
    for i in range(6):
        object_id, candid = f"DC26toy{i:03d}", 900_000 + i
        history = [point(2461000.5 + k * 1.7 + i, rng) for k in range(3 + i)]
        cand = point(history[-1]["jd"] + 1.0, rng)
        alerts.append({"_id": candid, "objectId": object_id, "candidate": cand})
        if i != 4:
            aux.append({"_id": object_id, "prv_candidates": history})
        passes = i != 2
        messages.append(encode_result(record(candid, object_id, cand, FILTER if passes else "another_filter")))
        (truth["passing"] if passes else truth["failing"]).add(candid)
        if i == 4:
            truth["no_aux"].add(candid)
    messages.insert(3, b"not an Avro container")
    c = survey.collections
    write_documents(survey.sample_dir / f"{c.alerts}.jsonl", alerts)
    write_documents(survey.sample_dir / f"{c.aux}.jsonl", aux)
    write_documents(survey.sample_dir / f"{c.cutouts}.jsonl", [])
    write_messages(survey.sample_dir, messages)
    truth["messages"] = messages
    return truth


@pytest.fixture
def decam(tmp_path):
    survey = decam_survey(tmp_path)
    torch.manual_seed(16)
    model = build_oracle("lsst_lite", taxonomy=DECAM_TAXONOMY)  # light curve only, 5 outputs
    torch.save(model.state_dict(), survey.weights)
    return survey, write_sample(survey)


def test_the_checkpoint_loads_with_the_surveys_taxonomy_and_no_other(decam):
    survey, _ = decam
    model = load_oracle(survey.weights, taxonomy=survey.taxonomy)
    assert model.taxonomy is DECAM_TAXONOMY and model.n_nodes == 5
    with pytest.raises(TaxonomyMismatch, match="5 outputs.*BTS"):
        load_oracle(survey.weights, taxonomy=ZTF.taxonomy)
    with pytest.raises(TaxonomyMismatch, match="ORACLE_ZTF_WEIGHTS"):
        load_survey_model(ZTF, survey.weights, None, "ORACLE_ZTF_WEIGHTS")
    with pytest.raises(TaxonomyMismatch, match="no taxonomy was given"):
        load_oracle(survey.weights)  # 5 outputs: no published taxonomy is a guess


def test_the_flow_classifies_a_third_survey_end_to_end(decam, tmp_path):
    survey, truth = decam
    # Fritz configured, but the survey says Fritz holds none of its objects: never asked.
    with FakeSlack(token=TOKEN, channels=("CDECAM",)) as slack, FakeSkyPortal(token=FRITZ_TOKEN) as fritz:
        settings = settings_for(survey, tmp_path, POST_TO_SLACK="true", SLACK_BOT_TOKEN=TOKEN,
                                SLACK_ORACLE_DECAM_CHANNEL_ID="CDECAM", SLACK_API_URL=slack.base_url,
                                FRITZ_TOKEN=FRITZ_TOKEN, FRITZ_URL=fritz.url)
        checks, _ = validate(settings, survey)
        assert all(c.ok for c in checks), [c.line() for c in checks]
        source = TestingSource([KafkaSourceMessage(key=None, value=v, topic="t", partition=0, offset=i)
                                for i, v in enumerate(truth["messages"])])
        run_main(build_flow(survey, settings, source=source))
        posts = list(slack.posts)
        assert fritz.requests == []

    assert settings.results_csv.name == "oracle_decam_results.csv"
    rows = read_results(settings.results_csv)
    assert set(rows.candid) == truth["passing"] - truth["no_aux"] and rows.candid.is_unique
    assert list(rows.columns[5:5 + len(DECAM_TAXONOMY)]) == list(DECAM_TAXONOMY.nodes)  # after candid .. dec
    assert rows.model.str.startswith("ORACLE-lsst_lite:oracle_decam.pth@").all()
    np.testing.assert_allclose(rows[LEAVES].sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(rows["Transient"] + rows["Variable"], 1.0, atol=1e-4)
    np.testing.assert_allclose(rows["SN"] + rows["Other"], rows["Transient"], atol=1e-4)
    assert (rows.predicted == rows[LEAVES].idxmax(axis=1)).all()

    letters = read_dead_letters(settings.deadletters)
    assert {d["reason"] for d in letters if d["stage"] == "enrich" or d["candid"] in truth["no_aux"]} \
        == {"no aux document"}
    assert [d["offset"] for d in letters if d["stage"] == "parse"] == [3]

    # Slack: the survey's channel variable, its link template and site name, its tree.
    assert sorted(p["filename"] for p in posts) == sorted(f"{o}_{c}.png" for o, c in zip(rows.objectId, rows.candid))
    for post in posts:
        object_id = post["filename"].split("_")[0]
        assert post["channel"] == "CDECAM"
        assert f"DECam viewer: <https://decam-viewer.example/objects/{object_id}|{object_id}>" \
            in post["initial_comment"]
        img = mpimg.imread(io.BytesIO(post["data"]), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100

    # The tree plot of the results file, by the survey's taxonomy.
    assert detect_taxonomy(rows.columns, {survey.name: survey.taxonomy}) is DECAM_TAXONOMY
    pngs = plot_csv(settings.results_csv, tmp_path / "plots", taxonomy=survey.taxonomy)
    assert len(pngs) == len(rows) and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_decam_inputs_follow_the_documents():
    alert = {"candidate": {"jd": 10.0, "flux": 300.0, "flux_err": 9.0, "band": "r"}}
    aux = {"prv_candidates": [{"jd": 8.0, "flux": 100.0, "flux_err": 5.0, "band": "g"},
                              {"jd": 12.0, "flux": 1.0, "flux_err": 1.0, "band": "g"},  # after the alert
                              {"jd": 9.0, "flux": None, "flux_err": 5.0, "band": "g"}]}
    ts = decam_inputs(alert, aux).ts
    np.testing.assert_allclose(ts, [[0, 100, 5, 0.475, 1], [2, 300, 9, 0.635, 1]], rtol=1e-6)
    with pytest.raises(InputError, match="no aux document"):
        decam_inputs(alert, None)
    assert math.isclose(float(ts[-1, 0]), 2.0)
