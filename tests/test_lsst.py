"""The LSST ORACLE flow: the embedded default end to end, ORACLE inputs from real Rubin
alerts, the ELAsTiCCv2-lite checkpoint, and the 26-node probabilities it writes."""

from __future__ import annotations

import copy
import runpy

import numpy as np
import pytest
import torch
from bson import json_util
from bytewax.testing import cluster_main, run_main

from dataflows.oracle import build_flow
from models.oracle.loading import load_oracle
from models.oracle.networks import ModelLoadError, predict_proba
from models.oracle.taxonomy import LSST_TAXONOMY
from operators.runtime.config import DATA_DIR, ConfigError
from operators.io.deadletter import read_dead_letters
from operators.oracle.inputs import InputError
from operators.oracle.lsst_inputs import LSST_BAND_WAVELENGTH_UM, lsst_inputs
from operators.oracle.messages import decode_avro
from operators.oracle.results import read_results
from operators.samples.bundle import read_messages
from operators.oracle.store import EmbeddedStore
from operators.oracle.surveys import LSST, SURVEYS, configured, survey_named
from tests.helpers import sample_truth, settings_for

MESSAGES = read_messages(LSST.sample_dir)
STORE = EmbeddedStore(LSST.sample_dir, LSST.collections)
BOOM_ALERT = json_util.loads((DATA_DIR / "boom" / "lsst_alert.json").read_text())
BOOM_AUX = json_util.loads((DATA_DIR / "boom" / "lsst_aux.json").read_text())
NJY_PER_FLUXCAL = 10 ** (0.4 * (31.4 - 27.5))  # 36.31
LEAVES = [LSST_TAXONOMY.nodes[i] for i in LSST_TAXONOMY.leaves]
Y_OBJECT = "170028513894596704"  # real Rubin object with y-band DiaSources and forced photometry


def run(tmp_path, workers: int = 1, **env):
    """The embedded default (bundled messages and documents), as `dataflows/lsst.py` builds it."""
    survey, settings = configured(LSST, settings_for(LSST, tmp_path, **env))
    flow = build_flow(survey, settings)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return settings


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    settings = run(tmp_path_factory.mktemp("single"))
    return read_results(settings.results_csv), read_dead_letters(settings.deadletters)


def by_candid(rows):
    return rows.sort_values("candid").reset_index(drop=True)


# ---------------------------------------------------------------- the flow


def test_embedded_default_writes_a_row_for_every_passing_alert(single):
    rows, letters = single
    passing, failing, malformed = sample_truth(LSST)
    assert passing and failing and malformed >= 1, "the sample has passing, failing and malformed messages"
    assert rows.candid.is_unique
    assert set(rows.candid) == passing
    assert list(rows.columns[:5]) == ["candid", "objectId", "mjd", "ra", "dec"]
    assert list(rows.columns[5:5 + len(LSST_TAXONOMY)]) == list(LSST_TAXONOMY.nodes)
    # The sha256 of the shipped file, literal: another file with the same name cannot pass.
    assert (rows.model == "ORACLE-lsst_lite:best_model_f1_lsst.pth@f98f52330e62").all()
    assert [d["stage"] for d in letters] == ["parse"] * malformed, "only the malformed messages are dead letters"


def test_dataflows_lsst_module_is_the_embedded_default(tmp_path, monkeypatch, single):
    for name in ("KAFKA_BROKERS", "MONGODB_URI", "BOOM_DATABASE__HOST", "ALERTFLOW_SAMPLE_DIR", "ALERTFLOW_RESULTS_DIR",
                 "ALERTFLOW_LOGS_DIR", "ALERTFLOW_RECOVERY", "ORACLE_LSST_WEIGHTS", "ORACLE_LSST_FORCED_PHOTOMETRY",
                 "ORACLE_FILTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    flow = runpy.run_module("dataflows.lsst")["flow"]
    assert flow.flow_id == "oracle_lsst"
    run_main(flow)
    rows = read_results(tmp_path / "results" / "oracle_lsst_results.csv")
    assert set(rows.candid) == set(single[0].candid)
    assert (tmp_path / "logs" / "oracle_lsst.log").read_text().count("LSST batch") >= 1


def test_two_workers_write_the_same_rows_once(tmp_path, single):
    settings = run(tmp_path, workers=2)
    two = read_results(settings.results_csv)
    assert settings.results_csv.read_text().count("candid,objectId") == 1
    a, b = by_candid(single[0]), by_candid(two)
    assert list(a.candid) == list(b.candid) and list(a.predicted) == list(b.predicted)
    np.testing.assert_allclose(a[list(LSST_TAXONOMY.nodes)], b[list(LSST_TAXONOMY.nodes)], atol=1e-5)


def test_rows_obey_the_sibling_and_product_rules(single):
    rows = single[0]
    p = rows[list(LSST_TAXONOMY.nodes)].to_numpy()
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p[:, 0], 1.0)  # the root
    for parent in range(len(LSST_TAXONOMY)):
        kids = LSST_TAXONOMY.children(parent)
        if kids:  # siblings share their parent's probability
            np.testing.assert_allclose(p[:, kids].sum(axis=1), p[:, parent], atol=2e-5)
    np.testing.assert_allclose(rows[LEAVES].sum(axis=1), 1.0, atol=1e-4)
    assert (rows.predicted == rows[LEAVES].idxmax(axis=1)).all()

    # Product rule, from the logits: each node is the product of the softmax of its
    # sibling group along its path from the root.
    model = load_oracle(LSST.weights)
    for _, row in rows.iterrows():
        alert = STORE._alerts[int(row.candid)]
        ts = lsst_inputs(alert, STORE._aux[alert["objectId"]]).ts
        with torch.no_grad():
            logits = model(torch.from_numpy(ts[None]), torch.tensor([len(ts)]))[0].double().numpy()
        for node in range(1, len(LSST_TAXONOMY)):
            expected, i = 1.0, node
            while LSST_TAXONOMY.parent[i] >= 0:
                group = LSST_TAXONOMY.children(LSST_TAXONOMY.parent[i])
                expected *= np.exp(logits[i]) / np.exp(logits[group]).sum()
                i = LSST_TAXONOMY.parent[i]
            assert row[LSST_TAXONOMY.nodes[node]] == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_forced_photometry_setting_reaches_the_flow(tmp_path, single):
    rows = by_candid(read_results(run(tmp_path, ORACLE_LSST_FORCED_PHOTOMETRY="true").results_csv))
    base = by_candid(single[0])
    assert list(rows.candid) == list(base.candid)
    nodes = list(LSST_TAXONOMY.nodes)
    for (_, with_fp), (_, without) in zip(rows.iterrows(), base.iterrows()):
        alert = STORE._alerts[int(with_fp.candid)]
        has_fp = bool(STORE._aux[alert["objectId"]].get("fp_hists"))
        changed = not np.allclose(with_fp[nodes].astype(float), without[nodes].astype(float), atol=1e-5)
        assert changed == has_fp, with_fp.candid


# ---------------------------------------------------------------- inputs from real alerts


def test_real_boom_document_flux_conversion_and_order():
    x = lsst_inputs(BOOM_ALERT, BOOM_AUX)
    every = sorted(BOOM_AUX["prv_candidates"], key=lambda p: p["midpointMjdTai"])
    assert BOOM_ALERT["_id"] in {p["diaSourceId"] for p in every}, "BOOM keeps the current DiaSource in prv_candidates"
    # The aux document, read later, holds two DiaSources newer than this alert: they are not its history.
    sources = [p for p in every if p["midpointMjdTai"] <= BOOM_ALERT["candidate"]["midpointMjdTai"]]
    assert (len(every), len(sources)) == (8, 6)
    assert x.static is None and x.stamp is None
    assert x.length == len(sources)
    mjd = np.array([p["midpointMjdTai"] for p in sources])
    np.testing.assert_allclose(x.ts[:, 0], mjd - mjd[0], atol=1e-4)
    assert x.ts[0, 0] == 0 and np.all(np.diff(x.ts[:, 0]) >= 0)
    # nJy (zero point 31.4) -> ELAsTiCC FLUXCAL (zero point 27.5): ÷ 36.3.
    raw_flux = np.array([p["psfFlux"] for p in sources])
    raw_err = np.array([p["psfFluxErr"] for p in sources])
    np.testing.assert_allclose(x.ts[:, 1] * 36.3, raw_flux, rtol=1e-3)
    np.testing.assert_allclose(x.ts[:, 1], raw_flux / NJY_PER_FLUXCAL, rtol=1e-6)
    np.testing.assert_allclose(x.ts[:, 2], raw_err / NJY_PER_FLUXCAL, rtol=1e-6)
    np.testing.assert_allclose(x.ts[:, 3], [LSST_BAND_WAVELENGTH_UM[p["band"]] for p in sources], rtol=1e-6)
    np.testing.assert_array_equal(x.ts[:, 4], [1.0 if p["snr"] >= 5 else 0.0 for p in sources])


def test_y_band_is_kept_and_times_sorted_on_a_real_rubin_object():
    aux = STORE._aux[Y_OBJECT]
    alert = next(a for a in STORE._alerts.values() if a["objectId"] == Y_OBJECT)
    y_sources = [p for p in aux["prv_candidates"] if p["band"] == "y" and not p.get("psfFlux_flag")]
    assert y_sources, "the real object has y-band DiaSources, written in lower case by BOOM"
    ts = lsst_inputs(alert, aux).ts
    assert np.sum(np.isclose(ts[:, 3], 1.015)) == len(y_sources)
    assert set(np.round(ts[:, 3].astype(float), 4)) <= set(LSST_BAND_WAVELENGTH_UM.values())
    assert ts[0, 0] == 0 and np.all(np.diff(ts[:, 0]) >= 0)
    # Row by row: the object's usable DiaSources in time order, nJy ÷ 36.3.
    usable = sorted((p for p in aux["prv_candidates"] if not p.get("psfFlux_flag")), key=lambda p: p["midpointMjdTai"])
    assert len(usable) == len(ts) < len(aux["prv_candidates"]), "DiaSources whose PSF fit failed are left out"
    np.testing.assert_allclose(ts[:, 1], [p["psfFlux"] / NJY_PER_FLUXCAL for p in usable], rtol=1e-6)
    np.testing.assert_allclose(ts[:, 2], [p["psfFluxErr"] / NJY_PER_FLUXCAL for p in usable], rtol=1e-6)
    np.testing.assert_allclose(ts[:, 3], [LSST_BAND_WAVELENGTH_UM[p["band"]] for p in usable], rtol=1e-6)


def test_detection_flag_follows_snr():
    aux = copy.deepcopy(BOOM_AUX)
    low, missing = aux["prv_candidates"][0], aux["prv_candidates"][1]
    low["snr"] = 4.9
    del missing["snr"]  # falls back to |psfFlux| / psfFluxErr
    missing["psfFluxErr"] = abs(missing["psfFlux"]) / 3.0
    x = lsst_inputs(BOOM_ALERT, aux)
    mjd0 = min(p["midpointMjdTai"] for p in aux["prv_candidates"])

    def flag_at(point):
        return x.ts[np.argmin(np.abs(x.ts[:, 0] - (point["midpointMjdTai"] - mjd0))), 4]

    assert flag_at(low) == 0 and flag_at(missing) == 0
    assert x.ts[:, 4].sum() == x.length - 2


def test_forced_photometry_adds_flag_zero_points_only_when_enabled():
    for alert in STORE._alerts.values():
        aux = STORE._aux[alert["objectId"]]
        off = lsst_inputs(alert, aux).ts
        on = lsst_inputs(alert, aux, forced_photometry=True).ts
        detection_visits = {p["visit"] for p in [*aux["prv_candidates"], alert["candidate"]]}
        new_epochs = [p for p in aux.get("fp_hists", []) if p["visit"] not in detection_visits]
        assert len(on) - len(off) == len(new_epochs)
        # The detections are unchanged; what is added has flag 0, fluxes converted from nJy.
        first = min(p["midpointMjdTai"] for p in [*aux["prv_candidates"], *new_epochs, alert["candidate"]])
        det_first = min(p["midpointMjdTai"] for p in [*aux["prv_candidates"], alert["candidate"]])
        shifted = off.copy()
        shifted[:, 0] += det_first - first
        on_rows = {tuple(np.round(r, 3)) for r in on}
        assert {tuple(np.round(r, 3)) for r in shifted} <= on_rows
        assert int(on[:, 4].sum()) == int(off[:, 4].sum())
        np.testing.assert_allclose(sorted(on[:, 1][on[:, 4] == 0]),
                                   sorted([p["psfFlux"] / NJY_PER_FLUXCAL for p in new_epochs]
                                          + list(off[:, 1][off[:, 4] == 0])), rtol=1e-5)
    assert any(STORE._aux[a["objectId"]].get("fp_hists") for a in STORE._alerts.values())


def test_forced_photometry_setting_is_off_by_default_and_read_from_the_environment(tmp_path):
    assert settings_for(LSST, tmp_path).oracle.forced_photometry is False
    on = settings_for(LSST, tmp_path, ORACLE_LSST_FORCED_PHOTOMETRY="true")
    assert on.oracle.forced_photometry is True
    survey, _ = configured(LSST, on)
    alert = next(a for a in STORE._alerts.values() if a["objectId"] == Y_OBJECT)
    aux = STORE._aux[Y_OBJECT]
    assert survey.build_inputs(alert, aux, None, False).length == lsst_inputs(alert, aux, forced_photometry=True).length
    with pytest.raises(ConfigError, match="ORACLE_LSST_FORCED_PHOTOMETRY"):
        settings_for(LSST, tmp_path, ORACLE_LSST_FORCED_PHOTOMETRY="maybe")


def test_unusable_documents_raise_input_errors():
    with pytest.raises(InputError, match="no aux document"):
        lsst_inputs(BOOM_ALERT, None)
    with pytest.raises(InputError, match="candidate"):
        lsst_inputs({"objectId": "x"}, BOOM_AUX)
    nothing = {"prv_candidates": [dict(p, band="w") for p in BOOM_AUX["prv_candidates"]]}
    with pytest.raises(InputError, match="no usable detection"):
        lsst_inputs(dict(BOOM_ALERT, candidate=dict(BOOM_ALERT["candidate"], psfFlux=None)), nothing)
    with pytest.raises(InputError, match="image"):
        lsst_inputs(BOOM_ALERT, BOOM_AUX, None, True)


# ---------------------------------------------------------------- configuration, sample, weights


def test_lsst_survey_configuration():
    assert survey_named("lsst") is LSST and set(SURVEYS) == {"ZTF", "LSST"}
    assert (LSST.topic, LSST.filter_name) == ("LSST_alerts_results", "superphot_lsst")
    c = LSST.collections
    assert (c.alerts, c.aux, c.cutouts) == ("LSST_alerts", "LSST_alerts_aux", "LSST_alerts_cutouts")
    assert LSST.object_url("313629129590702081") == "https://babamul.caltech.edu/objects/LSST/313629129590702081"
    assert LSST.slack_channel_env == "SLACK_ORACLE_LSST_CHANNEL_ID"
    assert LSST.taxonomy is LSST_TAXONOMY and len(LSST_TAXONOMY) == 26
    settings = settings_for(LSST, DATA_DIR)
    assert settings.results_csv.name == "oracle_lsst_results.csv" and settings.log_file.name == "oracle_lsst.log"
    assert settings.oracle.weights == DATA_DIR / "best_model_f1_lsst.pth"


def test_sample_documents_are_boom_shaped():
    for candid, alert in STORE._alerts.items():
        cand = alert["candidate"]
        assert candid == cand["diaSourceId"]
        assert alert["objectId"] == (str(cand["diaObjectId"]) if cand.get("diaObjectId") else f"sso{cand['ssObjectId']}")
        assert {"l", "b"} <= set(alert["coordinates"])
        assert alert["objectId"] in STORE._aux
    surveys = set()
    for value in MESSAGES:
        try:
            surveys.add(decode_avro(value)["survey"])
        except Exception:
            pass
    assert surveys == {"LSST"}


def test_lsst_checkpoint_loads_strictly(tmp_path):
    model = load_oracle(LSST.weights)
    assert model.kind == "lsst_lite" and model.taxonomy is LSST_TAXONOMY and model.n_nodes == 26
    assert not model.needs_static and not model.needs_stamp
    state = torch.load(LSST.weights, map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())
    broken = dict(state)
    broken.pop("fc_out.bias")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ModelLoadError, match="fc_out.bias"):
        load_oracle(tmp_path / "broken.pth")
    torch.save({**state, "head_fc4.weight": torch.zeros(16, 16)}, tmp_path / "extra.pth")
    with pytest.raises(ModelLoadError, match="unexpected keys.*head_fc4.weight"):
        load_oracle(tmp_path / "extra.pth")
    torch.save({**state, "head_fc1.weight": torch.zeros(128, 64)}, tmp_path / "shape.pth")
    with pytest.raises(ModelLoadError, match="wrongly shaped keys.*head_fc1.weight"):
        load_oracle(tmp_path / "shape.pth")
    x = lsst_inputs(BOOM_ALERT, BOOM_AUX)
    probs = predict_proba(model, x.ts[None], np.array([x.length]))
    assert probs.shape == (1, 26) and np.isfinite(probs).all()
