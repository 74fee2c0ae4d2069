"""The ZTF flow with Fritz and Slack switched on, against loopback servers that
follow SkyPortal's and Slack's API contracts."""

from __future__ import annotations

import logging

from bytewax.testing import run_main

from dataflows.oracle import build_flow
from operators.oracle.results import read_results
from operators.oracle.store import read_documents
from operators.oracle.surveys import ZTF
from tests.fakes import FakeSkyPortal, FakeSlack
from tests.helpers import settings_for

FRITZ_TOKEN = "fritz-secret-token-123"
SLACK_TOKEN = "xoxb-slack-secret-456"


def run(tmp_path, fritz: FakeSkyPortal, slack: FakeSlack, **env):
    settings = settings_for(
        ZTF, tmp_path, FRITZ_TOKEN=FRITZ_TOKEN, FRITZ_URL=fritz.url, POST_TO_SLACK="true",
        SLACK_BOT_TOKEN=SLACK_TOKEN, SLACK_ORACLE_CHANNEL_ID="CZTF", SLACK_API_URL=slack.base_url,
        FRITZ_CONTEXT_TIMEOUT=5, **env)
    run_main(build_flow(ZTF, settings))
    return settings


def test_each_classified_alert_is_annotated_posted_and_given_fritz_context(tmp_path, caplog):
    saved = "ZTF26aajvsis"  # a sample object with a human classification on this Fritz
    unsaved = "ZTF26aaebysu"  # known to Fritz, not saved as a source: annotated, linked to its alert page
    unknown = "ZTF26aamcamo"  # Fritz has no such object: its annotation is skipped (404), its row stays
    objects = [d["_id"] for d in read_documents(ZTF.sample_dir / "ZTF_alerts_aux.jsonl")]
    assert {saved, unsaved, unknown} <= set(objects)
    with FakeSkyPortal(token=FRITZ_TOKEN, sources=tuple(o for o in objects if o not in (unsaved, unknown)),
                       objects=(unsaved,)) as fritz, FakeSlack(token=SLACK_TOKEN) as slack:
        fritz.classifications[saved] = [{"classification": "SN Ia", "probability": 0.9, "ml": False},
                                        {"classification": "AGN", "probability": 0.6, "ml": True}]
        with caplog.at_level(logging.DEBUG):
            settings = run(tmp_path, fritz, slack)
        rows = read_results(settings.results_csv)
        assert len(rows) > 20

        # Fritz: one annotation per object, our origin, every class in pre-order, private to the group.
        assert unknown in set(rows.objectId) and not fritz.annotations_on(unknown)
        for obj in set(rows.objectId) - {unknown}:
            notes = fritz.annotations_on(obj)
            assert len(notes) == 1, obj
            assert notes[0]["origin"] == "oracle_omni"
            assert list(notes[0]["data"]) == ["Persistent", "AGN", "CV", "Varstar", "Transient",
                                              "SN-Ia", "SN-II", "SN-Ib/c", "SLSN"]
            assert notes[0]["group_ids"] == [1959]
        mine = rows[rows.objectId == saved].iloc[0]
        assert fritz.annotations_on(saved)[0]["data"]["Varstar"] == round(mine["Varstar"], 4)
        assert mine["fritz_classifications"] == "SN Ia(0.9)" and mine["fritz_ml_classifications"] == "AGN(0.6)"

        # Slack: one post per row, in the ZTF channel, a PNG tree, the Fritz source link for saved objects.
        assert len(slack.posts) == len(rows)
        assert {p["channel"] for p in slack.posts} == {"CZTF"}
        assert all(p["data"][:8] == b"\x89PNG\r\n\x1a\n" for p in slack.posts)
        saved_post = next(p for p in slack.posts if saved in p["initial_comment"])
        assert f"{fritz.url}/source/{saved}" in saved_post["initial_comment"]
        unsaved_post = next(p for p in slack.posts if unsaved in p["initial_comment"])
        assert f"{fritz.url}/alerts/ztf/{unsaved}" in unsaved_post["initial_comment"]

        # Replay: annotations are updated in place, never duplicated.
        run(tmp_path / "again", fritz, slack)
        assert all(len(fritz.annotations_on(obj)) == 1 for obj in set(rows.objectId) - {unknown})
        assert fritz.calls("PUT"), "the second run updates the existing annotations"

    logged = caplog.text + (tmp_path / "logs" / "oracle_ztf.log").read_text()
    assert FRITZ_TOKEN not in logged and SLACK_TOKEN not in logged


def test_fritz_and_slack_down_still_write_every_row(tmp_path):
    with FakeSkyPortal(token="another-token") as fritz, FakeSlack(token="xoxb-other") as slack:
        settings = run(tmp_path, fritz, slack, FRITZ_MAX_RETRIES=1)  # our tokens are refused: 401s
        rows = read_results(settings.results_csv)
        assert len(rows) > 20
        assert not slack.posts and not fritz.annotations
    log = (tmp_path / "logs" / "oracle_ztf.log").read_text()
    assert "Annotate" in log  # the 401 explained once: wrong token or no Annotate ACL
