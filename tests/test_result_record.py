"""The results record (data/schemas/oracle_result.avsc): literal expectations, not our own encoder's."""

import io
import json

import fastavro

from operators.oracle.result_record import SCHEMA_PATH, decode, encode, to_record
from operators.oracle.results import Result


def _result(survey="ZTF", jd=2461000.75, stamp=""):
    return Result(candid=3141592653589, objectId="ZTF26aaaaaaa", jd=jd, survey=survey, ra=150.25, dec=-12.5,
                  probabilities={"Alert": 1.0, "Transient": 0.75, "Variable": 0.25, "SN-Ia": 0.5, "SN-II": 0.25},
                  predicted="SN-Ia", model="ORACLE-btsv2:best_model_f1_ztf.pth@f1e3353cb6c0",
                  processed_at="2026-12-07T21:00:00.000+00:00", stamp=stamp)


def test_ztf_record_fields():
    rec = to_record(_result(), "BTSv2")
    assert rec == {
        "schemavsn": "1.0", "candid": 3141592653589, "objectId": "ZTF26aaaaaaa", "survey": "ZTF",
        "jd": 2461000.75, "mjd": None, "ra": 150.25, "dec": -12.5,
        "model": "ORACLE-btsv2:best_model_f1_ztf.pth@f1e3353cb6c0", "taxonomy": "BTSv2",
        "probabilities": {"Alert": 1.0, "Transient": 0.75, "Variable": 0.25, "SN-Ia": 0.5, "SN-II": 0.25},
        "predicted": "SN-Ia", "predicted_probability": 0.5, "stamp": None,
        "processed_at": "2026-12-07T21:00:00.000+00:00",
    }


def test_lsst_record_carries_mjd():
    from astropy.time import Time

    rec = to_record(_result("LSST", jd=2461000.75, stamp="template"), "ELAsTiCC")
    # Rubin's scale: MJD in TAI (midpointMjdTai); Result.jd is BOOM's UTC JD
    assert rec["jd"] is None and rec["stamp"] == "template"
    assert abs(rec["mjd"] - Time(2461000.75, format="jd", scale="utc").tai.mjd) < 1e-9
    assert abs(rec["mjd"] - (61000.25 + 37 / 86400)) < 1e-9
    # before the 2017 leap second TAI - UTC was 36 s
    old = to_record(_result("LSST", jd=2457700.5), "ELAsTiCC")["mjd"]
    assert abs(old - Time(2457700.5, format="jd", scale="utc").tai.mjd) < 1e-9


def test_container_carries_its_writer_schema():
    data = encode(to_record(_result(), "BTSv2"))
    reader = fastavro.reader(io.BytesIO(data))  # a consumer with no schema of its own
    assert reader.writer_schema["name"] == "alertflow.OracleResult"
    (rec,) = list(reader)
    assert rec["candid"] == 3141592653589 and rec["probabilities"]["SN-Ia"] == 0.5
    assert decode(data) == [rec]
    # equal records give equal bytes: a replayed result is a byte-identical duplicate
    assert encode(to_record(_result(), "BTSv2")) == data


def test_schema_file_names_every_field_with_a_doc():
    spec = json.loads(SCHEMA_PATH.read_text())
    names = [f["name"] for f in spec["fields"]]
    assert names[:3] == ["schemavsn", "candid", "objectId"]
    assert {"jd", "mjd", "ra", "dec", "survey", "model", "taxonomy", "probabilities", "predicted",
            "predicted_probability", "stamp", "processed_at"} <= set(names)
    assert all(f.get("doc") for f in spec["fields"])


def test_encode_gives_fastavros_own_container_bytes():
    """The hand-assembled container (cached header + one block) is byte for byte what
    fastavro's writer makes of the same record with the same sync marker, for both surveys."""
    from operators.oracle.result_record import SYNC_MARKER, schema

    for rec in (to_record(_result(), "BTSv2"), to_record(_result("LSST", stamp="template"), "ELAsTiCC")):
        buf = io.BytesIO()
        fastavro.writer(buf, schema(), [rec], sync_marker=SYNC_MARKER)
        assert encode(rec) == buf.getvalue()
