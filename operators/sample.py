"""The bundled sample: BOOM-shaped filter-result messages and documents.

A sample directory (`data/ztf_sample/`, `data/lsst_sample/`) holds
- `messages.jsonl`: one Kafka message value per line, `{"value_b64": ...}`,
  in publication order (some pass the filter, some do not, some are malformed);
- `{SURVEY}_alerts.jsonl`, `{SURVEY}_alerts_aux.jsonl`, `{SURVEY}_alerts_cutouts.jsonl`:
  the matching BOOM documents, MongoDB Extended JSON, one per line.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Iterable


def read_messages(sample_dir: Path) -> list[bytes]:
    with (Path(sample_dir) / "messages.jsonl").open() as f:
        return [base64.b64decode(json.loads(line)["value_b64"]) for line in f if line.strip()]


def write_messages(sample_dir: Path, values: Iterable[bytes]) -> None:
    path = Path(sample_dir) / "messages.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for value in values:
            f.write(json.dumps({"value_b64": base64.b64encode(value).decode("ascii")}) + "\n")


# --- building the ZTF sample from real alerts ------------------------------------------
# Run `python -m operators.sample` to rebuild data/ztf_sample from the bundled
# Fink alerts (data/fink/) and the real BOOM documents (data/boom/).

BOOM_RESULT_SCHEMA = {
    "type": "record",
    "name": "Alert",
    "fields": [
        {"name": "candid", "type": "long"},
        {"name": "objectId", "type": "string"},
        {"name": "jd", "type": "double"},
        {"name": "ra", "type": "double"},
        {"name": "dec", "type": "double"},
        {"name": "survey", "type": {"type": "enum", "name": "Survey", "symbols": ["ZTF", "LSST", "DECAM"]}},
        {"name": "filters", "type": {"type": "array", "items": {
            "type": "record", "name": "FilterResults", "fields": [
                {"name": "filter_id", "type": "string"},
                {"name": "filter_name", "type": ["null", "string"], "default": None},
                {"name": "passed_at", "type": "double"},
                {"name": "annotations", "type": "string"},
            ]}}},
        {"name": "classifications", "type": {"type": "array", "items": {
            "type": "record", "name": "Classification", "fields": [
                {"name": "classifier", "type": "string"},
                {"name": "score", "type": "double"},
            ]}}},
        {"name": "photometry", "type": {"type": "array", "items": {
            "type": "record", "name": "Photometry", "fields": [
                {"name": "jd", "type": "double"},
                {"name": "flux", "type": ["null", "double"], "doc": "in nJy"},
                {"name": "flux_err", "type": "double", "doc": "in nJy"},
                {"name": "band", "type": "string"},
                {"name": "zero_point", "type": "double"},
                {"name": "origin", "type": {"type": "enum", "name": "Origin", "symbols": ["Alert", "ForcedPhot"]}},
                {"name": "programid", "type": "int"},
                {"name": "survey", "type": "Survey"},
                {"name": "ra", "type": ["null", "double"]},
                {"name": "dec", "type": ["null", "double"]},
            ]}}},
        {"name": "cutoutScience", "type": "bytes"},
        {"name": "cutoutTemplate", "type": "bytes"},
        {"name": "cutoutDifference", "type": "bytes"},
    ],
}


def encode_result(record: dict, codec: str = "snappy") -> bytes:
    """One BOOM filter-result message: an Avro container holding one record."""
    import io

    import fastavro

    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(BOOM_RESULT_SCHEMA), [record], codec=codec)
    return buf.getvalue()


def _photometry(points: list[dict], survey: str = "ZTF") -> list[dict]:
    bands = {1: "g", 2: "r", 3: "i"}
    out = []
    for p in points:
        mag, err = p.get("magpsf"), p.get("sigmapsf")
        flux = 10 ** (-0.4 * (mag - 31.4)) if mag is not None else None
        out.append({
            "jd": p["jd"], "flux": flux,
            "flux_err": (flux * err * 0.921034 if flux is not None and err is not None
                         else 10 ** (-0.4 * ((p.get("diffmaglim") or 20.0) - 31.4)) / 5),
            "band": bands.get(p.get("fid"), "g"), "zero_point": 31.4, "origin": "Alert",
            "programid": int(p.get("programid") or 1), "survey": survey,
            "ra": p.get("ra"), "dec": p.get("dec"),
        })
    return out


def _result_record(alert_doc: dict, aux_doc: dict, cutouts: dict, passed: bool, filter_name: str) -> dict:
    cand = alert_doc["candidate"]
    other = "ztf_other_filter"
    name = filter_name if passed else other
    return {
        "candid": int(alert_doc["_id"]), "objectId": alert_doc["objectId"], "jd": cand["jd"],
        "ra": cand["ra"], "dec": cand["dec"], "survey": "ZTF",
        "filters": [{"filter_id": name, "filter_name": name, "passed_at": cand["jd"], "annotations": "{}"}],
        "classifications": [],
        "photometry": _photometry(aux_doc.get("prv_candidates", []) if aux_doc else [cand]),
        "cutoutScience": cutouts.get("cutoutScience", b""),
        "cutoutTemplate": cutouts.get("cutoutTemplate", b""),
        "cutoutDifference": cutouts.get("cutoutDifference", b""),
    }


def _boomify(point: dict) -> dict:
    """A ZTF candidate as BOOM stores it: boolean isdiffpos and a band letter."""
    out = dict(point)
    if isinstance(out.get("isdiffpos"), str):
        out["isdiffpos"] = out["isdiffpos"] in ("t", "1")
    out["band"] = {1: "g", 2: "r", 3: "i"}.get(out.get("fid"), "g")
    return out


def build_ztf_sample(data_dir: Path, out_dir: Path, filter_name: str = "rcfdeep_partnership_ztf") -> dict:
    """Write BOOM-shaped documents and filter-result messages for the real ZTF alerts.

    Every fourth alert fails the filter; one passing alert has no aux document;
    three messages are malformed (truncated, not Avro, no candid).
    """
    import fastavro
    import numpy as np
    from astropy.coordinates import SkyCoord
    from bson import json_util

    fink = []
    for path in sorted((data_dir / "fink").glob("fink_ztf_*.avro")):
        with path.open("rb") as f:
            fink.extend(fastavro.reader(f))
    ra = np.array([a["candidate"]["ra"] for a in fink])
    dec = np.array([a["candidate"]["dec"] for a in fink])
    gal = SkyCoord(ra=ra, dec=dec, unit="deg").galactic
    # BOOM stores l wrapped to (-180, 180].
    l_wrapped = np.where(gal.l.deg > 180, gal.l.deg - 360, gal.l.deg)

    alerts, aux, cutouts = [], {}, []
    for a, l, b in zip(fink, l_wrapped, gal.b.deg):
        cand = _boomify(a["candidate"])
        alerts.append({
            "_id": int(a["candid"]), "objectId": a["objectId"], "candidate": cand,
            "coordinates": {"l": float(l), "b": float(b)},
        })
        history = [_boomify(p) for p in (a.get("prv_candidates") or [])]
        dets = {p["jd"]: p for p in history if p.get("magpsf") is not None}
        dets[cand["jd"]] = cand
        doc = aux.setdefault(a["objectId"], {
            "_id": a["objectId"], "prv_candidates": [], "prv_nondetections": [],
            "fp_hists": [], "cross_matches": {"AllWISE": []}, "coordinates": {"l": float(l), "b": float(b)},
        })
        merged = {p["jd"]: p for p in doc["prv_candidates"]}
        merged.update(dets)
        doc["prv_candidates"] = sorted(merged.values(), key=lambda p: p["jd"])
        doc["prv_nondetections"] = sorted(
            [p for p in history if p.get("magpsf") is None], key=lambda p: p["jd"])
        cutouts.append({"_id": int(a["candid"])} | {
            k: a[k]["stampData"] for k in ("cutoutScience", "cutoutTemplate", "cutoutDifference") if a.get(k)})

    # The real BOOM documents, as BOOM wrote them.
    boom_alert = json_util.loads((data_dir / "boom" / "ztf_alert.json").read_text())
    boom_aux = json_util.loads((data_dir / "boom" / "ztf_alert_aux.json").read_text())
    alerts.append(boom_alert)
    aux[boom_aux["_id"]] = boom_aux

    cut_by_id = {c["_id"]: c for c in cutouts}
    messages = []
    for i, doc in enumerate(alerts):
        passed = i % 4 != 3
        messages.append(encode_result(_result_record(
            doc, aux.get(doc["objectId"]), cut_by_id.get(int(doc["_id"]), {}), passed, filter_name)))

    # A passing alert whose object has no aux document: dead-lettered, not guessed.
    orphan = dict(alerts[0], _id=int(alerts[0]["_id"]) + 1, objectId="ZTF26orphanxx")
    alerts.append(orphan)
    messages.insert(5, encode_result(_result_record(orphan, None, {}, True, filter_name)))
    # Malformed messages.
    messages.insert(2, messages[0][: len(messages[0]) // 2])
    messages.insert(9, b"this is not an Avro container")
    no_candid = {"type": "record", "name": "Alert", "fields": [{"name": "objectId", "type": "string"}]}
    import io

    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(no_candid), [{"objectId": "ZTF26nocandid"}])
    messages.insert(14, buf.getvalue())

    from operators.store import write_documents

    write_documents(out_dir / "ZTF_alerts.jsonl", alerts)
    write_documents(out_dir / "ZTF_alerts_aux.jsonl", aux.values())
    write_documents(out_dir / "ZTF_alerts_cutouts.jsonl", cutouts)
    write_messages(out_dir, messages)
    return {"alerts": len(alerts), "objects": len(aux), "messages": len(messages)}


if __name__ == "__main__":
    from operators.config import DATA_DIR

    print(build_ztf_sample(DATA_DIR, DATA_DIR / "ztf_sample"))
