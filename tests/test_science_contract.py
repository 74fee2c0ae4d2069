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

# BOOM keeps one light-curve point per jd in its aux documents, the first ingested winning
# (boom-astro/boom: src/alert/base.rs `sanitize_timeseries`, src/alert/ztf.rs `process_alert`,
# src/utils/db.rs `update_timeseries_op`). The values below are literal; only the fields BOOM
# does not look at come from a real alert (data/fink/fink_ztf_2019_alert_1.avro).
OBJECT = "ZTF18literal"
JD_TWINS, JD_FIRST, JD_LATER, JD_NONDET = 2458800.625, 2458800.75, 2458801.75, 2458800.5


def _packet(template: dict, candid: int, candidate: tuple, history: list[tuple]) -> dict:
    """A Fink/ZTF packet of `OBJECT`: points are (jd, fid, magpsf or None)."""
    def point(base, jd, fid, mag):
        return dict(base, jd=jd, fid=fid, magpsf=mag, sigmapsf=None if mag is None else 0.05,
                    candid=None if mag is None else candid - 1)
    base = template["prv_candidates"][0]
    cand = point(template["candidate"], *candidate) | {"candid": candid}
    return dict(template, objectId=OBJECT, candid=candid, candidate=cand,
                prv_candidates=[point(base, *p) for p in history])


def test_sample_builder_keeps_one_point_per_jd_the_first_ingested(tmp_path):
    with (DATA_DIR / "fink" / "fink_ztf_2019_alert_1.avro").open("rb") as f:
        reader = fastavro.reader(f)
        schema, template = reader.writer_schema, next(reader)
    first = _packet(template, 1001, candidate=(JD_FIRST, 2, 18.25), history=[
        (JD_NONDET, 2, None),
        (JD_TWINS, 2, 18.5),  # two detections at one jd (two sources in one image):
        (JD_TWINS, 1, 19.0),  # BOOM keeps the first of the packet
    ])
    later = _packet(template, 1002, candidate=(JD_LATER, 2, 18.0), history=[
        (JD_NONDET, 2, None),
        (JD_TWINS, 2, 18.50003),  # the same detection again, its magnitude differing in the 5th digit
        (JD_FIRST, 2, 18.25002),  # the first packet's candidate, re-measured
        (JD_LATER, 1, 17.5),  # a detection at the candidate's own jd: the candidate is not appended
    ])
    (tmp_path / "fink").mkdir()
    with (tmp_path / "fink" / "fink_ztf_literal.avro").open("wb") as f:
        fastavro.writer(f, schema, [later, first])  # file order is not time order: BOOM ingests by time
    (tmp_path / "boom").symlink_to(DATA_DIR / "boom")
    build_ztf_sample(tmp_path, tmp_path / "sample")

    aux = [json.loads(line) for line in (tmp_path / "sample" / "ZTF_alerts_aux.jsonl").read_text().splitlines()]
    doc = next(d for d in aux if d["_id"] == OBJECT)
    got = [(p["jd"], p["fid"], round(p["magpsf"], 5)) for p in doc["prv_candidates"]]
    assert got == [(JD_TWINS, 2, 18.5), (JD_FIRST, 2, 18.25), (JD_LATER, 1, 17.5)]
    assert [p["jd"] for p in doc["prv_nondetections"]] == [JD_NONDET]


def test_boom_series_rules_on_literal_points():
    from operators.samples.boom_series import boom_merged, boom_packet_series, boom_sanitized

    def pts(*pairs):
        return [{"jd": jd, "m": m} for jd, m in pairs]

    assert boom_sanitized(pts((3.0, "c"), (1.0, "a1"), (float("nan"), "x"), (1.0, "a2"), (2.0, "b"))) == \
        pts((1.0, "a1"), (2.0, "b"), (3.0, "c"))
    assert boom_packet_series(pts((1.0, "a"), (2.0, "b")), {"jd": 2.0, "m": "cand"}) == pts((1.0, "a"), (2.0, "b"))
    assert boom_packet_series(pts((1.0, "a")), {"jd": 2.0, "m": "cand"}) == pts((1.0, "a"), (2.0, "cand"))
    assert boom_merged(pts((1.0, "old"), (3.0, "old")), pts((1.0, "new"), (2.0, "new"), (3.0, "new"))) == \
        pts((1.0, "old"), (2.0, "new"), (3.0, "old"))
