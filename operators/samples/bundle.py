"""The bundled sample: BOOM-shaped filter-result messages and documents.

A sample directory (`data/ztf_sample/`, `data/lsst_sample/`) holds
- `messages.jsonl`: one Kafka message value per line, `{"value_b64": ...}`,
  in publication order (some pass the filter, some do not, some are malformed);
- `{SURVEY}_alerts.jsonl`, `{SURVEY}_alerts_aux.jsonl`, `{SURVEY}_alerts_cutouts.jsonl`:
  the matching BOOM documents, MongoDB Extended JSON, one per line.

`python -m operators.samples.bundle [--out-dir DIR] [--survey ztf|lsst|all]` rebuilds
the samples from the real alerts under `data/fink/` (Fink Avro) and the real BOOM
documents under `data/boom/` (`build_ztf_sample`, `build_lsst_sample`), byte for byte
the same while those are unchanged (tests/test_sample_bundle.py). Aux documents are
built as BOOM builds them, alert after alert in time order: one point per jd, the
first ingested kept (`boom_sanitized`, `boom_packet_series`, `boom_merged`).
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Callable, Iterable, Optional

from operators.samples.boom_series import boom_merged, boom_packet_series, boom_sanitized


def read_messages(sample_dir: Path) -> list[bytes]:
    with (Path(sample_dir) / "messages.jsonl").open() as f:
        return [base64.b64decode(json.loads(line)["value_b64"]) for line in f if line.strip()]


def write_messages(sample_dir: Path, values: Iterable[bytes]) -> None:
    path = Path(sample_dir) / "messages.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for value in values:
            f.write(json.dumps({"value_b64": base64.b64encode(value).decode("ascii")}) + "\n")


# --- building the samples from real alerts ---------------------------------------------

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


# Avro containers end each block with a sync marker, random unless given: a fixed one
# makes rebuilding an unchanged sample write the same bytes (readers only compare it
# with the header's copy).
SYNC_MARKER = b"alertflow-sample"


def encode_result(record: dict, codec: str = "snappy") -> bytes:
    """One BOOM filter-result message: an Avro container holding one record."""
    import io

    import fastavro

    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(BOOM_RESULT_SCHEMA), [record], codec=codec, sync_marker=SYNC_MARKER)
    return buf.getvalue()


def _read_avro(paths: Iterable[Path]) -> list[dict]:
    import fastavro

    records = []
    for path in paths:
        with Path(path).open("rb") as f:
            records.extend(fastavro.reader(f))
    return records


def _galactic(ra: list[float], dec: list[float]) -> list[dict]:
    """`coordinates` as BOOM stores them: galactic l wrapped to (−180, 180], and b."""
    import numpy as np
    from astropy.coordinates import SkyCoord

    gal = SkyCoord(ra=np.asarray(ra), dec=np.asarray(dec), unit="deg").galactic
    l_wrapped = np.where(gal.l.deg > 180, gal.l.deg - 360, gal.l.deg)
    return [{"l": float(l), "b": float(b)} for l, b in zip(l_wrapped, gal.b.deg)]


def _photometry_point(survey: str, jd: float, flux, flux_err: float, band: str, origin: str = "Alert",
                      programid: int = 1, ra=None, dec=None) -> dict:
    """One `photometry` item of a BOOM filter result (fluxes in nJy, AB zero point 31.4)."""
    return {"jd": jd, "flux": flux, "flux_err": flux_err, "band": band, "zero_point": 31.4, "origin": origin,
            "programid": programid, "survey": survey, "ra": ra, "dec": dec}


def _ztf_photometry(alert_doc: dict, aux_doc: Optional[dict]) -> list[dict]:
    bands = {1: "g", 2: "r", 3: "i"}
    out = []
    for p in aux_doc.get("prv_candidates", []) if aux_doc else [alert_doc["candidate"]]:
        mag, err = p.get("magpsf"), p.get("sigmapsf")
        flux = 10 ** (-0.4 * (mag - 31.4)) if mag is not None else None
        out.append(_photometry_point(
            "ZTF", p["jd"], flux,
            (flux * err * 0.921034 if flux is not None and err is not None
             else 10 ** (-0.4 * ((p.get("diffmaglim") or 20.0) - 31.4)) / 5),
            bands.get(p.get("fid"), "g"), programid=int(p.get("programid") or 1), ra=p.get("ra"), dec=p.get("dec")))
    return out


def _lsst_photometry(alert_doc: dict, aux_doc: Optional[dict]) -> list[dict]:
    aux_doc = aux_doc or {"prv_candidates": [alert_doc["candidate"]]}
    out = []
    for series, origin in (("prv_candidates", "Alert"), ("fp_hists", "ForcedPhot")):
        for p in aux_doc.get(series) or []:
            if p.get("psfFluxErr") is not None:
                out.append(_photometry_point("LSST", p["jd"], p.get("psfFlux"), p["psfFluxErr"], p["band"], origin,
                                             ra=p.get("ra"), dec=p.get("dec")))
    return out


def _result_record(survey: str, alert_doc: dict, photometry: list[dict], cutouts: dict, filter_name: str) -> dict:
    cand = alert_doc["candidate"]
    return {
        "candid": int(alert_doc["_id"]), "objectId": alert_doc["objectId"], "jd": cand["jd"],
        "ra": cand["ra"], "dec": cand["dec"], "survey": survey,
        "filters": [{"filter_id": filter_name, "filter_name": filter_name, "passed_at": cand["jd"], "annotations": "{}"}],
        "classifications": [],
        "photometry": photometry,
        "cutoutScience": cutouts.get("cutoutScience", b""),
        "cutoutTemplate": cutouts.get("cutoutTemplate", b""),
        "cutoutDifference": cutouts.get("cutoutDifference", b""),
    }


def _messages(survey: str, alerts: list[dict], aux: dict, cutouts: list[dict], photometry: Callable,
              passes: Callable[[int, dict], bool], filter_name: str) -> list[bytes]:
    """One filter-result message per alert document, naming `filter_name` when `passes(i, doc)`."""
    cut_by_id = {c["_id"]: c for c in cutouts}
    other = f"{survey.lower()}_other_filter"
    return [
        encode_result(_result_record(survey, doc, photometry(doc, aux.get(doc["objectId"])),
                                     cut_by_id.get(int(doc["_id"]), {}), filter_name if passes(i, doc) else other))
        for i, doc in enumerate(alerts)
    ]


def _insert_malformed(messages: list[bytes], at: tuple[int, int, int], object_id: str) -> None:
    """A truncated container, bytes that are not Avro, and a record without candid, at `at`."""
    import io

    import fastavro

    no_candid = {"type": "record", "name": "Alert", "fields": [{"name": "objectId", "type": "string"}]}
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(no_candid), [{"objectId": object_id}], sync_marker=SYNC_MARKER)
    messages.insert(at[0], messages[0][: len(messages[0]) // 2])
    messages.insert(at[1], b"this is not an Avro container")
    messages.insert(at[2], buf.getvalue())


def _write_sample(out_dir: Path, survey: str, alerts: list[dict], aux: Iterable[dict], cutouts: list[dict],
                  messages: list[bytes]) -> dict:
    from operators.oracle.store import write_documents

    aux = list(aux)
    # Objects in the order their first alert appears in the sample (the merge ran in time order).
    first_seen = {object_id: i for i, object_id in reversed(list(enumerate(a["objectId"] for a in alerts)))}
    aux.sort(key=lambda doc: first_seen.get(doc["_id"], len(first_seen)))
    write_documents(out_dir / f"{survey}_alerts.jsonl", alerts)
    write_documents(out_dir / f"{survey}_alerts_aux.jsonl", aux)
    write_documents(out_dir / f"{survey}_alerts_cutouts.jsonl", cutouts)
    write_messages(out_dir, messages)
    return {"alerts": len(alerts), "objects": len(aux), "messages": len(messages)}


def _add_boom_documents(data_dir: Path, alert_file: str, aux_file: str, alerts: list[dict], aux: dict) -> None:
    """Add the real BOOM documents of `data/boom/`, as BOOM wrote them (Extended JSON)."""
    from bson import json_util

    boom_alert = json_util.loads((data_dir / "boom" / alert_file).read_text())
    boom_aux = json_util.loads((data_dir / "boom" / aux_file).read_text())
    alerts.append(boom_alert)
    aux[boom_aux["_id"]] = boom_aux


def _boomify(point: dict) -> dict:
    """A ZTF candidate as BOOM stores it: boolean isdiffpos and a band letter."""
    out = dict(point)
    if isinstance(out.get("isdiffpos"), str):
        out["isdiffpos"] = out["isdiffpos"] in ("t", "1")
    out["band"] = {1: "g", 2: "r", 3: "i"}.get(out.get("fid"), "g")
    return out


def _alert_time_order(alerts: list[dict], jd: Callable[[dict], float]) -> list[dict]:
    """The alerts in the order BOOM ingests them: by time (stable for equal times)."""
    return sorted(alerts, key=jd)


def build_ztf_sample(data_dir: Path, out_dir: Path, filter_name: str = "rcfdeep_partnership_ztf",
                     passes: Optional[Callable[[int, dict], bool]] = None) -> dict:
    """Write BOOM-shaped documents and filter-result messages for the real ZTF alerts.

    Every fourth alert fails the filter (`passes(i, alert_doc)` decides instead
    when given); one passing alert has no aux document; three messages are
    malformed (truncated, not Avro, no candid).
    """
    fink = _read_avro(sorted((data_dir / "fink").glob("fink_ztf_*.avro")))
    coordinates = _galactic([a["candidate"]["ra"] for a in fink], [a["candidate"]["dec"] for a in fink])

    alerts, aux, cutouts = [], {}, []
    for a, coords in zip(fink, coordinates):
        alerts.append({"_id": int(a["candid"]), "objectId": a["objectId"], "candidate": _boomify(a["candidate"]),
                       "coordinates": coords})
        cutouts.append({"_id": int(a["candid"])} | {
            k: a[k]["stampData"] for k in ("cutoutScience", "cutoutTemplate", "cutoutDifference") if a.get(k)})
    by_candid = {int(a["candid"]): a for a in fink}
    for doc in _alert_time_order(alerts, lambda d: d["candidate"]["jd"]):
        a = by_candid[doc["_id"]]
        history = [_boomify(p) for p in (a.get("prv_candidates") or [])]
        stored = aux.setdefault(a["objectId"], {
            "_id": a["objectId"], "prv_candidates": [], "prv_nondetections": [],
            "fp_hists": [], "cross_matches": {"AllWISE": []}, "coordinates": doc["coordinates"],
        })
        detections = boom_packet_series([p for p in history if p.get("magpsf") is not None], doc["candidate"])
        nondetections = boom_sanitized(p for p in history if p.get("magpsf") is None)
        stored["prv_candidates"] = boom_merged(stored["prv_candidates"], detections)
        stored["prv_nondetections"] = boom_merged(stored["prv_nondetections"], nondetections)

    _add_boom_documents(data_dir, "ztf_alert.json", "ztf_alert_aux.json", alerts, aux)
    messages = _messages("ZTF", alerts, aux, cutouts, _ztf_photometry, passes or (lambda i, doc: i % 4 != 3),
                         filter_name)
    # A passing alert whose object has no aux document: dead-lettered, not guessed.
    orphan = dict(alerts[0], _id=int(alerts[0]["_id"]) + 1, objectId="ZTF26orphanxx")
    alerts.append(orphan)
    messages.insert(5, encode_result(_result_record("ZTF", orphan, _ztf_photometry(orphan, None), {}, filter_name)))
    _insert_malformed(messages, (2, 9, 14), "ZTF26nocandid")
    return _write_sample(out_dir, "ZTF", alerts, aux.values(), cutouts, messages)


# Rubin DiaSources as BOOM stores them (boom-astro/boom src/alert/lsst.rs): the
# DiaSource's own fields plus objectId, jd (UTC) and magnitudes from psfFlux (nJy).
LSST_ZERO_POINT_NJY = 31.4
TAI_MINUS_UTC_DAYS = 37.0 / 86400
BOOM_FORCED_SNR = 3.0  # BOOM gives a forced point magnitudes only above this S/N


def _lsst_jd(mjd_tai: float) -> float:
    return mjd_tai + 2400000.5 - TAI_MINUS_UTC_DAYS


def _lsst_magnitudes(flux, err) -> dict:
    import math

    if flux is None or not err or not math.isfinite(flux) or not math.isfinite(err):
        return {}
    out = {"diffmaglim": -2.5 * math.log10(5 * err) + LSST_ZERO_POINT_NJY, "snr_psf": abs(flux) / err,
           "isdiffpos": flux > 0}
    if flux:
        out |= {"magpsf": -2.5 * math.log10(abs(flux)) + LSST_ZERO_POINT_NJY, "sigmapsf": 1.0857362 * err / abs(flux)}
    return out


def _lsst_source(source: dict, object_id: str) -> dict:
    """A DiaSource as a BOOM `prv_candidates` item (and the core of a `candidate`)."""
    return {**source, "objectId": object_id, "jd": _lsst_jd(source["midpointMjdTai"]),
            **_lsst_magnitudes(source.get("psfFlux"), source.get("psfFluxErr"))}


def _lsst_forced(source: dict) -> dict:
    """A DiaForcedSource as a BOOM `fp_hists` item."""
    mags = _lsst_magnitudes(source.get("psfFlux"), source.get("psfFluxErr"))
    if mags.get("snr_psf", 0.0) <= BOOM_FORCED_SNR:
        mags = {k: v for k, v in mags.items() if k == "diffmaglim"}
    return {**source, "jd": _lsst_jd(source["midpointMjdTai"]), **mags}


def build_lsst_sample(data_dir: Path, out_dir: Path, filter_name: str = "superphot_lsst",
                      passes: Optional[Callable[[int, dict], bool]] = None) -> dict:
    """Write BOOM-shaped documents and filter-result messages for the real Rubin alerts.

    The 7 Fink alerts (`data/fink/fink_lsst_sample.avro`: `diaSource`,
    `prvDiaSources`, `prvDiaForcedSources`, `diaObject`, cutouts) become
    `LSST_alerts` (`_id` = diaSourceId, `objectId` = diaObjectId as a string,
    or `sso{ssObjectId}` for Solar System sources), `LSST_alerts_aux`
    (`prv_candidates` with the current DiaSource, `fp_hists`) and
    `LSST_alerts_cutouts` documents; the real BOOM documents of `data/boom/`
    are added as they are. Solar System alerts and every fourth alert from the
    second fail the filter (`passes(i, alert_doc)` decides instead when given);
    three messages are malformed.
    """
    fink = _read_avro([data_dir / "fink" / "fink_lsst_sample.avro"])
    coordinates = _galactic([a["diaSource"]["ra"] for a in fink], [a["diaSource"]["dec"] for a in fink])

    alerts, aux, cutouts = [], {}, []
    for a, coords in zip(fink, coordinates):
        source, obj = a["diaSource"], a.get("diaObject") or {}
        ss_id = str(source["ssObjectId"]) if source.get("ssObjectId") else None
        object_id = str(source["diaObjectId"]) if source.get("diaObjectId") else f"sso{ss_id}"
        candidate = _lsst_source(source, object_id) | {
            "ndethist": obj.get("nDiaSources"),
            "jdstarthist": _lsst_jd(obj["firstDiaSourceMjdTai"]) if obj.get("firstDiaSourceMjdTai") else None}
        alerts.append({"_id": int(source["diaSourceId"]), "objectId": object_id, "ssObjectId": ss_id,
                       "candidate": candidate, "coordinates": coords})
        cutouts.append({"_id": int(source["diaSourceId"])} | {
            k: a[k] for k in ("cutoutScience", "cutoutTemplate", "cutoutDifference") if a.get(k)})
    by_candid = {int(a["diaSource"]["diaSourceId"]): a for a in fink}
    for doc in _alert_time_order(alerts, lambda d: d["candidate"]["jd"]):
        a, object_id = by_candid[doc["_id"]], doc["objectId"]
        stored = aux.setdefault(object_id, {
            "_id": object_id, "prv_candidates": [], "fp_hists": [], "is_sso": doc["ssObjectId"] is not None,
            "cross_matches": {}, "aliases": {"ZTF": [], "DECAM": []}, "coordinates": doc["coordinates"],
        })
        current = _lsst_source(a["diaSource"], object_id)
        sources = boom_packet_series((_lsst_source(p, object_id) for p in a.get("prvDiaSources") or []), current)
        forced = boom_sanitized(map(_lsst_forced, a.get("prvDiaForcedSources") or []))
        stored["prv_candidates"] = boom_merged(stored["prv_candidates"], sources)
        stored["fp_hists"] = boom_merged(stored["fp_hists"], forced)

    _add_boom_documents(data_dir, "lsst_alert.json", "lsst_aux.json", alerts, aux)
    messages = _messages("LSST", alerts, aux, cutouts, _lsst_photometry,
                         passes or (lambda i, doc: doc.get("ssObjectId") is None and i % 4 != 1), filter_name)
    _insert_malformed(messages, (2, 6, 9), "LSSTnocandid")
    return _write_sample(out_dir, "LSST", alerts, aux.values(), cutouts, messages)


def main(argv: Optional[list[str]] = None) -> int:
    from operators.runtime.config import DATA_DIR

    parser = argparse.ArgumentParser(
        prog="python -m operators.samples.bundle",
        description="Rebuild the bundled samples (BOOM documents and filter-result messages) from the real "
                    "alerts of data/fink/ and the BOOM documents of data/boom/. Deterministic: rebuilding an "
                    "unchanged sample writes the same bytes.")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR,
                        help="where fink/ and boom/ are read (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where ztf_sample/ and lsst_sample/ are written (default: the data directory)")
    parser.add_argument("--survey", choices=("ztf", "lsst", "all"), default="all", help="which sample (default: all)")
    args = parser.parse_args(argv)
    out = args.out_dir or args.data_dir
    if args.survey in ("ztf", "all"):
        print("ZTF", build_ztf_sample(args.data_dir, out / "ztf_sample"))
    if args.survey in ("lsst", "all"):
        print("LSST", build_lsst_sample(args.data_dir, out / "lsst_sample"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
