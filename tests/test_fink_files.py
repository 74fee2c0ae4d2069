"""FINK_VRA_INPUT: the VRA flow on Fink files as users save them.

The bundled real alerts (data/fink) are written out the way fink-client and
the original finkvra consumer write them, and the flow must give the same
feature rows from every format.
"""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import fastavro
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bytewax.testing import cluster_main, run_main

from dataflows.fink_vra import build_flow
from operators.runtime.config import ConfigError
from operators.io.deadletter import read_dead_letters
from operators.vra.alert_files import (
    BAND_FEATURES,
    DETECTION_FEATURES,
    AlertFileSource,
    expand_input,
    file_format,
    processed_row_alert,
)
from operators.vra.steps import FinkVraConfig, read_features
from operators.vra.features import FEATURE_COLUMNS, features_table

DATA = Path(__file__).resolve().parent.parent / "data" / "fink"
FILES = [DATA / "fink_ztf_sample.avro", *sorted(DATA.glob("fink_ztf_2019_alert_*.avro"))]


def read_avro(path):
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        return reader.writer_schema, list(reader)


@pytest.fixture(scope="module")
def bundles():
    """(writer schema, records) per bundled file: 31 alerts with Fink's features, 4 from 2019 without."""
    return [read_avro(p) for p in FILES]


# ------------------------------------------------------------------ writers, as the tools do it


def avro_to_arrow_type(t, named):
    """fink-client's avro2arrow rules: unions -> first non-null, float -> float32,
    int -> int32, records -> structs, arrays -> lists (named types resolved)."""
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        return avro_to_arrow_type(rest[0], named) if rest else pa.null()
    if isinstance(t, str):
        prim = {"boolean": pa.bool_(), "int": pa.int32(), "long": pa.int64(), "float": pa.float32(),
                "double": pa.float64(), "bytes": pa.binary(), "string": pa.string(), "null": pa.null()}
        return prim[t] if t in prim else named[t]
    if t["type"] == "record":
        out = pa.struct([pa.field(f["name"], avro_to_arrow_type(f["type"], named)) for f in t["fields"]])
        named[t["name"]] = out
        named[t["name"].split(".")[-1]] = out
        return out
    if t["type"] == "array":
        return pa.list_(avro_to_arrow_type(t["items"], named))
    if t["type"] == "map":
        return pa.map_(pa.string(), avro_to_arrow_type(t["values"], named))
    return avro_to_arrow_type(t["type"], named)


def write_datatransfer_parquet(root: Path, bundles):
    """fink_datatransfer's default output: part-*.parquet, partitioned by time (year=/month=/day=)."""
    for n, (schema, records) in enumerate(bundles):
        arrow_schema = avro_to_arrow_type(schema, {})
        table = pa.Table.from_pylist(records, schema=pa.schema(list(arrow_schema)))
        table = table.drop_columns([c for c in ("year", "month", "day") if c in table.column_names])
        dates = pd.to_datetime([r["candidate"]["jd"] - 2440587.5 for r in records], unit="D")
        table = (table.append_column("year", pa.array(dates.strftime("%Y")))
                 .append_column("month", pa.array(dates.strftime("%m")))
                 .append_column("day", pa.array(dates.strftime("%d"))))
        pq.write_to_dataset(table, root, basename_template=f"part-{n}-{{i}}-12345.parquet",
                            partition_cols=["year", "month", "day"], existing_data_behavior="overwrite_or_ignore")
    (root / "_SUCCESS").write_text("")  # Spark-style marker files are skipped


def write_consumer_avro(root: Path, bundles):
    """`fink_consumer --save`: one Avro container per alert, <objectId>_<candid>.avro."""
    root.mkdir(parents=True)
    for schema, records in bundles:
        for r in records:
            with open(root / f"{r['objectId']}_{r['candid']}.avro", "wb") as f:
                fastavro.writer(f, schema, [r])


def extract_field(alert, field):
    """fink_client.visualisation.extract_field: current candidate first, then the history."""
    history = alert["prv_candidates"] or []
    return np.array([alert["candidate"][field], *[p[field] for p in history]])


def write_finkvra_rows(path: Path, bundles):
    """The original finkvra consumer (`process_alerts` + `run_sherlock`), with Sherlock orphans."""
    rows = []
    for _, records in bundles:
        for a in records:
            rows.append({
                "candid": a["candid"], "objectId": a["objectId"],
                "ra": a["candidate"]["ra"], "dec": a["candidate"]["dec"], "drb": a["candidate"]["drb"],
                "mjd": extract_field(a, "jd") - 2400000.5, "mag": extract_field(a, "magpsf"),
                "maglim": extract_field(a, "diffmaglim"), "fid": extract_field(a, "fid"),
                "isdiffpos": extract_field(a, "isdiffpos"),
                "lc_features_g": a.get("lc_features_g"), "lc_features_r": a.get("lc_features_r"),
                "sherl_class": "ORPHAN", "sep_arcsec": math.nan,
            })
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)


def run_flow(tmp_path, name, spec, workers=1):
    cfg = FinkVraConfig.from_env({"FINK_VRA_INPUT": str(spec),
                                  "FINK_VRA_OUT_DIR": str(tmp_path / name / "out"),
                                  "FINK_VRA_DEADLETTERS": str(tmp_path / name / "dl.jsonl")})
    flow = build_flow(cfg)
    run_main(flow) if workers == 1 else cluster_main(flow, [], 0, worker_count_per_proc=workers)
    letters = tmp_path / name / "dl.jsonl"
    return read_features(tmp_path / name / "out"), (read_dead_letters(letters) if letters.exists() else [])


# ------------------------------------------------------------------ tests


def test_three_formats_give_identical_feature_rows(tmp_path, bundles):
    write_datatransfer_parquet(tmp_path / "transfer", bundles)
    write_consumer_avro(tmp_path / "saved", bundles)
    write_finkvra_rows(tmp_path / "finkvra" / "20250701_000000_alerts.parquet", bundles)
    assert len(list((tmp_path / "transfer").rglob("part-*.parquet"))) >= 2
    assert any(p.parent.name.startswith("day=") for p in (tmp_path / "transfer").rglob("*.parquet"))

    from_parquet, dl1 = run_flow(tmp_path, "p", tmp_path / "transfer", workers=2)
    from_avro, dl2 = run_flow(tmp_path, "a", tmp_path / "saved" / "*.avro")
    from_rows, dl3 = run_flow(tmp_path, "r", tmp_path / "finkvra")
    assert dl1 == dl2 == dl3 == []

    alerts = [a for _, records in bundles for a in records]
    reference = features_table(alerts).sort_index()  # the Avro alerts read directly
    assert len(reference) == 35
    pd.testing.assert_frame_equal(from_parquet, reference, check_exact=True)
    pd.testing.assert_frame_equal(from_avro, reference, check_exact=True)

    # Processed rows: identical wherever Fink's features travel with the row (31 alerts) ...
    carried = [a["candid"] for a in alerts if a.get("lc_features_g")]
    assert len(carried) == 31
    pd.testing.assert_frame_equal(from_rows.loc[carried], reference.loc[carried], check_exact=True)
    # ... and without them (2019 alerts), the light-curve features cannot be recomputed
    # (no sigmapsf in those rows): NaN, the other columns still identical.
    old = sorted(set(reference.index) - set(carried))
    lc_cols = sorted(BAND_FEATURES[1] | BAND_FEATURES[2])
    assert from_rows.loc[old, lc_cols].isna().all().all()
    assert reference.loc[old, lc_cols].notna().any().any()
    rest = [c for c in reference.columns if c not in lc_cols]
    pd.testing.assert_frame_equal(from_rows.loc[old, rest], reference.loc[old, rest], check_exact=True)


def test_parquet_lacking_fields_gives_nan_for_those_features_only(tmp_path, bundles):
    schema, records = bundles[0]
    full = pa.Table.from_pylist(records, schema=pa.schema(list(avro_to_arrow_type(schema, {}))))
    # No history and no Fink features: nothing history-based can be computed.
    slim = full.drop_columns(["prv_candidates", "lc_features_g", "lc_features_r"])
    pq.write_table(slim, tmp_path / "slim.parquet")
    got, letters = run_flow(tmp_path, "slim", tmp_path / "slim.parquet")
    assert letters == [] and len(got) == len(records)
    gone = sorted(DETECTION_FEATURES | BAND_FEATURES[1] | BAND_FEATURES[2])
    assert got[gone].isna().all().all()
    reference = features_table(records).sort_index()
    kept = ["ra", "dec", "drb"]
    pd.testing.assert_frame_equal(got[kept], reference[kept], check_exact=True)
    # A processed row without lists or Fink's features: NaN, never a crash.
    alert, unavailable, sherlock = processed_row_alert({"candid": 1, "objectId": "ZTF", "ra": 1.0, "dec": 2.0})
    assert unavailable == DETECTION_FEATURES | BAND_FEATURES[1] | BAND_FEATURES[2] and sherlock is None


def test_dedup_bad_files_and_content_detection(tmp_path, bundles):
    schema, records = bundles[0]
    root = tmp_path / "mixed"
    root.mkdir()
    with open(root / "alerts.parquet", "wb") as f:  # an Avro file named .parquet: content decides
        fastavro.writer(f, schema, records[:5])
    with gzip.open(root / "more.avro.gz", "wb") as f:
        fastavro.writer(f, schema, records[3:8])  # 3 candids repeated: written once
    (root / "notes.txt").write_text("not an alert")
    shutil.copy(root / "alerts.parquet", root / ".hidden.avro")
    good = (root / "alerts.parquet").read_bytes()
    (root / "truncated.avro").write_bytes(good[: len(good) // 2])  # the alerts before the cut still count
    assert file_format(root / "alerts.parquet") == "avro"
    assert file_format(root / "more.avro.gz") == "avro.gz"
    assert file_format(root / "notes.txt") is None
    assert [p.name for p in expand_input(str(root))] == ["alerts.parquet", "more.avro.gz", "notes.txt",
                                                         "truncated.avro"]

    got, letters = run_flow(tmp_path, "m", root)
    assert sorted(got.index) == sorted(r["candid"] for r in records[:8])
    reasons = sorted(dl["reason"].split(":")[0] + " " + dl["topic"].rsplit("/", 1)[-1] for dl in letters)
    assert reasons == ["unreadable_file notes.txt", "unreadable_file truncated.avro"]


def test_a_wrong_path_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="FINK_VRA_INPUT=.*no such file"):
        AlertFileSource(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no files"):
        AlertFileSource(str(tmp_path / "*.parquet"))
    with pytest.raises(ValueError, match="FINK_VRA_INPUT and FINK_VRA_KAFKA_BROKERS"):
        FinkVraConfig.from_env({"FINK_VRA_INPUT": "x", "FINK_VRA_KAFKA_BROKERS": "h:9092"})
    assert FinkVraConfig.from_env({"FINK_VRA_INPUT": "x"}).uses_files


def test_partitions_are_files_and_resume_where_they_stopped(tmp_path, bundles):
    write_consumer_avro(tmp_path / "saved", bundles)
    source = AlertFileSource(str(tmp_path / "saved"))
    parts = source.list_parts()
    assert len(parts) == 35 and len(set(parts)) == 35
    schema, records = bundles[0]
    with open(tmp_path / "many.avro", "wb") as f:
        fastavro.writer(f, schema, records)
    source = AlertFileSource(str(tmp_path / "many.avro"), batch_size=10)
    part = source.build_part("files", source.list_parts()[0], None)
    first = part.next_batch()
    assert part.snapshot() == 10
    resumed = source.build_part("files", source.list_parts()[0], part.snapshot())
    nxt = resumed.next_batch()
    assert [r.record["candid"] for r in nxt] == [r["candid"] for r in records[10:20]]
    assert [r.origin.offset for r in first] == list(range(10))
    assert FEATURE_COLUMNS  # the table the rows feed
