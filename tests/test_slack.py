"""Slack posts against a loopback fake of the files_upload_v2 contract."""

from __future__ import annotations

import io
import logging
import time

import matplotlib.image as mpimg
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
import bytewax.operators as op

from models.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY
from operators.fritz import FritzClient, FritzConfig
from slack_sdk import WebClient

from operators.slack import (
    SlackConfig,
    SlackSink,
    format_message,
    make_client,
    object_link,
    post_alert,
    sdk_log,
    top_classes,
)
from tests.fakes import FakeSkyPortal, FakeSlack, make_result

TOKEN = "xoxb-very-secret-slack-token"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAXONOMIES = {"ZTF": ZTF_TAXONOMY, "LSST": LSST_TAXONOMY}


@pytest.fixture
def slack():
    with FakeSlack(token=TOKEN, channels=("CZTF", "CLSST")) as s:
        yield s


@pytest.fixture(autouse=True)
def _no_token_in_logs(caplog):
    caplog.set_level(logging.DEBUG)
    yield
    assert TOKEN not in caplog.text


def cfg(slack: FakeSlack, **kw) -> SlackConfig:
    base = dict(enabled=True, token=TOKEN, ztf_channel="CZTF", lsst_channel="CLSST", base_url=slack.base_url,
                fritz_url="https://fritz.example", close_timeout=20.0)
    base.update(kw)
    return SlackConfig(**base)


def decode_png(data: bytes):
    assert data[:8] == PNG_SIGNATURE
    return mpimg.imread(io.BytesIO(data), format="png")


def run_sink(sink: SlackSink, records: list) -> None:
    flow = Dataflow("slack_test")
    s = op.input("in", flow, TestingSource(records))
    keyed = op.key_on("key", s, lambda r: "slack")
    op.output("slack", keyed, sink)
    run_main(flow)


# -- plain functions ------------------------------------------------------------------


def test_config_from_env():
    c = SlackConfig.from_env({})
    assert not c.enabled and c.min_leaf_probability == 0.0
    c = SlackConfig.from_env({"POST_TO_SLACK": "true", "SLACK_BOT_TOKEN": TOKEN,
                              "SLACK_ORACLE_CHANNEL_ID": "C1", "SLACK_MIN_LEAF_PROBABILITY": "0.6"})
    assert c.enabled and c.channel_for("ZTF") == "C1" and c.channel_for("LSST") == ""
    assert c.min_leaf_probability == 0.6 and TOKEN not in repr(c)
    with pytest.raises(ValueError, match="SLACK_BOT_TOKEN"):
        SlackConfig.from_env({"POST_TO_SLACK": "1", "SLACK_ORACLE_CHANNEL_ID": "C1"})
    with pytest.raises(ValueError, match="true or false"):
        SlackConfig.from_env({"POST_TO_SLACK": "maybe"})


def test_message_has_object_top_classes_link_and_fritz_text():
    r = make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 42, favour="SN-Ia")
    link = object_link(r, SlackConfig(fritz_url="https://fritz.example"))
    assert link == "https://fritz.example/alerts/ztf/ZTF24aaaaaaa"
    text = format_message(r, ZTF_TAXONOMY, link=link, fritz_classifications="SN Ia(0.9); AGN(None)")
    assert "ZTF24aaaaaaa" in text and link in text and "SN Ia(0.9); AGN(None)" in text
    (best, p), *_ = top_classes(r.probabilities, ZTF_TAXONOMY, 3)
    assert best == "SN-Ia" and f"SN-Ia {p:.2f}" in text
    lsst = make_result(LSST_TAXONOMY, "170000000001", 7, survey="LSST")
    assert object_link(lsst, SlackConfig()) == "https://babamul.caltech.edu/objects/LSST/170000000001"


def test_post_alert_uploads_a_png_to_the_channel(slack):
    r = make_result(LSST_TAXONOMY, "170000000001", 7, survey="LSST", favour="KN")
    client = make_client(TOKEN, base_url=slack.base_url)
    resp = post_alert(client, "CLSST", r, LSST_TAXONOMY, link="https://babamul.caltech.edu/objects/LSST/170000000001")
    assert resp["ok"]
    (post,) = slack.posts
    assert post["channel"] == "CLSST" and post["filename"] == "170000000001_7.png"
    assert "170000000001" in post["initial_comment"] and "KN" in post["initial_comment"]
    img = decode_png(post["data"])
    assert img.shape[0] > 300 and img.shape[1] > 400


def test_rate_limited_upload_is_retried(slack):
    slack.rate_limit_next(1, retry_after=1)
    r = make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 42)
    client = make_client(TOKEN, base_url=slack.base_url)
    t0 = time.monotonic()
    resp = post_alert(client, "CZTF", r, ZTF_TAXONOMY, link="https://x/alerts/ztf/ZTF24aaaaaaa")
    assert resp["ok"] and time.monotonic() - t0 >= 1.0
    assert len(slack.posts) == 1 and slack.posts[0]["channel"] == "CZTF"
    decode_png(slack.posts[0]["data"])
    assert [r["path"] for r in slack.requests][:2] == ["/api/files.getUploadURLExternal"] * 2


# -- the sink -----------------------------------------------------------------------------


def test_sink_posts_each_survey_to_its_channel_once_and_filters(slack):
    recs = [
        make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 1, favour="SN-Ia"),
        make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 1, favour="SN-Ia"),  # replayed candid
        make_result(LSST_TAXONOMY, "170000000001", 2, survey="LSST", favour="TDE"),
        make_result(ZTF_TAXONOMY, "ZTF24bbbbbbb", 3, seed=5),  # unsure: below threshold
    ]
    assert max(p for _, p in top_classes(recs[3].probabilities, ZTF_TAXONOMY, 1)) < 0.9
    sink = SlackSink(cfg(slack, min_leaf_probability=0.9), TAXONOMIES)
    run_sink(sink, recs)
    assert [(p["channel"], p["filename"]) for p in slack.posts] == [
        ("CZTF", "ZTF24aaaaaaa_1.png"), ("CLSST", "170000000001_2.png")]
    assert "https://fritz.example/alerts/ztf/ZTF24aaaaaaa" in slack.posts[0]["initial_comment"]
    assert "https://babamul.caltech.edu/objects/LSST/170000000001" in slack.posts[1]["initial_comment"]
    for p in slack.posts:
        decode_png(p["data"])
    stats = sink.partition.stats
    assert stats["posted"] == 2 and stats["already_posted"] == 1 and stats["below_threshold"] == 1


def test_recovered_state_prevents_reposting_and_resumes_pending(slack):
    sink = SlackSink(cfg(slack), TAXONOMIES)
    part = sink.build_part("slack", "slack", None)
    a = make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 11)
    part.write_batch([a])
    assert part.wait_idle(10)
    state = part.snapshot()
    assert state["posted"] == [11] and state["pending"] == []
    part.close()
    # A pending alert, as a snapshot taken before it was posted would hold it:
    b = make_result(ZTF_TAXONOMY, "ZTF24bbbbbbb", 12)
    state["pending"] = [{"candid": 12, "objectId": b.objectId, "jd": b.jd, "survey": "ZTF",
                         "probabilities": b.probabilities, "predicted": b.predicted, "model": b.model}]
    resumed = sink.build_part("slack", "slack", state)
    resumed.write_batch([a, b])  # both replayed after the resume: neither is posted twice
    assert resumed.wait_idle(10)
    resumed.close()
    assert [p["filename"] for p in slack.posts] == ["ZTF24aaaaaaa_11.png", "ZTF24bbbbbbb_12.png"]
    assert resumed.snapshot()["posted"] == [11, 12]


def test_slack_errors_are_logged_once_and_never_raised(slack, caplog):
    recs = [make_result(ZTF_TAXONOMY, f"ZTF24obj{i:04d}", i) for i in range(3)]
    sink = SlackSink(cfg(slack, token="xoxb-wrong"), ZTF_TAXONOMY)
    run_sink(sink, recs)  # does not raise
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "invalid_auth" in errors[0] and "SLACK_BOT_TOKEN is wrong" in errors[0]
    assert "xoxb-wrong" not in caplog.text
    assert sink.partition.snapshot()["posted"] == []
    # Unknown channel: said once too, with a hint.
    caplog.clear()
    sink = SlackSink(cfg(slack, ztf_channel="CNOPE"), ZTF_TAXONOMY)
    run_sink(sink, recs)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "channel_not_found" in errors[0]


def test_unreachable_slack_does_not_block_the_flow(caplog):
    dead = "http://127.0.0.1:9/api/"
    sink = SlackSink(SlackConfig(enabled=True, token=TOKEN, ztf_channel="C", base_url=dead, timeout=1,
                                 close_timeout=0.5), ZTF_TAXONOMY,
                     client=WebClient(token=TOKEN, base_url=dead, retry_handlers=[], logger=sdk_log))
    part = sink.build_part("slack", "slack", None)
    t0 = time.monotonic()
    part.write_batch([make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", i) for i in range(50)])
    assert time.monotonic() - t0 < 0.5  # the flow side only queues

    def errors():
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    while not errors() and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    t1 = time.monotonic()
    part.close()
    assert time.monotonic() - t1 < 2.0  # closing is bounded too
    (error,) = errors()  # once, from us, not once per attempt from slack_sdk
    assert "URLError" in error and "not affected" in error


def test_post_carries_fritz_link_and_classifications(slack):
    fritz_token = "fritz-token-abc"
    with FakeSkyPortal(token=fritz_token, sources=("ZTF24aaaaaaa",)) as fritz:
        fritz.classifications["ZTF24aaaaaaa"] = [{"classification": "SN Ia", "probability": 0.9}]
        client = FritzClient(FritzConfig(token=fritz_token, url=fritz.url, rate=100, burst=10))
        sink = SlackSink(cfg(slack), TAXONOMIES, fritz=client)
        run_sink(sink, [make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 5),
                        make_result(ZTF_TAXONOMY, "ZTF24zzzzzzz", 6)])
    saved, unsaved = slack.posts
    assert f"{fritz.url}/source/ZTF24aaaaaaa" in saved["initial_comment"]
    assert "Fritz classifications: SN Ia(0.9)" in saved["initial_comment"]
    assert f"{fritz.url}/alerts/ztf/ZTF24zzzzzzz" in unsaved["initial_comment"]
    assert "Fritz classifications" not in unsaved["initial_comment"]


def test_disabled_sink_posts_nothing(slack):
    sink = SlackSink(SlackConfig(enabled=False, token=TOKEN, ztf_channel="CZTF", base_url=slack.base_url),
                     ZTF_TAXONOMY)
    run_sink(sink, [make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 1)])
    assert slack.posts == [] and slack.requests == []
