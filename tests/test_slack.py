"""Slack posts against a loopback fake of the files_upload_v2 contract."""

from __future__ import annotations

import io
import logging
import threading
import time

import matplotlib.image as mpimg
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
import bytewax.operators as op

from dataclasses import replace

from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY
from slack_sdk import WebClient

from operators.sinks.slack import (
    SlackConfig,
    SlackSink,
    format_message,
    make_client,
    object_link,
    post_alert,
    sdk_log,
    top_classes,
)
from operators.oracle.surveys import LSST, SURVEYS, ZTF
from tests.fakes import FakeSlack, make_result

TOKEN = "xoxb-very-secret-slack-token"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    assert c.enabled and c.channel_for(ZTF) == "C1" and c.channel_for(LSST) == ""
    assert c.min_leaf_probability == 0.6 and TOKEN not in repr(c)
    with pytest.raises(ValueError, match="SLACK_BOT_TOKEN"):
        SlackConfig.from_env({"POST_TO_SLACK": "1", "SLACK_ORACLE_CHANNEL_ID": "C1"})
    with pytest.raises(ValueError, match="true or false"):
        SlackConfig.from_env({"POST_TO_SLACK": "maybe"})


def test_message_has_object_top_classes_link_and_fritz_text():
    r = make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 42, favour="SN-Ia")
    link = object_link(ZTF, r.objectId, SlackConfig(fritz_url="https://fritz.example"))
    assert link == "https://fritz.example/alerts/ztf/ZTF24aaaaaaa"
    text = format_message(r, ZTF_TAXONOMY, link=link, site=ZTF.link_site,
                          fritz_classifications="SN Ia(0.9); AGN(None)")
    assert "ZTF24aaaaaaa" in text and link in text and "SN Ia(0.9); AGN(None)" in text
    assert f"Fritz: <{link}|ZTF24aaaaaaa>" in text
    (best, p), *_ = top_classes(r.probabilities, ZTF_TAXONOMY, 3)
    assert best == "SN-Ia" and f"SN-Ia {p:.2f}" in text
    lsst = make_result(LSST_TAXONOMY, "170000000001", 7, survey="LSST")
    assert object_link(LSST, lsst.objectId, SlackConfig()) == "https://babamul.caltech.edu/objects/LSST/170000000001"
    assert object_link(LSST, lsst.objectId, SlackConfig(babamul_url="https://b.example")) == \
        "https://b.example/objects/LSST/170000000001"


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


def test_sink_posts_each_survey_to_its_channel_once_and_filters(slack, caplog):
    caplog.set_level(logging.INFO, logger="operators.sinks.slack")
    recs = [
        make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 1, favour="SN-Ia"),
        make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 1, favour="SN-Ia"),  # replayed candid
        make_result(LSST_TAXONOMY, "170000000001", 2, survey="LSST", favour="TDE"),
        make_result(ZTF_TAXONOMY, "ZTF24bbbbbbb", 3, seed=5),  # unsure: below threshold
    ]
    assert max(p for _, p in top_classes(recs[3].probabilities, ZTF_TAXONOMY, 1)) < 0.9
    sink = SlackSink(cfg(slack, min_leaf_probability=0.9), SURVEYS)
    run_sink(sink, recs)
    assert [(p["channel"], p["filename"]) for p in slack.posts] == [
        ("CZTF", "ZTF24aaaaaaa_1.png"), ("CLSST", "170000000001_2.png")]
    assert "https://fritz.example/alerts/ztf/ZTF24aaaaaaa" in slack.posts[0]["initial_comment"]
    assert "https://babamul.caltech.edu/objects/LSST/170000000001" in slack.posts[1]["initial_comment"]
    for p in slack.posts:
        decode_png(p["data"])
    (summary,) = [r.getMessage() for r in caplog.records if "Slack posts this run" in r.getMessage()]
    assert "'posted': 2" in summary and "'already_posted': 1" in summary and "'below_threshold': 1" in summary


def test_recovered_state_prevents_reposting_and_resumes_pending(slack):
    sink = SlackSink(cfg(slack), SURVEYS)
    part = sink.build_part("slack", "slack", None)
    a = make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 11)
    part.write_batch([a])
    part.close()  # waits for the queue (SLACK close timeout)
    state = part.snapshot()
    assert state["posted"] == [11] and state["pending"] == []
    # A pending alert, as a snapshot taken before it was posted would hold it:
    b = make_result(ZTF_TAXONOMY, "ZTF24bbbbbbb", 12)
    state["pending"] = [{"candid": 12, "objectId": b.objectId, "jd": b.jd, "survey": "ZTF",
                         "probabilities": b.probabilities, "predicted": b.predicted, "model": b.model}]
    resumed = sink.build_part("slack", "slack", state)
    resumed.write_batch([a, b])  # both replayed after the resume: neither is posted twice
    resumed.close()
    assert [p["filename"] for p in slack.posts] == ["ZTF24aaaaaaa_11.png", "ZTF24bbbbbbb_12.png"]
    assert resumed.snapshot()["posted"] == [11, 12]


def test_errors_that_cannot_heal_stop_posting_with_one_line(slack, caplog):
    recs = [make_result(ZTF_TAXONOMY, f"ZTF24obj{i:04d}", i) for i in range(3)]
    sink = SlackSink(cfg(slack, token="xoxb-wrong"), ZTF)
    run_sink(sink, recs)  # does not raise
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "invalid_auth" in errors[0] and "SLACK_BOT_TOKEN is wrong" in errors[0]
    assert "Slack posting stopped" in errors[0] and "\n" not in errors[0]
    assert "xoxb-wrong" not in caplog.text
    assert slack.posts == []
    assert sum(r["path"].endswith("files.getUploadURLExternal") for r in slack.requests) == 1
    # Unknown channel: the same, with what to do.
    caplog.clear()
    sink = SlackSink(cfg(slack, ztf_channel="CNOPE"), ZTF)
    run_sink(sink, recs)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "channel_not_found" in errors[0] and "CNOPE" in errors[0]


def test_not_in_channel_stops_posting_after_one_message(caplog):
    with FakeSlack(token=TOKEN, channels=("CLSST",), not_member=("CZTF",)) as slack:
        sink = SlackSink(cfg(slack), ZTF)
        part = sink.build_part("slack", "slack", None)
        part.write_batch([make_result(ZTF_TAXONOMY, f"ZTF24obj{i:04d}", i) for i in range(5)])
        t0 = time.monotonic()
        while part.stopped is None and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        part.write_batch([make_result(ZTF_TAXONOMY, f"ZTF24new{i:04d}", 100 + i) for i in range(5)])
        part.close()
    assert part.stopped == "not_in_channel"
    completes = [r for r in slack.requests if r["path"].endswith("files.completeUploadExternal")]
    assert len(completes) == 1 and len(slack.unshared) == 1  # one unshared file, not one per alert
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "invite the bot" in errors[0] and "CZTF" in errors[0]
    assert part.stats["not_posted_stopped"] == 5 and slack.posts == []


def test_failed_byte_upload_is_retried_later(slack):
    slack.fail_uploads(2)  # slack_sdk does not retry the upload step itself
    sink = SlackSink(cfg(slack, retry_base=0.1), ZTF)
    part = sink.build_part("slack", "slack", None)
    part.write_batch([make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 1), make_result(ZTF_TAXONOMY, "ZTF24bbbbbbb", 2)])
    part.close()  # waits for the queue
    assert [p["filename"] for p in slack.posts] == ["ZTF24aaaaaaa_1.png", "ZTF24bbbbbbb_2.png"]
    assert part.stats["retries"] == 2 and part.snapshot()["posted"] == [1, 2]


@pytest.mark.slow
def test_a_60_s_slack_outage_loses_no_post(slack, caplog):
    sink = SlackSink(cfg(slack, retry_max=8.0, close_timeout=60.0), ZTF)
    part = sink.build_part("slack", "slack", None)
    # Slack is down a little longer than alerts keep coming, so the snapshot below is taken
    # while it is still down (a post that lands between the outage's end and the snapshot
    # would leave the pending list, as it should, and make the comparison a race).
    slack.outage(66.0)
    t0 = time.monotonic()
    candids = []
    while time.monotonic() - t0 < 60.0:  # alerts keep coming during the outage
        candids.append(len(candids) + 1)
        part.write_batch([make_result(ZTF_TAXONOMY, f"ZTF24obj{candids[-1]:04d}", candids[-1])])
        time.sleep(2.0)
    state = part.snapshot()  # what a recovery snapshot holds in the middle of the outage
    assert [a["candid"] for a in state["pending"]] == candids and state["posted"] == []
    part.close()  # waits for the queue, at most the default 60 s
    assert sorted(int(p["filename"].split("_")[1][:-4]) for p in slack.posts) == candids
    assert part.snapshot()["posted"] == candids
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "retried with backoff" in warnings[0]


def test_unreachable_slack_does_not_block_the_flow(caplog):
    dead = "http://127.0.0.1:9/api/"
    sink = SlackSink(SlackConfig(enabled=True, token=TOKEN, ztf_channel="C", base_url=dead, timeout=1,
                                 close_timeout=0.5), ZTF,
                     client=WebClient(token=TOKEN, base_url=dead, retry_handlers=[], logger=sdk_log))
    part = sink.build_part("slack", "slack", None)
    t0 = time.monotonic()
    part.write_batch([make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", i) for i in range(50)])
    assert len(part.snapshot()["pending"]) == 50  # the flow side only queues; nothing was sent from it

    def errors():
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    def warned():
        return [r for r in caplog.records if r.levelno == logging.WARNING]

    while not warned() and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    part.close()  # the retry pause ends on close; the poster thread is gone
    assert not [t for t in threading.enumerate() if t.name.startswith("slack-poster")]
    assert errors() == []  # a network failure is transient: retried, not an error
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "URLError" in warnings[0] and "retried" in warnings[0]
    assert len(part.snapshot()["pending"]) == 50  # kept for the next run (recovery state)


def test_post_carries_fritz_link_and_classifications(slack):
    # The flow's fritz_context step puts Fritz's context on the record; Slack makes no Fritz request.
    saved = replace(make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 5), fritz_classifications="SN Ia(0.9)",
                    fritz_ml_classifications="AGN(0.7)", fritz_link="https://fritz.example/source/ZTF24aaaaaaa")
    sink = SlackSink(cfg(slack), SURVEYS)
    run_sink(sink, [saved, make_result(ZTF_TAXONOMY, "ZTF24zzzzzzz", 6)])
    saved_post, unsaved_post = slack.posts
    assert "https://fritz.example/source/ZTF24aaaaaaa" in saved_post["initial_comment"]
    assert "Fritz classifications: SN Ia(0.9)" in saved_post["initial_comment"]
    assert "Fritz machine classifications: AGN(0.7)" in saved_post["initial_comment"]
    assert "https://fritz.example/alerts/ztf/ZTF24zzzzzzz" in unsaved_post["initial_comment"]
    assert "Fritz classifications" not in unsaved_post["initial_comment"]


def test_disabled_sink_posts_nothing(slack):
    sink = SlackSink(SlackConfig(enabled=False, token=TOKEN, ztf_channel="CZTF", base_url=slack.base_url),
                     ZTF)
    run_sink(sink, [make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 1)])
    assert slack.posts == [] and slack.requests == []
