"""Omni's reference stamp as the deployment builds it, and the ZTF flow end to end with an Omni checkpoint.

The reference here is the deployed code (frenbox/oracle_support,
`oracle_boom_ztf.py`), restated in the test: `load_cutout` for the pixels and
`run_oracle`'s choice of channel (pandas: sort by jd, programid 1/2, 180-day
window, `band` of the last row; g 0, r 1, i 2).
"""

from __future__ import annotations

import gzip
import io
import shutil

import fastavro
import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from bytewax.testing import run_main
from prometheus_client import REGISTRY

from dataflows.oracle import build_flow
from models.oracle.networks import build_oracle
from models.oracle.taxonomy import ZTF_TAXONOMY
from operators.runtime.config import DATA_DIR
from operators.io.deadletter import read_dead_letters
from operators.oracle.results import read_results
from operators.samples.bundle import encode_result, read_messages, write_messages
from operators.oracle.store import read_documents, write_documents
from operators.oracle.stamps import ztf_stamp
from operators.oracle.surveys import ZTF
from operators.oracle.ztf_inputs import ztf_inputs
from tests.helpers import sample_truth, settings_for

# The real ZTF templates' headers are not quite standard FITS; astropy warns, the deployment ignores it.
pytestmark = pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")

SAMPLE = DATA_DIR / "ztf_sample"
DEPLOYMENT_BAND_TO_CHANNEL = {"g": 0, "r": 1, "i": 2}
EDGE = 3367504081715010000  # ZTF26aaoqcvo: a real CCD-edge template of 58x63 pixels, in the passing set
NO_AUX = 1048092120315015013  # ZTF26orphanxx: no aux document


def deployment_load_cutout(raw_bytes: bytes) -> np.ndarray:
    """frenbox/oracle_support `load_cutout`, for raw gzipped FITS bytes (torch left out)."""
    raw = gzip.decompress(raw_bytes)
    with fits.open(io.BytesIO(raw)) as hdul:
        image = hdul[0].data.astype(float)
    image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(image)
    if norm != 0:
        image = image / norm
    return image.astype(np.float32)


def deployment_band(prv_candidates: list[dict], until_jd: float) -> str:
    """`run_oracle`'s `final_alert_band` (plus issue 15's "no points after the alert")."""
    df = pd.DataFrame(prv_candidates).sort_values("jd")
    df = df[df["jd"] <= until_jd]
    df = df[df["programid"].isin([1, 2])].reset_index(drop=True)
    df = df[df["jd"] >= df["jd"].max() - 180].reset_index(drop=True)
    return df["band"].values[-1]


def fits_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(pixels.astype(np.float32)).writeto(buf)
    return gzip.compress(buf.getvalue())


def sample_documents():
    alerts = {int(d["_id"]): d for d in read_documents(SAMPLE / "ZTF_alerts.jsonl")}
    aux = {d["_id"]: d for d in read_documents(SAMPLE / "ZTF_alerts_aux.jsonl")}
    cutouts = {int(d["_id"]): d for d in read_documents(SAMPLE / "ZTF_alerts_cutouts.jsonl")}
    return alerts, aux, cutouts


def test_stamps_of_the_sample_are_the_deployments():
    alerts, aux, cutouts = sample_documents()
    checked = 0
    for candid, cutout in cutouts.items():
        alert = alerts[candid]
        if alert["objectId"] not in aux:
            continue
        inputs = ztf_inputs(alert, aux[alert["objectId"]], cutout, with_stamp=True)
        expected = np.zeros((3, 63, 63), np.float32)
        channel = DEPLOYMENT_BAND_TO_CHANNEL[deployment_band(aux[alert["objectId"]]["prv_candidates"],
                                                             alert["candidate"]["jd"])]
        template = deployment_load_cutout(cutout["cutoutTemplate"])
        if template.shape == (63, 63):  # else the deployment leaves the image all zeros
            expected[channel] = template
        status = "template" if candid != EDGE else "bad shape 58x63"
        assert (template.shape == (63, 63)) == (candid != EDGE)
        assert inputs.stamp_status == status
        assert inputs.stamp.dtype == np.float32
        np.testing.assert_array_equal(inputs.stamp, expected)
        checked += 1
    assert checked == 35


def test_template_goes_to_the_band_of_the_last_point_not_the_candidates():
    # A Caltech-only (programid 3) g-band candidate: the deployment drops it, so the
    # light curve ends on the r-band detection before it, and the template goes to r.
    alerts, aux, cutouts = sample_documents()
    candid = next(c for c in cutouts if alerts[c]["objectId"] in aux)
    alert = {**alerts[candid], "candidate": {**alerts[candid]["candidate"], "fid": 1, "programid": 3}}
    jd = alert["candidate"]["jd"]
    history = [{"jd": jd - 3.0, "fid": 1, "band": "g", "programid": 1, "magpsf": 19.0, "sigmapsf": 0.1},
               {"jd": jd - 1.0, "fid": 2, "band": "r", "programid": 2, "magpsf": 18.5, "sigmapsf": 0.1},
               {**alert["candidate"], "band": "g"}]
    doc = {**aux[alert["objectId"]], "prv_candidates": history}
    stamp = ztf_inputs(alert, doc, cutouts[candid], with_stamp=True).stamp
    assert deployment_band(history, jd) == "r"
    assert stamp[1].any() and not stamp[0].any() and not stamp[2].any()


def test_unusable_templates_give_zeros_and_say_why():
    real = next(iter(sample_documents()[2].values()))["cutoutTemplate"]
    pixels = fits.getdata(io.BytesIO(gzip.decompress(real)))
    cases = {
        "none": None,
        "none ": {},
        "empty": {"cutoutTemplate": b""},
        "undecodable": {"cutoutTemplate": b"\x1f\x8bnot gzip"},
        "undecodable ": {"cutoutTemplate": gzip.compress(b"not a FITS file")},
        "bad shape 58x63": {"cutoutTemplate": fits_bytes(pixels[:58])},
        "bad shape 63x64": {"cutoutTemplate": fits_bytes(np.ones((63, 64)))},
        "blank": {"cutoutTemplate": fits_bytes(np.full((63, 63), np.nan))},
    }
    for status, cutout in cases.items():
        image, got = ztf_stamp(cutout, 1)
        assert got == status.strip()
        assert image.shape == (3, 63, 63) and image.dtype == np.float32 and not image.any(), status
    assert ztf_stamp({"cutoutTemplate": real}, None)[1] == "no band"
    # the forms the deployment's load_cutout accepts give the same image
    image, status = ztf_stamp({"cutoutTemplate": real}, 2)
    assert status == "template" and np.linalg.norm(image) == pytest.approx(1.0, abs=1e-5)
    import base64

    b64 = base64.b64encode(real).decode()
    for form in ({"stampData": real}, {"$binary": {"base64": b64, "subType": "00"}}, b64):
        np.testing.assert_array_equal(ztf_stamp({"cutoutTemplate": form}, 2)[0], image)


@pytest.fixture(scope="module")
def omni_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_oracle("omni")
    state = model.state_dict()
    for key, value in state.items():  # trained-looking scales (timm's init mutes the image branch)
        if key.endswith(".gamma"):
            state[key] = torch.full_like(value, 0.5)
        if key.startswith(("image_spine.convnext.head.", "mlp_head.")) and value.ndim == 2:
            state[key] = 2 * torch.randn_like(value) / value.shape[1] ** 0.5
    path = tmp_path_factory.mktemp("omni") / "best_model_f1_ztf.pth"
    torch.save(state, path)
    return path


def stamps_counted(status: str) -> float:
    return REGISTRY.get_sample_value("alertflow_stamps_total",
                                     {"flow": "oracle_ztf", "survey": "ZTF", "status": status}) or 0.0


def test_ztf_flow_classifies_every_alert_with_or_without_a_template(tmp_path, omni_weights):
    settings = settings_for(ZTF, tmp_path, ORACLE_ZTF_WEIGHTS=omni_weights)
    run_main(build_flow(ZTF, settings))
    rows = read_results(settings.results_csv)
    passing, failing, _ = sample_truth(ZTF)
    no_aux = {d["candid"] for d in read_dead_letters(settings.deadletters) if d["reason"] == "no aux document"}
    assert no_aux == {NO_AUX}
    assert set(rows.candid) == passing - no_aux
    assert rows.model.str.contains("omni").all()
    assert rows.set_index("candid").stamp.to_dict() == {c: "template" if c != EDGE else "bad shape 58x63"
                                                         for c in passing - no_aux}
    leaves = [ZTF_TAXONOMY.nodes[i] for i in ZTF_TAXONOMY.leaves]
    np.testing.assert_allclose(rows[leaves].sum(axis=1), 1.0, atol=1e-4)

    # The real BOOM document (in the failing set) came without cutouts: classified, with zeros.
    before = stamps_counted("none")
    other = settings_for(ZTF, tmp_path / "other", ORACLE_ZTF_WEIGHTS=omni_weights, ORACLE_FILTER="ztf_other_filter")
    run_main(build_flow(ZTF, other))
    other_rows = read_results(other.results_csv).set_index("objectId")
    assert set(other_rows.candid) == failing
    assert other_rows.loc["ZTF26aarabyi", "stamp"] == "none"
    assert (other_rows.drop("ZTF26aarabyi").stamp == "template").all()
    assert not [d for d in read_dead_letters(other.deadletters) if "cutout" in d["reason"]]
    assert stamps_counted("none") == before + 1


def broken_sample(tmp_path, templates: dict[int, bytes], drop_cutout_docs: set[int]):
    """A copy of the bundled sample whose messages carry `templates` instead, and
    without the BOOM cutout documents of `drop_cutout_docs`."""
    out = tmp_path / "sample"
    shutil.copytree(SAMPLE, out)
    messages, replaced = [], set()
    for value in read_messages(SAMPLE):
        try:
            record = next(fastavro.reader(io.BytesIO(value)))
        except Exception:  # noqa: BLE001 - the sample's malformed messages (truncated, not Avro): kept as they are
            record = None
        if record is not None and record.get("candid") in templates:
            record["cutoutTemplate"] = templates[record["candid"]]
            value = encode_result(record)
            replaced.add(record["candid"])
        messages.append(value)
    assert replaced == set(templates), f"no message for candids {sorted(set(templates) - replaced)}"
    write_messages(out, messages)
    every = read_documents(SAMPLE / "ZTF_alerts_cutouts.jsonl")
    assert drop_cutout_docs <= {int(d["_id"]) for d in every}, "a cutout document to drop is not in the sample"
    docs = [d for d in every if int(d["_id"]) not in drop_cutout_docs]
    write_documents(out / "ZTF_alerts_cutouts.jsonl", docs)
    return out


def test_missing_and_misshapen_templates_are_classified_with_a_zero_image(tmp_path, omni_weights):
    alerts, aux, cutouts = sample_documents()
    passing, _, _ = sample_truth(ZTF)
    chosen = sorted(c for c in passing if c in cutouts and alerts[c]["objectId"] in aux and c != EDGE)[:4]
    none, shape, garbage, blank = chosen
    edge = fits_bytes(fits.getdata(io.BytesIO(gzip.decompress(cutouts[shape]["cutoutTemplate"])))[:58])
    nan = fits_bytes(np.full((63, 63), np.nan))
    expected = {none: "none", shape: "bad shape 58x63", garbage: "undecodable", blank: "blank",
                EDGE: "bad shape 58x63"}

    counted = {s: stamps_counted(s) for s in ("none", "bad shape nxn", "undecodable", "blank")}
    broken = settings_for(ZTF, tmp_path / "broken", ORACLE_ZTF_WEIGHTS=omni_weights, ALERTFLOW_SAMPLE_DIR=broken_sample(
        tmp_path / "broken", {none: b"", shape: edge, garbage: b"\x1f\x8b\x08garbage", blank: nan}, {none}))
    run_main(build_flow(ZTF, broken))
    rows = read_results(broken.results_csv).set_index("candid")
    assert set(rows.index) == passing - {NO_AUX}  # all but the one without an aux document
    assert rows.stamp.to_dict() == {c: expected.get(c, "template") for c in rows.index}
    # dead letters: the sample's malformed messages and its alert without an aux document, nothing else
    assert [d["candid"] for d in read_dead_letters(broken.deadletters) if d["stage"] != "parse"] == [NO_AUX]
    assert {s: stamps_counted(s) - n for s, n in counted.items()} == \
        {"none": 1, "bad shape nxn": 2, "undecodable": 1, "blank": 1}

    # The same four alerts, each with a 63x63 template of NaN (all zeros once cleaned): the same
    # probabilities, so a missing or misshapen template means exactly the all-zero image ...
    zeros = settings_for(ZTF, tmp_path / "zeros", ORACLE_ZTF_WEIGHTS=omni_weights, ALERTFLOW_SAMPLE_DIR=broken_sample(
        tmp_path / "zeros", {c: nan for c in chosen}, set()))
    run_main(build_flow(ZTF, zeros))
    zero_rows = read_results(zeros.results_csv).set_index("candid")
    nodes = list(ZTF_TAXONOMY.nodes)
    np.testing.assert_allclose(rows.loc[chosen, nodes], zero_rows.loc[chosen, nodes], atol=1e-5)
    # ... and not the real template's.
    real = settings_for(ZTF, tmp_path / "real", ORACLE_ZTF_WEIGHTS=omni_weights)
    run_main(build_flow(ZTF, real))
    real_rows = read_results(real.results_csv).set_index("candid")
    for c in chosen:
        diff = np.abs(real_rows.loc[c, nodes].to_numpy(float) - rows.loc[c, nodes].to_numpy(float)).max()
        assert diff > 1e-3


def test_light_curve_models_write_no_stamp_column(tmp_path):
    settings = settings_for(ZTF, tmp_path)
    run_main(build_flow(ZTF, settings))
    rows = read_results(settings.results_csv)
    assert len(rows) > 20 and "stamp" not in rows.columns
