"""The shadow model: a second checkpoint on the same batches, written apart, never posted."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from bytewax.testing import run_main
from prometheus_client import REGISTRY

from dataflows.oracle import build_flow
from models.oracle.taxonomy import ZTF_TAXONOMY
from operators.oracle.results import read_results
from operators.oracle.surveys import LSST, ZTF
from tests.fakes import FakeSkyPortal, FakeSlack
from tests.helpers import perturbed_weights, settings_for

NODES = list(ZTF_TAXONOMY.nodes)
SAME = ["candid", "objectId", "jd", *NODES, "predicted", "model"]  # everything but processed_at


def run(tmp_path, **env):
    settings = settings_for(ZTF, tmp_path, **env)
    run_main(build_flow(ZTF, settings))
    return settings


def frame(path):
    return read_results(path)[SAME].sort_values("candid").reset_index(drop=True)


def shadow_seconds_count() -> float:
    return REGISTRY.get_sample_value("alertflow_stage_seconds_count",
                                     {"flow": "oracle_ztf", "survey": "ZTF", "stage": "shadow"}) or 0.0


def test_the_shadow_csv_equals_a_main_run_with_the_shadow_weights(tmp_path, caplog):
    other = perturbed_weights(ZTF.weights, tmp_path / "retrained_ztf.pth", scale=0.02)
    before = shadow_seconds_count()
    with caplog.at_level(logging.INFO, logger="alertflow.oracle"):
        with_shadow = run(tmp_path / "a", ORACLE_ZTF_SHADOW_WEIGHTS=other)
    assert shadow_seconds_count() > before, "the shadow's time is its own stage in the metrics"
    assert any("shadow" in r.getMessage() and "batch:" in r.getMessage() for r in caplog.records)
    plain = run(tmp_path / "b")
    as_main = run(tmp_path / "c", ORACLE_ZTF_WEIGHTS=other)

    shadow = frame(with_shadow.shadow_results_csv)
    assert with_shadow.shadow_results_csv.name == "oracle_ztf_shadow_results.csv"
    expected = frame(as_main.results_csv)
    assert len(shadow) > 20 and (shadow.candid == expected.candid).all()
    np.testing.assert_allclose(shadow[NODES].to_numpy(), expected[NODES].to_numpy(), atol=2e-6)
    assert (shadow.predicted == expected.predicted).all() and (shadow.model == expected.model).all()
    assert shadow.model.iloc[0].startswith("ORACLE-btsv2:retrained_ztf.pth@")

    # The main rows are those of a run without a shadow; the two models really differ.
    main = frame(with_shadow.results_csv)
    np.testing.assert_allclose(main[NODES].to_numpy(), frame(plain.results_csv)[NODES].to_numpy(), atol=2e-6)
    assert np.abs(main[NODES].to_numpy() - shadow[NODES].to_numpy()).max() > 0.01


def test_the_shadow_never_posts(tmp_path):
    other = perturbed_weights(ZTF.weights, tmp_path / "retrained_ztf.pth", scale=0.05)
    token, slack_token = "fritz-secret-token-123", "xoxb-slack-secret-456"
    with FakeSkyPortal(token=token, sources=("ZTF26aajvsis", "ZTF18abvcdqu", "ZTF26aaklfaa")) as fritz, \
            FakeSlack(token=slack_token) as slack:
        settings = run(tmp_path, ORACLE_ZTF_SHADOW_WEIGHTS=other, FRITZ_TOKEN=token, FRITZ_URL=fritz.url,
                       POST_TO_SLACK="true", SLACK_BOT_TOKEN=slack_token, SLACK_ORACLE_CHANNEL_ID="CZTF",
                       SLACK_API_URL=slack.base_url, FRITZ_CONTEXT_TIMEOUT=5)
        main = read_results(settings.results_csv).set_index("objectId")
        assert len(slack.posts) == len(main), "one post per main row, none for the shadow's"
        for obj in ("ZTF26aajvsis", "ZTF18abvcdqu", "ZTF26aaklfaa"):
            (note,) = fritz.annotations_on(obj)
            row = main.loc[[obj]].iloc[-1]
            assert note["data"]["Varstar"] == round(row["Varstar"], 4)


def test_wrong_shadow_weights_stop_the_flow_with_the_variable_named(tmp_path, capsys):
    # A configuration error: one line naming the variable before the flow starts, exit status 2.
    for name, weights in (("missing", tmp_path / "nope.pth"), ("lsst", LSST.weights)):
        with pytest.raises(SystemExit) as stopped:
            run(tmp_path / name, ORACLE_ZTF_SHADOW_WEIGHTS=weights)
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert stopped.value.code == 2 and line.startswith("configuration error: ORACLE_ZTF_SHADOW_WEIGHTS="), line


def test_check_reports_the_shadow_weights(tmp_path):
    from dataflows.__main__ import run_checks

    env = {"ALERTFLOW_RESULTS_DIR": str(tmp_path / "r"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "l")}
    good = {r.name: r for r in run_checks("ztf", {**env, "ORACLE_ZTF_SHADOW_WEIGHTS": str(ZTF.weights)})}
    assert good["shadow"].ok and "never posted" in good["shadow"].detail
    bad = {r.name: r for r in run_checks("ztf", {**env, "ORACLE_ZTF_SHADOW_WEIGHTS": str(LSST.weights)})}
    assert not bad["shadow"].ok and "ORACLE_ZTF_SHADOW_WEIGHTS" in bad["shadow"].line()
    assert "shadow" not in {r.name for r in run_checks("ztf", env)}
