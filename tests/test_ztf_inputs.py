"""ORACLE inputs built from real BOOM documents and real ZTF alerts."""

from __future__ import annotations

import numpy as np
import pytest
from bson import json_util

from operators.runtime.config import DATA_DIR
from operators.oracle.store import EmbeddedStore
from operators.oracle.surveys import ZTF
from operators.oracle.ztf_inputs import MISSING, STATIC_FEATURES, InputError, light_curve, static_features, ztf_inputs

BOOM_ALERT = json_util.loads((DATA_DIR / "boom" / "ztf_alert.json").read_text())
BOOM_AUX = json_util.loads((DATA_DIR / "boom" / "ztf_alert_aux.json").read_text())


def test_real_boom_document_gives_the_documented_inputs():
    x = ztf_inputs(BOOM_ALERT, BOOM_AUX)
    cand = BOOM_ALERT["candidate"]
    # One i-band detection: [0, mag, err, 0.7545 µm, 1].
    np.testing.assert_allclose(x.ts, [[0.0, cand["magpsf"], cand["sigmapsf"], 0.7545, 1.0]], rtol=1e-6)
    assert x.static.shape == (30,) and len(STATIC_FEATURES) == 30
    s = dict(zip(STATIC_FEATURES, x.static))
    # BOOM wraps l to (-180, 180]; ORACLE wants [0, 360).
    assert BOOM_ALERT["coordinates"]["l"] < 0
    assert s["l"] == pytest.approx(BOOM_ALERT["coordinates"]["l"] % 360, rel=1e-6)
    assert s["b"] == pytest.approx(BOOM_ALERT["coordinates"]["b"], rel=1e-6)
    assert s["sgmag1"] == MISSING  # -999 in the document
    assert s["srmag1"] == pytest.approx(cand["srmag1"], rel=1e-6)
    assert s["drb"] == pytest.approx(cand["drb"], rel=1e-6)
    assert s["W1mag"] == s["W1-W3"] == MISSING  # no WISE match in this document


def test_light_curves_of_real_alerts_follow_the_rules():
    store = EmbeddedStore(ZTF.sample_dir, ZTF.collections)
    checked = 0
    for object_id, aux in store._aux.items():
        points = aux["prv_candidates"]
        ts = light_curve(points)
        if len(ts) == 0:
            continue
        checked += 1
        assert ts[0, 0] == 0 and np.all(np.diff(ts[:, 0]) >= 0), "time from first point, sorted"
        assert ts[:, 0].max() <= 180
        assert np.isin(np.round(ts[:, 3].astype(float), 4), [0.476, 0.6215, 0.7545]).all()
        assert np.all(ts[:, 4] == 1), "every row is a detection"
        mags = [p["magpsf"] for p in points if p.get("magpsf") is not None and p.get("programid") in (1, 2)]
        assert len(ts) <= len(mags)
        assert np.isin(np.round(ts[:, 1], 4), np.round(np.float32(mags), 4)).all()
    assert checked > 30


def test_history_window_duplicates_and_programs():
    base = {"fid": 1, "programid": 1, "magpsf": 18.0, "sigmapsf": 0.1}
    points = [
        {**base, "jd": 2460000.0},  # older than 180 days before the newest: dropped
        {**base, "jd": 2460300.0, "magpsf": 17.5},
        {**base, "jd": 2460300.0, "magpsf": 17.5, "sigmapsf": 0.2},  # duplicate (jd, band, mag)
        {**base, "jd": 2460301.0, "programid": 3},  # Caltech-only program: not used
        {**base, "jd": 2460302.0, "magpsf": None},  # upper limit
        {**base, "jd": 2460310.0, "fid": 2, "magpsf": 17.0},
    ]
    ts = light_curve(points)
    np.testing.assert_allclose(ts[:, 0], [0.0, 10.0])
    np.testing.assert_allclose(ts[:, 3], [0.476, 0.6215], rtol=1e-6)


def test_nearest_wise_match_fills_wise_columns():
    aux = dict(BOOM_AUX, cross_matches={"AllWISE": [
        {"ra": BOOM_ALERT["candidate"]["ra"] + 0.001, "dec": BOOM_ALERT["candidate"]["dec"],
         "w1mpro": 15.0, "w2mpro": 14.5, "w3mpro": 12.0, "w4mpro": None},
        {"ra": BOOM_ALERT["candidate"]["ra"], "dec": BOOM_ALERT["candidate"]["dec"],
         "w1mpro": 16.0, "w2mpro": 15.5, "w3mpro": 13.0, "w4mpro": 9.0},
    ]})
    s = dict(zip(STATIC_FEATURES, static_features(BOOM_ALERT, aux)))
    assert (s["W1mag"], s["W2mag"], s["W3mag"], s["W4mag"]) == (16.0, 15.5, 13.0, 9.0)
    assert s["W1-W3"] == pytest.approx(3.0) and s["W2-W3"] == pytest.approx(2.5)


def test_documents_that_cannot_make_inputs_say_why():
    with pytest.raises(InputError, match="no aux document"):
        ztf_inputs(BOOM_ALERT, None)
    with pytest.raises(InputError, match="candidate"):
        ztf_inputs({"objectId": "x"}, BOOM_AUX)
    no_dets = dict(BOOM_ALERT, candidate=dict(BOOM_ALERT["candidate"], magpsf=None))
    with pytest.raises(InputError, match="no usable detection"):
        ztf_inputs(no_dets, dict(BOOM_AUX, prv_candidates=[]))
