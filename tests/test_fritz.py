"""Fritz annotations and context against a loopback SkyPortal fake."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
import bytewax.operators as op
from hypothesis import given, settings
from hypothesis import strategies as st

from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY
from operators.sinks.fritz import (
    AUTH_MESSAGE,
    FritzAnnotationSink,
    FritzAnnotator,
    FritzAuthError,
    FritzClient,
    FritzConfig,
    FritzContext,
    FritzError,
    FritzForbiddenError,
    FritzNotFoundError,
    TokenBucket,
    annotation_data,
    format_classifications,
    scrub,
    split_classifications,
)
from operators.sinks.coalescing import CoalescingQueue
from tests.fakes import NGINX_429, FakeSkyPortal, make_result

TOKEN = "s3cret-fritz-token-0123456789"
ZTF_ORDER = ["Persistent", "AGN", "CV", "Varstar", "Transient", "SN-Ia", "SN-II", "SN-Ib/c", "SLSN"]


def cfg(fake: FakeSkyPortal, token: str = TOKEN, **kw) -> FritzConfig:
    base = dict(token=token, url=fake.url, rate=200.0, burst=50, timeout=10.0, max_retries=4,
                backoff_factor=0.02, backoff_jitter=0.02, report_interval=3600.0)
    base.update(kw)
    return FritzConfig(**base)


@pytest.fixture
def fake():
    with FakeSkyPortal(token=TOKEN, sources=("ZTF24aaaaaaa", "ZTF24bbbbbbb", "ZTF24ccccccc"),
                       token_without_acl="no-acl-token-987") as f:
        yield f


@pytest.fixture(autouse=True)
def _debug_logs(caplog):
    caplog.set_level(logging.DEBUG)  # urllib3 and ours: the token must not show even at DEBUG
    yield
    assert TOKEN not in caplog.text
    assert "no-acl-token-987" not in caplog.text


# -- pure parts --------------------------------------------------------------


def test_annotation_data_is_preorder_without_root_and_rounded():
    probs = {n: 0.123456789 for n in ZTF_TAXONOMY.nodes}
    del probs["SN-Ia"]
    data = annotation_data(probs, ZTF_TAXONOMY)
    assert list(data) == ZTF_ORDER
    assert data["AGN"] == 0.1235 and data["SN-Ia"] is None
    assert list(annotation_data(probs, ZTF_TAXONOMY, decimals=2).values())[0] == 0.12


@settings(max_examples=50, deadline=None, database=None)
@given(st.lists(st.floats(-20, 20), min_size=26, max_size=26), st.sampled_from([ZTF_TAXONOMY, LSST_TAXONOMY]))
def test_annotation_data_property(logits, tax):
    p = tax.class_probabilities(np.array([logits[: len(tax)]]))[0]
    data = annotation_data(dict(zip(tax.nodes, p)), tax)
    assert list(data) == [tax.nodes[i] for i in tax.preorder]
    assert all(0.0 <= v <= 1.0 and v == round(v, 4) for v in data.values())
    assert abs(sum(data[tax.nodes[i]] for i in tax.leaves) - 1.0) < 1e-3 * len(tax.leaves)


def test_format_classifications():
    items = [{"classification": "SN Ia", "probability": 0.9}, {"classification": "AGN", "probability": None},
             {"probability": 1.0}]
    assert format_classifications(items) == "SN Ia(0.9); AGN(None)"
    assert format_classifications([]) == ""


def test_config_from_env_defaults_and_errors():
    c = FritzConfig.from_env({})
    assert not c.enabled and c.url == "https://fritz.science" and c.origin == "oracle_omni"
    assert c.group_ids == (1959,)
    c = FritzConfig.from_env({"FRITZ_TOKEN": TOKEN, "FRITZ_GROUP_IDS": "12, 34", "FRITZ_URL": "https://x/",
                              "FRITZ_ORIGIN": "oracle_test"})
    assert c.enabled and c.group_ids == (12, 34) and c.url == "https://x" and c.origin == "oracle_test"
    assert TOKEN not in repr(c)
    with pytest.raises(ValueError, match="never posted publicly"):
        FritzConfig.from_env({"FRITZ_TOKEN": TOKEN, "FRITZ_GROUP_IDS": " "})
    with pytest.raises(ValueError, match="integers"):
        FritzConfig.from_env({"FRITZ_TOKEN": TOKEN, "FRITZ_GROUP_IDS": "abc"})
    FritzConfig.from_env({"FRITZ_GROUP_IDS": ""})  # disabled: not an error


def test_plain_http_is_refused_unless_allowed_or_loopback():
    with pytest.raises(ValueError) as info:
        FritzConfig.from_env({"FRITZ_TOKEN": TOKEN, "FRITZ_URL": "http://fritz.example.org"})
    msg = str(info.value)
    assert "\n" not in msg and "FRITZ_URL" in msg and "FRITZ_ALLOW_INSECURE=true" in msg and TOKEN not in msg
    ok = FritzConfig.from_env({"FRITZ_TOKEN": TOKEN, "FRITZ_URL": "http://fritz.example.org",
                               "FRITZ_ALLOW_INSECURE": "true"})
    assert ok.url == "http://fritz.example.org"
    # The token never leaves this machine on loopback (tests, an SSH tunnel): allowed.
    for url in ("http://127.0.0.1:5000", "http://localhost:5000", "http://[::1]:5000"):
        assert FritzConfig.from_env({"FRITZ_TOKEN": TOKEN, "FRITZ_URL": url}).url == url
    FritzConfig.from_env({"FRITZ_URL": "http://fritz.example.org"})  # disabled: not an error


def test_scrub_removes_tokens_and_authorization_values():
    text = (f"Insufficient permissions: <Token {TOKEN}>; headers {{'Authorization': 'token {TOKEN}'}} "
            f"Authorization: Bearer xoxb-1234-abcdefghijklmnop and token 0123456789abcdef0123")
    out = scrub(text, (TOKEN,))
    assert TOKEN not in out and "xoxb-1234" not in out and "0123456789abcdef0123" not in out
    assert "Insufficient permissions" in out
    assert scrub("a short token word stays", ()) == "a short token word stays"


def test_split_classifications_people_and_machines():
    items = [{"classification": "SN Ia", "probability": 0.9, "ml": False, "author_name": "jdoe"},
             {"classification": "AGN", "probability": 0.7, "ml": True, "author_name": "acai_bot"},
             {"classification": "Ia", "probability": 1.0}]
    assert split_classifications(items) == ("SN Ia(0.9); Ia(1.0)", "AGN(0.7)")


def test_token_bucket_paces():
    b = TokenBucket(rate=50.0, burst=2)
    t0 = time.monotonic()
    for _ in range(7):
        b.acquire()
    assert time.monotonic() - t0 >= 5 / 50.0 * 0.9
    one = TokenBucket(1.0, 1)
    assert one.try_acquire() and not one.try_acquire()


def test_coalescing_queue_keeps_newest_and_position():
    q = CoalescingQueue(maxlen=2)
    q.put("a", 1, 1.0)
    q.put("b", 1, 1.0)
    q.put("a", 2, 2.0)
    q.put("a", 0, 0.5)  # older (by jd) than what waits: ignored
    assert q.get(0) == ("a", 2)
    q.put("a", 3, 3.0)  # "a" is busy: waits, not handed out twice
    assert q.get(0) == ("b", 1)
    assert q.get(0) is None
    q.done("a")
    assert q.get(0) == ("a", 3)
    q.put("c", 1)
    q.put("d", 1)
    q.put("e", 1)
    assert q.dropped == 1 and q.coalesced == 2


# -- the upsert contract -----------------------------------------------------------


def test_first_post_then_update_on_replay(fake):
    client = FritzClient(cfg(fake))
    r1 = client.upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.5})
    assert r1.action == "created"
    r2 = client.upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.75})
    assert r2.action == "updated" and r2.annotation_id == r1.annotation_id
    # A new process (no remembered id) replays: POST -> 400 exists -> GET -> PUT.
    fresh = FritzClient(cfg(fake))
    r3 = fresh.upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.9})
    assert r3 == r2.__class__("updated", r1.annotation_id)
    anns = fake.annotations_on("ZTF24aaaaaaa")
    assert len(anns) == 1
    assert anns[0]["data"] == {"SN-Ia": 0.9}
    assert anns[0]["origin"] == "oracle_omni" and anns[0]["group_ids"] == [1959]
    assert [c["method"] for c in fake.calls()] == ["POST", "PUT", "POST", "GET", "PUT"]
    assert all(c["auth"] == f"token {TOKEN}" for c in fake.calls())


def test_other_origins_are_left_alone(fake):
    FritzClient(cfg(fake, origin="someone_else")).upsert_annotation("ZTF24aaaaaaa", {"x": 1})
    FritzClient(cfg(fake)).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.1})
    FritzClient(cfg(fake)).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.2})
    by_origin = {a["origin"]: a["data"] for a in fake.annotations_on("ZTF24aaaaaaa")}
    assert by_origin == {"someone_else": {"x": 1}, "oracle_omni": {"SN-Ia": 0.2}}


@pytest.mark.parametrize("token", ["wrong-token-555", "no-acl-token-987"])
def test_auth_failure_says_so_without_the_token(fake, token):
    client = FritzClient(cfg(fake, token=token))
    with pytest.raises(FritzAuthError) as info:
        client.upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.5})
    msg = str(info.value)
    assert "401" in msg and "Annotate" in msg and "403" in msg
    assert token not in msg and token not in repr(info.value)


def test_unknown_object_is_404_and_an_unsaved_one_is_annotated(fake):
    with pytest.raises(FritzNotFoundError, match="Fritz has no object ZTF24zzzzzzz"):
        FritzClient(cfg(fake)).upsert_annotation("ZTF24zzzzzzz", {"SN-Ia": 0.5})
    fake.objects.add("ZTF24known00")  # known to Fritz, not saved as a source
    client = FritzClient(cfg(fake))
    assert client.upsert_annotation("ZTF24known00", {"SN-Ia": 0.5}).action == "created"
    assert client.get_annotations("ZTF24zzzzzzz") == []  # 200 [], not 404
    assert client.get_classifications("ZTF24zzzzzzz") == []


def test_annotation_by_another_user_is_forbidden_with_the_real_cause(fake):
    other = fake.add_user("older-token-0123456789", "oracle_bot_2023", {1959, 1}, {"Annotate"})
    aid = fake.annotate_as(other, "ZTF24aaaaaaa", "oracle_omni", {"SN-Ia": 0.1}, [1959])
    with pytest.raises(FritzForbiddenError) as info:
        FritzClient(cfg(fake)).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.5})
    msg = str(info.value)
    assert "only an annotation's author" in msg and str(aid) in msg and "FRITZ_ORIGIN" in msg
    assert TOKEN not in msg and "group" not in msg.split("SkyPortal")[1].lower()  # no blame on groups
    assert fake.annotations[aid]["data"] == {"SN-Ia": 0.1}


def test_annotation_invisible_to_a_bot_outside_the_groups(caplog):
    # The bot is not a member of group 1959: the POST works, but GET never shows the annotation.
    with FakeSkyPortal(token=TOKEN, sources=("ZTF24aaaaaaa",), bot_groups=()) as f:
        first = FritzClient(cfg(f))
        assert first.upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.1}).action == "created"
        assert first.upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.2}).action == "updated"  # remembered id
        with pytest.raises(FritzForbiddenError, match="cannot see it.*not a member of FRITZ_GROUP_IDS=1959"):
            FritzClient(cfg(f)).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.3})  # after a restart
        account = FritzClient(cfg(f)).verify_account()
        assert account.username == "oracle_bot" and 1959 not in account.group_ids


def test_a_failed_put_on_a_remembered_id_gets_then_puts(fake):
    client = FritzClient(cfg(fake))
    aid = client.upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.1}).annotation_id
    client._remember_id("ZTF24aaaaaaa", 99999)  # e.g. deleted and re-created on Fritz meanwhile
    n = len(fake.calls())
    assert client.upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.2}) == client.upsert_annotation(
        "ZTF24aaaaaaa", {"SN-Ia": 0.2}).__class__("updated", aid)
    assert [c["method"] for c in fake.calls()[n:]] == ["PUT", "GET", "PUT", "PUT"]


def test_echoed_token_never_reaches_an_error(fake):
    with pytest.raises(FritzError) as info:
        FritzClient(cfg(fake, group_ids=(1959, 424242))).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.5})
    msg = str(info.value)
    assert info.value.status == 400 and "424242" in msg and "FRITZ_GROUP_IDS" in msg
    assert "has no access" in msg and TOKEN not in msg  # the server quoted it; we did not


def test_429_with_retry_after_is_retried(fake):
    fake.fail_next(1, 429, {"Retry-After": "1"}, {"status": "error", "message": "rate limited"})
    t0 = time.monotonic()
    r = FritzClient(cfg(fake)).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.5})
    assert r.action == "created"
    assert time.monotonic() - t0 >= 0.95  # honoured Retry-After
    assert len(fake.calls("POST")) == 2


def test_429_without_retry_after_backs_off_from_the_base(fake):
    # SkyPortal's nginx answers 429 with an HTML page and no Retry-After.
    fake.fail_next(2, 429, {}, NGINX_429)
    t0 = time.monotonic()
    r = FritzClient(cfg(fake, backoff_429=0.3)).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.5})
    assert r.action == "created"
    assert time.monotonic() - t0 >= 0.3 + 0.6  # 0.3 s, then 0.6 s (plus jitter)
    assert len(fake.calls("POST")) == 3


def test_burst_of_500s_is_retried_then_succeeds(fake):
    fake.fail_next(3, 500)
    r = FritzClient(cfg(fake)).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.5})
    assert r.action == "created" and len(fake.calls("POST")) == 4
    assert len(fake.annotations_on("ZTF24aaaaaaa")) == 1


def test_500s_beyond_the_retry_budget_fail_cleanly(fake):
    fake.fail_next(10, 503)
    with pytest.raises(FritzError) as info:
        FritzClient(cfg(fake, max_retries=2)).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.5})
    assert info.value.status == 503 and TOKEN not in str(info.value)
    assert len(fake.calls("POST")) == 3


def test_timeout_is_retried_and_stays_idempotent(fake):
    fake.slow_next(1, 0.6)  # the first POST lands on the server, but too late for the client
    r = FritzClient(cfg(fake, timeout=0.25)).upsert_annotation("ZTF24aaaaaaa", {"SN-Ia": 0.5})
    assert r.action in ("created", "updated")
    time.sleep(0.5)  # let the stalled request finish on the server
    anns = fake.annotations_on("ZTF24aaaaaaa")
    assert len(anns) == 1 and anns[0]["data"] == {"SN-Ia": 0.5}


def test_unreachable_server_is_an_error_not_a_hang():
    c = FritzConfig(token=TOKEN, url="http://127.0.0.1:9", timeout=0.5, max_retries=1,
                    backoff_factor=0.01, backoff_jitter=0.0)
    with pytest.raises(FritzError) as info:
        FritzClient(c).upsert_annotation("ZTF24aaaaaaa", {"a": 1})
    assert TOKEN not in str(info.value)


# -- pacing, coalescing, background sender -----------------------------------------


def test_client_pacing_keeps_under_server_limit():
    # The server allows 20/s with a burst of 4: 10 unpaced requests would get 429s.
    with FakeSkyPortal(token=TOKEN, sources=tuple(f"ZTF24obj{i:04d}" for i in range(10)),
                       rate=(20.0, 4)) as f:
        client = FritzClient(cfg(f, rate=10.0, burst=2))
        t0 = time.monotonic()
        for i in range(10):
            client.upsert_annotation(f"ZTF24obj{i:04d}", {"SN-Ia": 0.1})
        elapsed = time.monotonic() - t0
    assert f.rejected_429 == 0
    assert elapsed >= (10 - 2) / 10.0 * 0.9


def test_annotator_coalesces_per_object_and_reports_backlog(fake, caplog):
    client = FritzClient(cfg(fake, rate=10.0, burst=1, workers=1, report_interval=0.0))
    annotator = FritzAnnotator(client)
    objs = ["ZTF24aaaaaaa", "ZTF24bbbbbbb", "ZTF24ccccccc"]
    for k in range(30):
        annotator.submit(objs[k % 3], {"SN-Ia": k / 100}, jd=2460000.0 + k)
    assert annotator.flush(10.0)
    annotator.close(1.0)
    writes = fake.calls("POST") + fake.calls("PUT")
    assert len(writes) < 15  # 30 classifications, far fewer requests
    for j, obj in enumerate(objs):
        (ann,) = fake.annotations_on(obj)
        assert ann["data"] == {"SN-Ia": (27 + j) / 100}  # the newest of each object
    assert annotator.stats["created"] == 3
    assert "Fritz backlog" in caplog.text


def test_sink_in_a_dataflow(fake, caplog):
    recs = [make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 1, seed=1, jd=1.0),
            make_result(ZTF_TAXONOMY, "ZTF24aaaaaaa", 2, seed=2, jd=2.0),
            make_result(ZTF_TAXONOMY, "ZTF24zzzzzzz", 3, seed=3),  # not saved on Fritz
            make_result(LSST_TAXONOMY, "170000000001", 4, seed=4, survey="LSST")]
    sink = FritzAnnotationSink(cfg(fake), ZTF_TAXONOMY, surveys=("ZTF",))  # records of other surveys skipped
    flow = Dataflow("fritz_test")
    s = op.input("in", flow, TestingSource(recs))
    op.output("fritz", s, sink)
    run_main(flow)
    (ann,) = fake.annotations_on("ZTF24aaaaaaa")
    assert list(ann["data"]) == ZTF_ORDER
    assert ann["data"]["SN-Ia"] == round(recs[1].probabilities["SN-Ia"], 4)
    assert not any("170000000001" in c["path"] for c in fake.calls())
    assert "'not_found': 1" in caplog.text


def test_forbidden_object_is_reported_once_and_not_retried(fake, caplog):
    other = fake.add_user("older-token-0123456789", "oracle_bot_2023", {1959, 1}, {"Annotate"})
    fake.annotate_as(other, "ZTF24aaaaaaa", "oracle_omni", {"SN-Ia": 0.1}, [1959])
    annotator = FritzAnnotator(FritzClient(cfg(fake, workers=1)))
    for k in range(4):
        annotator.submit("ZTF24aaaaaaa", {"SN-Ia": k / 10}, jd=float(k))
        annotator.submit("ZTF24bbbbbbb", {"SN-Ia": k / 10}, jd=float(k))
        assert annotator.flush(10.0)
    annotator.close(1.0)
    said = [r for r in caplog.records if "ZTF24aaaaaaa" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(said) == 1 and "only an annotation's author" in said[0].getMessage()
    assert annotator.stats["forbidden"] == 1 and annotator.stats["skipped_forbidden"] == 3
    assert len([c for c in fake.calls("PUT") if "ZTF24aaaaaaa" in c["path"]]) == 1
    assert fake.annotations_on("ZTF24bbbbbbb")[0]["data"] == {"SN-Ia": 0.3}


def test_sink_survives_a_bad_token_and_says_it_once(fake, caplog):
    recs = [make_result(ZTF_TAXONOMY, o, i, seed=i) for i, o in
            enumerate(["ZTF24aaaaaaa", "ZTF24bbbbbbb", "ZTF24ccccccc"])]
    sink = FritzAnnotationSink(cfg(fake, token="wrong-token-555"), ZTF_TAXONOMY)
    flow = Dataflow("fritz_bad_token")
    s = op.input("in", flow, TestingSource(recs))
    op.output("fritz", s, sink)
    run_main(flow)  # does not raise
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage() == AUTH_MESSAGE
    assert "wrong-token-555" not in caplog.text
    assert fake.annotations == {}


def test_disabled_sink_is_a_noop(fake):
    # Everything but the token points at a live fake: without a token not one request goes out.
    sink = FritzAnnotationSink(cfg(fake, token=""), ZTF_TAXONOMY)
    part = sink.build("s", 0, 1)
    part.write_batch([make_result(ZTF_TAXONOMY)])
    part.close()
    assert fake.calls() == [] and fake.annotations == {}


# -- context for people --------------------------------------------------------------


def test_context_link_classifications_and_cache(fake):
    fake.classifications["ZTF24aaaaaaa"] = [
        {"classification": "SN Ia", "probability": 0.9, "origin": "x", "ml": False, "author_name": "jdoe"},
        {"classification": "AGN", "probability": None, "ml": False},
        {"classification": "Varstar", "probability": 0.8, "ml": True, "author_name": "some_classifier"}]
    client = FritzClient(cfg(fake, context_ttl=60.0))
    ctx = client.context("ZTF24aaaaaaa", timeout=5.0)
    assert ctx == FritzContext("SN Ia(0.9); AGN(None)", f"{fake.url}/source/ZTF24aaaaaaa", True, "Varstar(0.8)")
    # The light request for existence: HEAD, never the full source endpoint.
    assert [c["method"] for c in fake.calls() if c["parts"][-1] == "ZTF24aaaaaaa"] == ["HEAD"]
    n = len(fake.calls())
    assert client.context("ZTF24aaaaaaa", timeout=5.0) == ctx
    assert len(fake.calls()) == n  # cached
    other = client.context("ZTF24zzzzzzz", timeout=5.0)
    assert other == FritzContext("", f"{fake.url}/alerts/ztf/ZTF24zzzzzzz", False)


def test_context_never_blocks_nor_raises(fake):
    fake.delay = 1.5
    client = FritzClient(cfg(fake))
    fake.classifications["ZTF24aaaaaaa"] = [{"classification": "SN Ia", "probability": 0.9, "ml": False}]
    ctx = client.context("ZTF24aaaaaaa", timeout=0.05)
    assert ctx.classifications == "" and ctx.link.endswith("/alerts/ztf/ZTF24aaaaaaa")  # not waited for
    later = client.context("ZTF24aaaaaaa", timeout=30.0)  # the same read, finished in the background
    assert later.classifications == "SN Ia(0.9)"
    fake.delay = 0.0
    fake.fail_next(20, 500)
    bad = FritzClient(cfg(fake, max_retries=1)).context("ZTF24bbbbbbb", timeout=5.0)
    assert bad.classifications == "" and bad.exists is None
    auth = FritzClient(cfg(fake, token="wrong-token-555")).context("ZTF24ccccccc", timeout=5.0)
    assert auth.classifications == ""


def test_a_context_read_that_cannot_finish_in_time_is_not_waited_for(fake):
    """Fritz slow and reads queued: the caller gets the empty context at once, not after its whole
    timeout (a batch of new objects would otherwise cost the flow `timeout` each, issue 28)."""
    fake.delay = 0.5  # a read (HEAD + GET) takes 1 s; 2 readers
    client = FritzClient(cfg(fake))
    objects = [f"ZTF24q{k:06d}" for k in range(10)]
    for o in objects:
        client.context(o, timeout=0.0)  # queued: 5 rounds of 1 s
    t = time.monotonic()
    ctx = client.context(objects[-1], timeout=2.0)
    waited = time.monotonic() - t
    assert ctx.classifications == "" and ctx.exists is None and waited < 1.0, waited
    fake.delay = 0.0
    client.stop_reads()


# -- check before a night ----------------------------------------------------------


def test_check_verifies_token_acl_and_group_membership(fake):
    from dataflows.__main__ import check_fritz

    env = {"FRITZ_TOKEN": TOKEN, "FRITZ_URL": fake.url}
    ok = check_fritz(env)
    assert ok.ok and "oracle_bot" in ok.detail and "1959" in ok.detail, ok.line()
    with FakeSkyPortal(token=TOKEN, bot_groups=(7,), groups=(1959, 7)) as outside:
        bad = check_fritz({"FRITZ_TOKEN": TOKEN, "FRITZ_URL": outside.url, "FRITZ_GROUP_IDS": "7,1959"})
    assert not bad.ok and "not a member of group(s) 1959" in bad.detail and "FRITZ_GROUP_IDS" in bad.fix
    refused = check_fritz({"FRITZ_TOKEN": "wrong-token-555", "FRITZ_URL": fake.url})
    assert not refused.ok and "401" in refused.detail and "wrong-token-555" not in refused.line()
    reader = check_fritz({"FRITZ_TOKEN": "no-acl-token-987", "FRITZ_URL": fake.url})
    assert not reader.ok and "Annotate" in reader.detail
    insecure = check_fritz({"FRITZ_TOKEN": TOKEN, "FRITZ_URL": "http://fritz.example.org"})
    assert not insecure.ok and "FRITZ_ALLOW_INSECURE" in insecure.detail
