"""Fink VRA features and flow, on the real Fink alerts of data/fink/."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import fastavro
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from bytewax.testing import TestingSource, cluster_main, run_main

from dataflows.fink_vra import build_flow
from operators.io.deadletter import Origin, read_dead_letters
from operators.vra.steps import (
    AlertItem,
    FinkVraConfig,
    Message,
    decode_alerts,
    decode_message,
    passes_vra_cut,
    read_features,
    single_alert_container,
)
from operators.vra.sherlock import SherlockClient, SherlockError, parse_sherlock
from operators.vra.dust import SFDMaps, galactic, open_sfd
from operators.vra.features import (
    FEATURE_COLUMNS,
    LC_FEATURES,
    META_COLUMNS,
    alert_features,
    carried_band_features,
    computed_band_features,
    features_table,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "fink"
SAMPLE = DATA / "fink_ztf_sample.avro"
OLD = sorted(DATA.glob("fink_ztf_2019_alert_*.avro"))


def read_avro(path):
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        return reader.writer_schema, list(reader)


@pytest.fixture(scope="module")
def sample():
    return read_avro(SAMPLE)


@pytest.fixture(scope="module")
def alerts(sample):
    return sample[1]


@pytest.fixture(scope="module")
def old_alerts():
    return [a for p in OLD for a in read_avro(p)[1]]


def messages_of(schema, records, topic="test"):
    return [
        Message(single_alert_container(schema, r), origin=Origin(topic=topic, partition=0, offset=i))
        for i, r in enumerate(records)
    ]


def nan_equal(a, b, atol=1e-6):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= atol


# ------------------------------------------------------------------ features


def test_columns_exactly_as_the_model_expects():
    assert FEATURE_COLUMNS == [
        "ra", "dec", "drb", "ndets", "nnondets", "dets_median", "dets_std", "sep_arcsec",
        "amplitude", "linear_fit_reduced_chi2", "linear_fit_slope", "linear_fit_slope_sigma",
        "median", "median_absolute_deviation", "amplituder_", "linear_fit_reduced_chi2r_",
        "linear_fit_sloper_", "linear_fit_slope_sigmar_", "medianr_", "median_absolute_deviationr_", "ebv",
    ]
    assert META_COLUMNS == ["candid", "objectId"]


def test_candidate_and_detection_columns_match_a_plain_computation(alerts, old_alerts):
    for alert in alerts + old_alerts:
        row = alert_features(alert)
        cand = alert["candidate"]
        assert row["candid"] == alert["candid"] and row["objectId"] == alert["objectId"]
        assert (row["ra"], row["dec"], row["drb"]) == (cand["ra"], cand["dec"], cand["drb"])
        points = (alert["prv_candidates"] or []) + [cand]
        mags = [p["magpsf"] for p in points if p["magpsf"] is not None]
        assert row["ndets"] == len(mags)
        assert row["nnondets"] == len(points) - len(mags)
        assert row["dets_median"] == pytest.approx(statistics.median(mags), abs=1e-9)
        assert row["dets_std"] == pytest.approx(statistics.pstdev(mags), abs=1e-9)
        assert math.isnan(row["sep_arcsec"]) and math.isnan(row["ebv"])


def test_r_columns_come_from_the_r_band(alerts):
    table = features_table(alerts)
    g, r = table[LC_FEATURES].to_numpy(), table[[c + "r_" for c in LC_FEATURES]].to_numpy()
    differ = 0
    for alert, g_row, r_row in zip(alerts, g, r):
        carried_r = carried_band_features(alert, 2)
        assert all(nan_equal(v, carried_r[n]) for v, n in zip(r_row, LC_FEATURES))
        fids = {p["fid"] for p in (alert["prv_candidates"] or []) + [alert["candidate"]] if p["magpsf"] is not None}
        if fids == {1, 2}:
            differ += not np.allclose(g_row, r_row, equal_nan=True)
    assert differ >= 10


def test_dc_magnitude_for_a_source_on_a_reference_star(alerts):
    # ZTF26aamcbly: one r detection 0.3 px from a 14.59 mag reference star, negative difference.
    alert = next(a for a in alerts if a["objectId"] == "ZTF26aamcbly")
    cand = alert["candidate"]
    assert cand["fid"] == 2 and cand["isdiffpos"] == "f" and cand["distnr"] < 1.5
    expected = -2.5 * math.log10(10 ** (-0.4 * cand["magnr"]) - 10 ** (-0.4 * cand["magpsf"]))
    assert alert_features(alert)["medianr_"] == pytest.approx(expected, abs=1e-9)
    assert computed_band_features(alert, 2)["median"] == pytest.approx(expected, abs=1e-9)


def test_computed_features_agree_with_fink_carried_ones(alerts):
    compared = 0
    for alert in alerts:
        for fid in (1, 2):
            carried, computed = carried_band_features(alert, fid), computed_band_features(alert, fid)
            for name in LC_FEATURES:
                # Relative: a slope of tens of mag/day off by 2.5e-4 would pass an absolute 1e-6.
                assert nan_equal(carried[name], computed[name], atol=1e-9 * max(1.0, abs(carried[name]))), \
                    (alert["objectId"], fid, name, carried[name], computed[name])
                compared += not math.isnan(carried[name])
    assert compared > 200


# Three r detections 3 minutes apart on a 17.25 mag reference star (every point a DC
# magnitude). Values a float32 holds exactly, as an Avro `float` gives them.
T0 = 2460000.5
MINUTES_APART = [(0.0, 19.0), (3.0, 18.953125), (6.0, 18.90625)]
MAGNR, SIGMAGNR, SIGMAPSF = 17.25, 0.015625, 0.046875


def _minutes_apart_alert(number=float) -> dict:
    points = [{"jd": T0 + minutes / 1440, "fid": 2, "magpsf": number(mag), "sigmapsf": number(SIGMAPSF),
               "distnr": number(0.375), "magnr": number(MAGNR), "sigmagnr": number(SIGMAGNR), "isdiffpos": "t"}
              for minutes, mag in MINUTES_APART]
    return {"candid": 7, "objectId": "ZTF00minutes", "candidate": {**points[-1], "ra": 1.0, "dec": 2.0},
            "prv_candidates": points[:-1]}


def test_r_slope_of_detections_minutes_apart_computed_by_hand():
    """DC magnitudes as the ZTF Explanatory Supplement (fink-utils `vect_dc_mag`) and
    light-curve's weighted straight-line fit (light-curve-feature `NoisyStraightLineFitter`,
    Press et al. 15.2, on raw jd as Fink calls it), each step in Python floats (float64)."""
    t, m, err2 = [], [], []
    f_ref = 10 ** (-0.4 * MAGNR)
    for minutes, mag in MINUTES_APART:
        f_diff = 10 ** (-0.4 * mag)
        flux = f_ref + f_diff
        t.append(T0 + minutes / 1440)
        m.append(-2.5 * math.log10(flux))
        err2.append((math.hypot(SIGMAPSF / 1.0857 * f_diff, SIGMAGNR / 1.0857 * f_ref) / flux * 1.0857) ** 2)
    ss = sx = 0.0
    for x, e2 in zip(t, err2):
        ss, sx = ss + 1.0 / e2, sx + 1.0 / e2 * x
    st2 = b_st2 = 0.0
    for x, y, e2 in zip(t, m, err2):
        g = (x - sx / ss) / e2
        st2, b_st2 = st2 + g * (x - sx / ss), b_st2 + g * y
    slope = b_st2 / st2
    # Sane: within 1e-3 of the least-squares slope on jd − T0 (-3.88 mag/day: the DC magnitude
    # brightens 0.016 mag in 6 minutes). Sums on raw jd cost light-curve -- and Fink -- 4e-4 here,
    # which is why a float32 rounding of these magnitudes shows in the slope.
    w = [1.0 / e2 for e2 in err2]
    tm = sum(wi * (x - T0) for wi, x in zip(w, t)) / sum(w)
    mm = sum(wi * y for wi, y in zip(w, m)) / sum(w)
    centred = (sum(wi * (x - T0 - tm) * (y - mm) for wi, x, y in zip(w, t, m))
               / sum(wi * (x - T0 - tm) ** 2 for wi, x in zip(w, t)))
    assert centred == pytest.approx(-3.8797, abs=1e-4) and slope == pytest.approx(centred, rel=1e-3)

    alert = _minutes_apart_alert()
    assert computed_band_features(alert, 2)["linear_fit_slope"] == pytest.approx(slope, rel=1e-10)
    assert alert_features(alert)["linear_fit_sloper_"] == pytest.approx(slope, rel=1e-10)
    # numpy float32 values (what Arrow and pandas hand over) give the same float64 result
    assert computed_band_features(_minutes_apart_alert(np.float32), 2)["linear_fit_slope"] == pytest.approx(
        slope, rel=1e-10)


def band_features_by_hand(alert, fid):
    """Fink's recipe written out point by point (every 2019 alert sits on a
    reference star, so every detection becomes a DC magnitude)."""
    t, m, s = [], [], []
    points = (alert["prv_candidates"] or []) + [alert["candidate"]]
    for p in sorted((p for p in points if p["magpsf"] is not None), key=lambda p: p["jd"]):
        assert p["distnr"] <= 1.5
        if p["fid"] != fid:
            continue
        f_diff, f_ref = 10 ** (-0.4 * p["magpsf"]), 10 ** (-0.4 * p["magnr"])
        flux = f_ref + f_diff if p["isdiffpos"] == "t" else f_ref - f_diff
        sig = math.hypot(p["sigmapsf"] / 1.0857 * f_diff, p["sigmagnr"] / 1.0857 * f_ref)
        t.append(p["jd"]), m.append(-2.5 * math.log10(flux)), s.append(sig / flux * 1.0857)
    med = statistics.median(m)
    out = {"median": med, "amplitude": (max(m) - min(m)) / 2,
           "median_absolute_deviation": statistics.median(abs(x - med) for x in m)}
    if len(m) >= 3:  # weighted least squares, weights 1/sigma^2
        t, m, w = np.array(t), np.array(m), 1 / np.array(s) ** 2
        tw, mw = (w * t).sum() / w.sum(), (w * m).sum() / w.sum()
        stt = (w * (t - tw) ** 2).sum()
        slope = (w * (t - tw) * (m - mw)).sum() / stt
        chi2 = (w * (m - mw - slope * (t - tw)) ** 2).sum() / (len(m) - 2)
        out.update(linear_fit_slope=slope, linear_fit_slope_sigma=math.sqrt(1 / stt), linear_fit_reduced_chi2=chi2)
    return out


def test_old_alerts_without_fink_features_match_a_hand_computation(old_alerts):
    table = features_table(old_alerts)
    assert len(table) == 4
    checked = 0
    for alert in old_alerts:
        assert alert.get("lc_features_g") is None
        for fid, suffix in ((1, ""), (2, "r_")):
            for name, value in band_features_by_hand(alert, fid).items():
                assert table.loc[alert["candid"], name + suffix] == pytest.approx(value, rel=1e-8, abs=1e-9)
                checked += 1
    assert checked >= 40


def test_missing_values_stay_nan(alerts):
    alert = dict(alerts[0], lc_features_g=None, lc_features_r=None)
    alert["candidate"] = dict(alert["candidate"], drb=None)
    alert["prv_candidates"] = []
    row = alert_features(alert)
    assert math.isnan(row["drb"])
    # A single point: the fits are undefined, not zero.
    assert math.isnan(row["linear_fit_slope"]) and math.isnan(row["linear_fit_sloper_"])


# ------------------------------------------------------------------ decoding and filter


def test_decodes_container_and_fink_schemaless_with_schema_in_key(sample):
    schema, records = sample
    rec = records[3]
    assert decode_alerts(single_alert_container(schema, rec))[0]["candid"] == rec["candid"]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), rec)
    key = json.dumps(schema).encode()
    assert decode_alerts(buf.getvalue(), key=key)[0]["candid"] == rec["candid"]
    assert decode_alerts(buf.getvalue(), schema=fastavro.parse_schema(schema))[0]["objectId"] == rec["objectId"]
    with pytest.raises(ValueError):
        decode_alerts(buf.getvalue())  # no schema anywhere


def test_malformed_messages_become_dead_letters(sample):
    schema, records = sample
    good = single_alert_container(schema, records[0])
    origin = Origin(topic="t", partition=1, offset=7)
    for payload in (b"", b"not avro at all", good[: len(good) // 2]):
        (letter,) = decode_message(None, Message(payload, origin=origin))
        assert letter.stage == "decode" and letter.reason.startswith("undecodable")
        assert (letter.topic, letter.partition, letter.offset) == ("t", 1, 7)
        if payload:
            assert base64.b64decode(letter.payload_b64) == payload
    # Valid Avro, but not an alert: no candidate.
    no_candidate = {"type": "record", "name": "a", "fields": [
        {"name": "candid", "type": "long"}, {"name": "objectId", "type": "string"}]}
    (letter,) = decode_message(None, Message(
        single_alert_container(no_candidate, {"candid": 1, "objectId": "ZTF0"}), origin=origin))
    assert letter.reason == "invalid_alert: no candidate" and letter.candid == 1


def test_stream_filter_is_the_topic_definition(alerts, old_alerts):
    items = [AlertItem(a, Origin(), b"") for a in alerts + old_alerts]
    kept = {i.alert["candid"] for i in items if passes_vra_cut(i)}
    expected = {
        a["candid"] for a in alerts + old_alerts
        if a.get("cdsxmatch") == "Unknown" and a.get("roid") != 3
        and a["candidate"]["magpsf"] > 19.5 and a["candidate"]["drb"] > 0.5
    }
    assert kept == expected and 0 < len(kept) < len(items)
    faint = next(a for a in alerts if a["candid"] in kept)
    assert not passes_vra_cut(AlertItem(dict(faint, roid=3), Origin(), b""))
    assert not passes_vra_cut(AlertItem(dict(faint, cdsxmatch="RRLyr"), Origin(), b""))


def test_config_from_env():
    cfg = FinkVraConfig.from_env({})
    assert not cfg.uses_kafka and not cfg.stream_filter and cfg.topic == "fink_vra_ztf"
    cfg = FinkVraConfig.from_env({
        "FINK_VRA_KAFKA_BROKERS": "a:9092, b:9092", "FINK_VRA_KAFKA_USERNAME": "u",
        "FINK_VRA_KAFKA_PASSWORD": "secret-pw", "LASAIR_TOKEN": "secret-token",
    })
    assert cfg.kafka_brokers == ("a:9092", "b:9092") and cfg.stream_filter
    assert "secret" not in repr(cfg)
    assert not FinkVraConfig.from_env({"FINK_VRA_KAFKA_BROKERS": "a:1", "FINK_VRA_STREAM_FILTER": "off"}).stream_filter


# ------------------------------------------------------------------ Sherlock (loopback Lasair)


TOKEN = "test-token-abc123"


class FakeLasair:
    """Lasair's sherlock/position contract on 127.0.0.1: POST form ra, dec, lite; Token auth."""

    def __init__(self, answers, fail_first=0):
        self.answers = answers  # {(round(ra, 5), round(dec, 5)): answer}
        self.fail_first = fail_first
        self.calls = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                fake.calls.append((self.path, form))
                if fake.fail_first > 0:
                    fake.fail_first -= 1
                    return self._send(503, {"error": "busy"}, {"Retry-After": "0"})
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self._send(401, {"detail": "Invalid token."})
                if self.path != "/api/sherlock/position/":
                    return self._send(404, {"detail": "Not found."})
                pos = (round(float(form["ra"][0]), 5), round(float(form["dec"][0]), 5))
                self._send(200, fake.answers.get(pos, {"classifications": {"transient_00000": ["ORPHAN", ""]}, "crossmatches": []}))

            def _send(self, code, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in dict(headers).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def sherlock_answer(cls, *seps):
    return {
        "classifications": {"transient_00000": [cls, f"The transient is synonymous with a {cls}"]},
        "crossmatches": [{"catalogue_table_name": "GSC/PS1", "separationArcsec": s} for s in seps],
    }


def pos(alert):
    return round(alert["candidate"]["ra"], 5), round(alert["candidate"]["dec"], 5)


def test_parse_sherlock_first_crossmatch_and_orphans():
    m = parse_sherlock(sherlock_answer("SN", 1.23, 0.4))
    assert (m.classification, m.sep_arcsec, m.dropped) == ("SN", 1.23, False)
    m = parse_sherlock(sherlock_answer("ORPHAN"))
    assert m.classification == "ORPHAN" and math.isnan(m.sep_arcsec)
    assert parse_sherlock(sherlock_answer("AGN", 0.2)).dropped and parse_sherlock(sherlock_answer("VS", 0.1)).dropped
    with pytest.raises(SherlockError):
        parse_sherlock({"error": "Bad request"})


def test_sherlock_client_follows_the_api_retries_and_hides_the_token(alerts, caplog):
    caplog.set_level(logging.DEBUG)
    a = alerts[0]
    with FakeLasair({pos(a): sherlock_answer("NT", 0.7)}, fail_first=2) as lasair:
        client = SherlockClient(TOKEN, lasair.url, timeout=5, retries=3, backoff=0)
        match = client.position(a["candidate"]["ra"], a["candidate"]["dec"])
        assert (match.classification, match.sep_arcsec) == ("NT", 0.7)
        assert len(lasair.calls) == 3  # two 503s retried
        path, form = lasair.calls[-1]
        assert path == "/api/sherlock/position/" and form["lite"] == ["False"]
        with pytest.raises(SherlockError) as err:
            SherlockClient("wrong-token", lasair.url, retries=0).position(1.0, 2.0)
        assert "401" in str(err.value)
        assert TOKEN not in repr(client)
    assert TOKEN not in caplog.text


# ------------------------------------------------------------------ SFD E(B-V)


def write_toy_sfd(directory: Path, n=64):
    """Maps in SFD's format (Lambert ZEA per Galactic pole), value = 0.01*x + 0.001*y (+1 in the south)."""
    directory.mkdir(parents=True, exist_ok=True)
    c = math.degrees(math.sqrt(2)) / (n / 2)
    yy, xx = np.mgrid[0:n, 0:n]
    for pole, sign in (("ngp", 1), ("sgp", -1)):
        hdr = fits.Header()
        hdr.update({
            "CTYPE1": "GLON-ZEA", "CTYPE2": "GLAT-ZEA", "CRPIX1": n / 2 + 0.5, "CRPIX2": n / 2 + 0.5,
            "CRVAL1": 90.0 * sign, "CRVAL2": 90.0 * sign, "CD1_1": -c * sign, "CD1_2": 0.0,
            "CD2_1": 0.0, "CD2_2": c * sign, "LONPOLE": 180.0, "LAM_NSGP": sign, "LAM_SCAL": n // 2,
        })
        data = (0.01 * xx + 0.001 * yy + (sign < 0)).astype("float32")
        fits.PrimaryHDU(data, hdr).writeto(directory / f"SFD_dust_4096_{pole}.fits", overwrite=True)
    return n


def sfd_by_formula(l_deg, b_deg, n):
    """SFD's own Lambert pixel formula (lambert_lb2pix) and the toy map's value there."""
    sign = 1 if b_deg >= 0 else -1
    lr, br = math.radians(l_deg), math.radians(b_deg)
    t = math.sqrt(1 - sign * math.sin(br))
    x = (n / 2 - 0.5) + (n / 2) * t * math.cos(lr)
    y = (n / 2 - 0.5) - sign * (n / 2) * t * math.sin(lr)
    return 0.01 * x + 0.001 * y + (sign < 0)


def test_sfd_reader_matches_sfd_projection(tmp_path, alerts):
    n = write_toy_sfd(tmp_path / "sfd")
    maps = SFDMaps(tmp_path / "sfd")
    for a in alerts:
        ra, dec = a["candidate"]["ra"], a["candidate"]["dec"]
        (l_deg,), (b_deg,) = galactic(ra, dec)
        # The toy map is linear in pixels, so bilinear interpolation is exact.
        assert maps(ra, dec) == pytest.approx(sfd_by_formula(l_deg, b_deg, n), abs=1e-5)


def test_no_sfd_maps_means_nan_and_a_warning(tmp_path, caplog):
    assert open_sfd(None) is None
    assert open_sfd(tmp_path / "nowhere") is None
    assert "ebv will be NaN" in caplog.text


# ------------------------------------------------------------------ the flow


def flow_env(tmp_path, **extra):
    return FinkVraConfig.from_env({
        "FINK_VRA_OUT_DIR": str(tmp_path / "out"),
        "FINK_VRA_DEADLETTERS": str(tmp_path / "dl.jsonl"),
        **extra,
    })


def test_flow_writes_features_single_and_multi_worker_alike(tmp_path, alerts, old_alerts):
    one, two = tmp_path / "one", tmp_path / "two"
    run_main(build_flow(flow_env(one)))
    cluster_main(build_flow(flow_env(two)), [], 0, worker_count_per_proc=2)
    a, b = read_features(one / "out"), read_features(two / "out")
    assert len(a) == len(alerts) + len(old_alerts) and a.index.is_unique
    assert list(a.columns) == ["objectId"] + FEATURE_COLUMNS
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, features_table(alerts + old_alerts).sort_index())


def test_parquet_round_trip_and_dedup_on_replay(tmp_path, sample):
    schema, records = sample
    msgs = messages_of(schema, records[:6])
    cfg = flow_env(tmp_path)
    run_main(build_flow(cfg, TestingSource(msgs + msgs[:2])))  # duplicates within a run
    first = pd.read_parquet(tmp_path / "out")
    run_main(build_flow(cfg, TestingSource(messages_of(schema, records[:8]))))  # replay plus 2 new
    again = pd.read_parquet(tmp_path / "out").sort_index()
    assert first.index.name == "candid" and len(first) == 6
    assert len(again) == 8 and again.index.is_unique
    pd.testing.assert_frame_equal(again.loc[first.sort_index().index], first.sort_index())
    pd.testing.assert_frame_equal(again, features_table(records[:8]).sort_index())


def test_malformed_bytes_go_to_dead_letters_without_stopping(tmp_path, sample):
    schema, records = sample
    msgs = messages_of(schema, records[:4])
    bad = Message(b"\x00garbage", origin=Origin(topic="test", partition=0, offset=99))
    run_main(build_flow(flow_env(tmp_path), TestingSource([msgs[0], bad, *msgs[1:]])))
    assert len(pd.read_parquet(tmp_path / "out")) == 4
    (letter,) = read_dead_letters(tmp_path / "dl.jsonl")
    assert letter["stage"] == "decode" and letter["offset"] == 99
    assert base64.b64decode(letter["payload_b64"]) == b"\x00garbage"


@pytest.mark.parametrize("workers", [1, 2])
def test_flow_with_sherlock_drops_agn_vs_and_caches_per_object(tmp_path, sample, caplog, workers):
    caplog.set_level(logging.INFO)
    schema, records = sample
    recs = records[:6]
    answers = {
        pos(recs[0]): sherlock_answer("SN", 1.23, 0.5),
        pos(recs[1]): sherlock_answer("AGN", 0.1),
        pos(recs[2]): sherlock_answer("VS", 0.05),
        pos(recs[3]): sherlock_answer("NT", 0.3),
    }
    # A second alert of recs[0]'s object: Sherlock must not be asked again.
    repeat = dict(recs[0], candid=recs[0]["candid"] + 1)
    with FakeLasair(answers) as lasair:
        cfg = flow_env(tmp_path, LASAIR_TOKEN=TOKEN, LASAIR_API_URL=lasair.url)
        flow = build_flow(cfg, TestingSource(messages_of(schema, recs + [repeat])))
        run_main(flow) if workers == 1 else cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert len(lasair.calls) == len(recs)
    table = read_features(tmp_path / "out")
    assert set(table["objectId"]) == {r["objectId"] for r in recs} - {recs[1]["objectId"], recs[2]["objectId"]}
    assert (table.loc[[recs[0]["candid"], repeat["candid"]], "sep_arcsec"] == 1.23).all()
    assert table.loc[recs[3]["candid"], "sep_arcsec"] == 0.3
    assert math.isnan(table.loc[recs[4]["candid"], "sep_arcsec"])  # orphan
    assert "dropped by Sherlock: AGN" in caplog.text and "dropped by Sherlock: VS" in caplog.text
    assert TOKEN not in caplog.text


def test_flow_sherlock_outage_dead_letters_and_ebv_from_maps(tmp_path, sample):
    schema, records = sample
    write_toy_sfd(tmp_path / "sfd")
    with FakeLasair({}) as lasair:
        cfg = flow_env(tmp_path, LASAIR_TOKEN="wrong", LASAIR_API_URL=lasair.url,
                       FINK_VRA_SHERLOCK_RETRIES="0", FINK_VRA_SFD_DIR=str(tmp_path / "sfd"))
        run_main(build_flow(cfg, TestingSource(messages_of(schema, records[:2]))))
    letters = read_dead_letters(tmp_path / "dl.jsonl")
    assert [d["reason"] for d in letters] == ["sherlock_unavailable: HTTP 401"] * 2
    assert "wrong" not in json.dumps(letters).replace("wrong_", "")
    cfg = flow_env(tmp_path / "b", FINK_VRA_SFD_DIR=str(tmp_path / "sfd"))
    run_main(build_flow(cfg, TestingSource(messages_of(schema, records[:3]))))
    ebv = read_features(tmp_path / "b" / "out")["ebv"]
    assert ebv.notna().all() and ((ebv > 0) & (ebv < 2)).all()


def test_kafka_messages_and_errors_map_to_items(sample):
    from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
    from confluent_kafka import KafkaError as ConfluentError

    from operators.vra.steps import kafka_error_letter, kafka_message

    schema, records = sample
    payload = single_alert_container(schema, records[0])
    msg = KafkaSourceMessage(key=None, value=payload, topic="fink_vra_ztf", partition=2, offset=41,
                             timestamp=(1, 1774180000000))
    item = kafka_message(msg)
    assert item.origin == Origin("fink_vra_ztf", 2, 41, 1774180000000)
    assert decode_message(None, item)[0].alert["candid"] == records[0]["candid"]
    letter = kafka_error_letter(KafkaError(ConfluentError(ConfluentError._MSG_TIMED_OUT), msg))
    assert letter.stage == "kafka" and letter.offset == 41 and letter.reason.startswith("kafka_error")


def test_kafka_flow_builds_without_connecting(tmp_path):
    cfg = flow_env(tmp_path, FINK_VRA_KAFKA_BROKERS="127.0.0.1:1")
    flow = build_flow(cfg)
    assert cfg.stream_filter and flow.flow_id == "fink_vra"


@pytest.mark.services
def test_kafka_topic_end_to_end(tmp_path, sample, kafka, create_topic):
    """Fink's format (schemaless Avro, writer schema in the key), a container
    payload and garbage, on a 2-partition topic, read by bytewax's KafkaSource."""
    schema, records = sample
    topic = create_topic("fink_vra_ztf", partitions=2)
    parsed, key = fastavro.parse_schema(schema), json.dumps(schema).encode()
    values, keys = [], []
    for rec in records[:5]:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, rec)
        values.append(buf.getvalue()), keys.append(key)
    values += [single_alert_container(schema, records[5]), b"\x01\x02 not an alert"]
    keys += [None, key]
    kafka.produce(topic, values, keys)
    cfg = flow_env(tmp_path, FINK_VRA_KAFKA_BROKERS=kafka.bootstrap, FINK_VRA_TOPIC=topic,
                   FINK_VRA_KAFKA_TAIL="false", FINK_VRA_STREAM_FILTER="false")
    run_main(build_flow(cfg))
    pd.testing.assert_frame_equal(read_features(tmp_path / "out"), features_table(records[:6]).sort_index())
    (letter,) = read_dead_letters(tmp_path / "dl.jsonl")
    assert letter["topic"] == topic and letter["reason"].startswith("undecodable")
