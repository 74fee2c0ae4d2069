"""The results CSV's columns follow the survey and the model: the survey's own time
(`jd` for ZTF, `mjd` for LSST), the position, the predicted leaf's probability, Fritz
columns only for a survey Fritz holds, `stamp` only for an image model. Values are
checked against the bundled BOOM documents, not against the flow's own output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bytewax.testing import run_main

from dataflows.oracle import build_flow
from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY
from operators.oracle.results import CsvLayout, csv_columns, read_results
from operators.oracle.surveys import LSST, ZTF
from tests.helpers import SAMPLE_TRUTH, sample_truth, settings_for

JD_TO_MJD = 2400000.5  # written out here: the test does not borrow the code's constant


def documents(survey) -> dict[int, dict]:
    path = survey.sample_dir / f"{survey.collections.alerts}.jsonl"
    return {d["_id"]: d for d in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def ztf_rows(tmp_path_factory):
    settings = settings_for(ZTF, tmp_path_factory.mktemp("ztf"))
    run_main(build_flow(ZTF, settings))
    return read_results(settings.results_csv)


@pytest.fixture(scope="module")
def lsst_rows(tmp_path_factory):
    settings = settings_for(LSST, tmp_path_factory.mktemp("lsst"))
    run_main(build_flow(LSST, settings))
    return read_results(settings.results_csv)


def test_the_columns_depend_on_survey_and_model():
    ztf_nodes, lsst_nodes = list(ZTF_TAXONOMY.nodes), list(LSST_TAXONOMY.nodes)
    common = ["predicted", "predicted_probability", "model", "processed_at"]
    fritz = ["fritz_classifications", "fritz_ml_classifications"]
    assert csv_columns(ZTF_TAXONOMY, CsvLayout("jd", fritz=True, stamp=False)) == [
        "candid", "objectId", "jd", "ra", "dec", *ztf_nodes, *common, *fritz]
    assert csv_columns(ZTF_TAXONOMY, CsvLayout("jd", fritz=True, stamp=True)) == [
        "candid", "objectId", "jd", "ra", "dec", *ztf_nodes, *common, *fritz, "stamp"]
    assert csv_columns(LSST_TAXONOMY, CsvLayout("mjd", fritz=False, stamp=False)) == [
        "candid", "objectId", "mjd", "ra", "dec", *lsst_nodes, *common]
    assert CsvLayout.of(ZTF, None) == CsvLayout("jd", True, False)
    assert CsvLayout.of(LSST, None) == CsvLayout("mjd", False, False)


def test_ztf_rows_carry_jd_position_and_the_predicted_leafs_probability(ztf_rows):
    rows = ztf_rows.set_index("candid")
    passing, _, _ = sample_truth(ZTF)
    no_aux = SAMPLE_TRUTH["ZTF"]["no_aux"]
    assert set(rows.index) == passing - no_aux
    assert list(rows.columns[:4]) == ["objectId", "jd", "ra", "dec"]
    assert "stamp" not in rows.columns and "fritz_classifications" in rows.columns
    docs = documents(ZTF)
    for candid, row in rows.iterrows():
        cand = docs[candid]["candidate"]
        assert row.jd == cand["jd"] and row.ra == cand["ra"] and row.dec == cand["dec"]
    leaves = [ZTF_TAXONOMY.nodes[i] for i in ZTF_TAXONOMY.leaves]
    assert (rows.predicted == rows[leaves].idxmax(axis=1)).all()
    np.testing.assert_array_equal(rows.predicted_probability, rows[leaves].max(axis=1))


def test_lsst_rows_carry_mjd_and_no_fritz_or_stamp_columns(lsst_rows):
    rows = lsst_rows.set_index("candid")
    passing, _, _ = sample_truth(LSST)
    assert set(rows.index) == passing
    assert "jd" not in rows.columns and "mjd" in rows.columns
    assert not {"fritz_classifications", "fritz_ml_classifications", "stamp"} & set(rows.columns)
    docs = documents(LSST)
    for candid, row in rows.iterrows():
        cand = docs[candid]["candidate"]
        # Rubin's own time: the DiaSource's MJD in TAI (BOOM's candidate.jd is UTC, 37 s behind)
        assert abs(row.mjd - cand["midpointMjdTai"]) < 1e-8  # ~1 ms
        assert abs(row.mjd - (cand["jd"] - JD_TO_MJD) - 37 / 86400) < 1e-8
        assert row.ra == cand["ra"] and row.dec == cand["dec"]
    leaves = [LSST_TAXONOMY.nodes[i] for i in LSST_TAXONOMY.leaves]
    assert (rows.predicted == rows[leaves].idxmax(axis=1)).all()
    np.testing.assert_array_equal(rows.predicted_probability, rows[leaves].max(axis=1))
