"""What ORACLE was trained on, written out literally from upstream, so that a change
to the science code shows up here even where the golden alerts would not reach.

Upstream: dev-ved30/Oracle, branch new_arch, `src/oracle/custom_datasets/BTS.py`
(`time_independent_feature_list` + `meta_data_feature_list`) and
`src/oracle/taxonomies.py` (level order = `nx.bfs_tree` from the root).
"""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import numpy as np
import pytest
from bson import json_util

from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY
from operators.runtime.config import DATA_DIR
from operators.oracle.lsst_inputs import lsst_inputs
from operators.samples.bundle import build_ztf_sample
from operators.oracle.ztf_inputs import STATIC_FEATURES, static_features, ztf_inputs

UPSTREAM_STATIC = [
    "l", "b", "W1mag", "W2mag", "W3mag", "W4mag", "W1_minus_W3", "W2_minus_W3",
    "sky", "sgscore1", "sgscore2", "distpsnr1", "distpsnr2", "fwhm", "diffmaglim", "ndethist", "nmtchps",
    "drb", "ncovhist", "chinr", "sharpnr", "scorr", "sgmag1", "srmag1", "simag1", "szmag1", "sgmag2",
    "srmag2", "simag2", "szmag2",
]
UPSTREAM_ELASTICC_NODES = [
    "Alert", "Transient", "Variable", "SN", "Fast", "Long", "Periodic", "AGN",
    "SNIa", "SNIb/c", "SNIax", "SNI91bg", "SNII", "KN", "Dwarf Novae", "uLens", "M-dwarf Flare",
    "SLSN", "TDE", "ILOT", "CART", "PISN", "Cepheid", "RR Lyrae", "Delta Scuti", "EB",
]
UPSTREAM_BTS_NODES = ["Alert", "Persistent", "Transient", "AGN", "CV", "Varstar", "SN-Ia", "SN-II", "SN-Ib/c", "SLSN"]


def test_static_feature_order_is_upstreams():
    assert [f.replace("-", "_minus_") for f in STATIC_FEATURES] == UPSTREAM_STATIC


def test_taxonomies_are_upstreams_in_level_order():
    assert list(LSST_TAXONOMY.nodes) == UPSTREAM_ELASTICC_NODES
    assert list(ZTF_TAXONOMY.nodes) == UPSTREAM_BTS_NODES


def test_a_document_whose_static_fields_all_differ_gives_this_exact_vector():
    candidate = {
        "ra": 150.0, "dec": 2.0, "sky": 0.25, "sgscore1": 0.5, "sgscore2": 0.75, "distpsnr1": 1.5,
        "distpsnr2": 7.25, "fwhm": 2.125, "diffmaglim": 20.5, "ndethist": 12, "nmtchps": 3, "drb": 0.875,
        "ncovhist": 140, "chinr": 1.25, "sharpnr": -0.0625, "scorr": 9.5, "sgmag1": 18.25, "srmag1": 17.75,
        "simag1": 17.5, "szmag1": 17.25, "sgmag2": 21.0, "srmag2": -999.0, "simag2": None, "szmag2": float("nan"),
    }
    alert = {"objectId": "ZTF00handbuilt", "candidate": candidate, "coordinates": {"l": -30.5, "b": 45.25}}
    aux = {"cross_matches": {"AllWISE": [{"ra": 150.0, "dec": 2.0, "w1mpro": 15.5, "w2mpro": 14.75,
                                          "w3mpro": 12.5, "w4mpro": 8.25}]}}
    expected = [
        329.5, 45.25, 15.5, 14.75, 12.5, 8.25, 3.0, 2.25,  # l mod 360, b, W1..W4, W1-W3, W2-W3
        0.25, 0.5, 0.75, 1.5, 7.25, 2.125, 20.5, 12, 3, 0.875, 140, 1.25, -0.0625, 9.5,
        18.25, 17.75, 17.5, 17.25, 21.0, -9, -9, -9,  # -999, null and NaN are ORACLE's -9
    ]
    np.testing.assert_array_equal(static_features(alert, aux), np.float32(expected))


# ---------------------------------------------------------------- no points from the future



def _ztf_point(jd: float, mag: float, fid: int = 1) -> dict:
    return {"jd": jd, "fid": fid, "magpsf": mag, "sigmapsf": 0.05, "programid": 1}


def test_each_alert_of_an_object_sees_only_its_past():
    """Four alerts of one object, classified after all four were ingested (a restart
    after an outage): each alert's series ends at its own time."""
    points = [_ztf_point(2460000.5, 19.0), _ztf_point(2460002.5, 18.5, 2), _ztf_point(2460100.5, 18.0),
              _ztf_point(2460250.5, 17.5)]
    aux = {"prv_candidates": points}
    lengths, spans = [], []
    for point in points:
        x = ztf_inputs({"objectId": "ZTF00future", "candidate": point, "coordinates": {"l": 10.0, "b": 5.0}}, aux)
        lengths.append(x.length)
        spans.append(float(x.ts[-1, 0]))
        assert x.ts[-1, 1] == pytest.approx(point["magpsf"]), "the series ends at the alert itself"
    # The fourth alert's 180-day window (anchored on itself) drops the first two points.
    assert lengths == [1, 2, 3, 2]
    assert spans == [0.0, 2.0, 100.0, 150.0]


def test_lsst_alert_ignores_later_diasources_and_forced_photometry():
    def source(i, mjd):
        return {"diaSourceId": i, "midpointMjdTai": mjd, "band": "r", "psfFlux": 5000.0 + i, "psfFluxErr": 100.0,
                "snr": 50.0}
    sources = [source(1, 60000.0), source(2, 60001.0), source(3, 60002.0)]
    forced = [{"midpointMjdTai": 60000.5, "band": "g", "psfFlux": 10.0, "psfFluxErr": 100.0},
              {"midpointMjdTai": 60003.0, "band": "g", "psfFlux": 10.0, "psfFluxErr": 100.0}]
    aux = {"prv_candidates": sources, "fp_hists": forced}
    middle = lsst_inputs({"candidate": sources[1]}, aux, forced_photometry=True)
    np.testing.assert_allclose(middle.ts[:, 0], [0.0, 0.5, 1.0])
    assert middle.ts[:, 4].tolist() == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------- the sample builder

def test_sample_builder_keeps_two_detections_at_one_jd(tmp_path):
    """Two sources in one image share a jd: both are detections of the history."""
    with (DATA_DIR / "fink" / "fink_ztf_2019_alert_1.avro").open("rb") as f:
        reader = fastavro.reader(f)
        schema, alert = reader.writer_schema, next(reader)
    detections = [p for p in alert["prv_candidates"] if p.get("magpsf") is not None]
    twin = dict(detections[-1], magpsf=detections[-1]["magpsf"] + 0.5, fid=3 - detections[-1]["fid"])
    alert["prv_candidates"] = [*alert["prv_candidates"], twin]
    (tmp_path / "fink").mkdir()
    with (tmp_path / "fink" / "fink_ztf_twin.avro").open("wb") as f:
        fastavro.writer(f, schema, [alert])
    (tmp_path / "boom").symlink_to(DATA_DIR / "boom")
    build_ztf_sample(tmp_path, tmp_path / "sample")
    aux = [json.loads(line) for line in (tmp_path / "sample" / "ZTF_alerts_aux.jsonl").read_text().splitlines()]
    history = next(d for d in aux if d["_id"] == alert["objectId"])["prv_candidates"]
    at_jd = [p for p in history if p["jd"] == twin["jd"]]
    assert sorted(p["magpsf"] for p in at_jd) == sorted([detections[-1]["magpsf"], twin["magpsf"]])
    assert len(history) == len(detections) + 1 + (alert["candidate"]["jd"] not in {p["jd"] for p in detections})
