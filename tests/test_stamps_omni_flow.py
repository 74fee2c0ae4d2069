"""Reference stamps from real alerts, and the ZTF flow end to end with an Omni checkpoint."""

from __future__ import annotations

import fastavro
import numpy as np
import pytest
import torch
from bytewax.testing import run_main

from dataflows.oracle import build_flow
from models.oracle import build_oracle
from models.taxonomy import ZTF_TAXONOMY
from operators.config import DATA_DIR
from operators.deadletter import read_dead_letters
from operators.inputs import InputError
from operators.results import read_results
from operators.stamps import BAND_CHANNEL, ztf_stamp
from operators.surveys import ZTF
from tests.helpers import sample_truth, settings_for


def real_alerts():
    with (DATA_DIR / "fink" / "fink_ztf_sample.avro").open("rb") as f:
        return list(fastavro.reader(f))


def test_stamps_of_real_alerts_are_unit_norm_in_the_band_channel():
    alerts = real_alerts()
    assert len(alerts) > 20
    for alert in alerts:
        fid = alert["candidate"]["fid"]
        stamp = ztf_stamp({"cutoutTemplate": alert["cutoutTemplate"]["stampData"]}, fid)
        assert stamp.shape == (3, 63, 63) and stamp.dtype == np.float32
        assert np.isfinite(stamp).all()
        assert np.linalg.norm(stamp) == pytest.approx(1.0, abs=1e-5)
        others = [c for c in range(3) if c != BAND_CHANNEL[fid]]
        assert not stamp[others].any() and stamp[BAND_CHANNEL[fid]].any()


def test_missing_or_broken_stamps_say_why():
    with pytest.raises(InputError, match="no cutout"):
        ztf_stamp(None, 1)
    with pytest.raises(InputError, match="bad cutout"):
        ztf_stamp({"cutoutTemplate": b"\x1f\x8bnot gzip"}, 1)


@pytest.fixture(scope="module")
def omni_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("omni") / "best_model_f1_ztf.pth"
    torch.save(build_oracle("omni").state_dict(), path)
    return path


def test_ztf_flow_runs_end_to_end_with_an_omni_checkpoint(tmp_path, omni_weights):
    settings = settings_for(ZTF, tmp_path, ORACLE_ZTF_WEIGHTS=omni_weights)
    run_main(build_flow(ZTF, settings))
    rows = read_results(settings.results_csv)
    passing, failing, _ = sample_truth(ZTF)
    no_aux = {d["candid"] for d in read_dead_letters(settings.deadletters) if d["reason"] == "no aux document"}
    assert set(rows.candid) == passing - no_aux  # every passing Fink alert carries its stamp
    assert rows.model.str.contains("omni").all()
    leaves = [ZTF_TAXONOMY.nodes[i] for i in ZTF_TAXONOMY.leaves]
    np.testing.assert_allclose(rows[leaves].sum(axis=1), 1.0, atol=1e-4)

    # The real BOOM document (in the failing set) came without cutouts: dead-lettered, not guessed.
    other = settings_for(ZTF, tmp_path / "other", ORACLE_ZTF_WEIGHTS=omni_weights, ORACLE_FILTER="ztf_other_filter")
    run_main(build_flow(ZTF, other))
    no_stamp = [d for d in read_dead_letters(other.deadletters) if d["reason"].startswith("no cutout")]
    assert [d["objectId"] for d in no_stamp] == ["ZTF26aarabyi"]
    assert set(read_results(other.results_csv).candid) == failing - {d["candid"] for d in no_stamp}
