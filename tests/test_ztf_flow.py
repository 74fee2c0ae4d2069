"""The ZTF flow end to end on the bundled sample (real alerts, real weights)."""

from __future__ import annotations

import numpy as np

from models.oracle.taxonomy import ZTF_TAXONOMY
from operators.io.deadletter import read_dead_letters
from operators.oracle.messages import decode_avro
from operators.oracle.results import read_results
from operators.samples.bundle import encode_result, read_messages
from operators.oracle.surveys import ZTF
from tests.helpers import SAMPLE_TRUTH, run_flow, sample_truth, settings_for

MESSAGES = read_messages(ZTF.sample_dir)


def run(tmp_path, workers=1, messages=MESSAGES, **env):
    settings = settings_for(ZTF, tmp_path, **env)
    run_flow(ZTF, settings, messages, workers)
    return settings


def test_every_passing_alert_gets_one_row_and_failing_ones_none(tmp_path):
    settings = run(tmp_path)
    rows = read_results(settings.results_csv)
    passing, failing, malformed = sample_truth(ZTF)
    assert malformed >= 1
    assert rows.candid.is_unique
    letters = read_dead_letters(settings.deadletters)
    no_aux = {d["candid"] for d in letters if d["reason"] == "no aux document"}
    assert no_aux == SAMPLE_TRUTH["ZTF"]["no_aux"]
    assert set(rows.candid) == passing - no_aux
    # Provenance: the file and the first 12 hex digits of its sha256 (literal).
    assert (rows.model == "ORACLE-btsv2:best_model_f1_ztf.pth@f1e3353cb6c0").all()
    assert not set(rows.candid) & failing
    # Probabilities a user reads: the tree is consistent in every row.
    leaves = [ZTF_TAXONOMY.nodes[i] for i in ZTF_TAXONOMY.leaves]
    np.testing.assert_allclose(rows[leaves].sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(rows["Persistent"] + rows["Transient"], 1.0, atol=1e-4)
    np.testing.assert_allclose(rows[["AGN", "CV", "Varstar"]].sum(axis=1), rows["Persistent"], atol=1e-4)
    assert (rows.predicted == rows[leaves].idxmax(axis=1)).all()
    # Known variables (SIMBAD RR Lyrae in the sample) come out variable stars; supernovae
    # typed on TNS (SN II, SN Ia; the sample's other three fail the filter) do not.
    rrlyr = rows[rows.objectId.isin(["ZTF18abvcdqu", "ZTF18abtvigi", "ZTF18abskozm"])]
    assert len(rrlyr) == 3 and (rrlyr.Varstar > 0.9).all() and (rrlyr.predicted == "Varstar").all()
    sne = rows[rows.objectId.isin(["ZTF26aaavvtm", "ZTF25ackyyzk"])]
    assert len(sne) == 2 and (sne.Transient > 0.8).all() and (sne.Varstar < 0.2).all()


def test_malformed_messages_are_dead_letters_with_reason_and_offset(tmp_path):
    settings = run(tmp_path)
    letters = read_dead_letters(settings.deadletters)
    parse = [d for d in letters if d["stage"] == "parse"]
    assert {d["offset"] for d in parse} == SAMPLE_TRUTH["ZTF"]["malformed_offsets"]
    for d in parse:
        assert d["offset"] is not None and d["topic"] == "t" and d["reason"] and d["time"]
        assert d["payload_b64"], "the raw message is kept for replay"
    assert any("undecodable Avro" in d["reason"] for d in parse)


def test_four_workers_write_the_same_rows_once(tmp_path):
    one = read_results(run(tmp_path / "one").results_csv)
    four_settings = run(tmp_path / "four", workers=4)
    four = read_results(four_settings.results_csv)
    text = four_settings.results_csv.read_text()
    assert text.count("candid,objectId") == 1
    cols = ["candid", *ZTF_TAXONOMY.nodes, "predicted"]
    a = one[cols].sort_values("candid").reset_index(drop=True)
    b = four[cols].sort_values("candid").reset_index(drop=True)
    assert len(a) == len(b) > 20
    np.testing.assert_allclose(a[list(ZTF_TAXONOMY.nodes)], b[list(ZTF_TAXONOMY.nodes)], atol=1e-5)
    assert (a.candid == b.candid).all() and (a.predicted == b.predicted).all()


def test_batch_size_does_not_change_results(tmp_path):
    big = read_results(run(tmp_path / "big", ORACLE_BATCH_SIZE=256).results_csv).sort_values("candid")
    small = read_results(run(tmp_path / "small", ORACLE_BATCH_SIZE=1).results_csv).sort_values("candid")
    np.testing.assert_allclose(big[list(ZTF_TAXONOMY.nodes)].to_numpy(), small[list(ZTF_TAXONOMY.nodes)].to_numpy(), atol=1e-5)


def test_replaying_the_same_messages_adds_no_rows(tmp_path):
    settings = run(tmp_path)
    first = read_results(settings.results_csv)
    run(tmp_path)
    again = read_results(settings.results_csv)
    assert len(again) == len(first)
    assert len(read_dead_letters(settings.deadletters)) == len({(d["stage"], d["offset"]) for d in read_dead_letters(settings.deadletters)})


def test_other_filter_name_selects_other_alerts(tmp_path):
    settings = run(tmp_path, ORACLE_FILTER="ztf_other_filter")
    rows = read_results(settings.results_csv)
    _, failing, _ = sample_truth(ZTF)
    assert set(rows.candid) == failing


def test_alert_with_unusable_history_is_dead_lettered_not_fatal(tmp_path):
    rec = decode_avro(MESSAGES[0])
    rec["candid"] = 42  # no alert document has this candid
    settings = run(tmp_path, messages=[encode_result(rec), *MESSAGES[:4]])
    letters = read_dead_letters(settings.deadletters)
    assert any(d["candid"] == 42 and d["reason"] == "no alert document" for d in letters)
    assert len(read_results(settings.results_csv)) >= 1


def test_a_results_file_with_other_columns_is_set_aside_not_appended_to(tmp_path):
    """An upgrade that adds a column must not write rows under an old header."""
    settings = settings_for(ZTF, tmp_path)
    settings.results_csv.parent.mkdir(parents=True)
    old_header = "candid,objectId,jd,Alert,predicted\n"
    kept = 3367139732915010140  # classified by the old version: not classified again
    settings.results_csv.write_text(old_header + f"{kept},ZTF26aaoizvm,2461000.5,1.0,SN-Ia\n")
    run(tmp_path)
    rows = read_results(settings.results_csv)
    assert kept not in set(rows.candid) and len(rows) == len(SAMPLE_TRUTH["ZTF"]["passing"]) - 2
    (old,) = settings.results_csv.parent.glob("oracle_ztf_results.before-*.csv")
    assert old.read_text().startswith(old_header)
