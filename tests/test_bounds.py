"""The bounded structures of the flow (issue 28): the Slack and Fritz sinks register their
queues and caches with `operators.runtime.bounds` at their configured limits, the queues stay
at their bound when the service is slow or away, and the soak's verdict flags a structure
over its bound. Seconds, not volume: the soak (`bench/soak.py --downstreams slow`) has that."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from bench.soak import verdict
from models.oracle.taxonomy import ZTF_TAXONOMY
from operators.oracle.surveys import LSST, ZTF
from operators.runtime import bounds
from operators.sinks.fritz import FORBIDDEN_MAX, NOT_FOUND_MAX, FritzAnnotationSink, FritzConfig
from operators.sinks.fritz_client import ANNOTATION_IDS_MAX, CONTEXT_MAX, CONTEXT_READS_MAX
from operators.sinks.slack import SlackConfig, SlackSink
from tests.fakes import FakeSkyPortal, FakeSlack, make_result

FRITZ_TOKEN = "bounds-fritz-token-0123456789abcdef"
SLACK_TOKEN = "xoxb-bounds"


def grew(before: dict, after: dict, name: str) -> tuple[int, int]:
    """(items, limit) that `name` gained between two snapshots (other tests' objects may be alive)."""
    b = before.get(name, {"items": 0, "limit": 0})
    a = after.get(name, {"items": 0, "limit": 0})
    return a["items"] - b["items"], a["limit"] - b["limit"]


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def quiet_gc():
    """No collection of other tests' objects (their limits would leave the sums) mid-test."""
    gc.disable()
    yield
    gc.enable()


def test_slack_and_fritz_register_their_structures_at_their_limits_and_stay_within(quiet_gc):
    before = bounds.snapshot()
    with FakeSkyPortal(token=FRITZ_TOKEN) as fritz, FakeSlack(token=SLACK_TOKEN) as slack:
        fritz.delay = 1.0  # every request: the queue fills behind the one being sent
        slack.outage(3600.0)  # 503 to everything
        fcfg = FritzConfig(token=FRITZ_TOKEN, url=fritz.url, max_pending=5, workers=1, report_interval=3600.0)
        fsink = FritzAnnotationSink(fcfg, ZTF_TAXONOMY, close_timeout=0.0)
        fpart = fsink.build("fritz", 0, 1)
        scfg = SlackConfig(enabled=True, token=SLACK_TOKEN, ztf_channel="CZTF", base_url=slack.base_url,
                           max_pending=7, max_remembered=11, close_timeout=0.0, retry_base=0.05, retry_max=0.2)
        ssink = SlackSink(scfg, {"ZTF": ZTF, "LSST": LSST})
        spart = ssink.build_part("slack", "slack", None)
        try:
            registered = bounds.snapshot()
            assert grew(before, registered, "fritz_queue") == (0, 5 + 1)  # FRITZ_MAX_PENDING + FRITZ_WORKERS
            assert grew(before, registered, "fritz_not_found") == (0, NOT_FOUND_MAX)
            assert grew(before, registered, "fritz_forbidden") == (0, FORBIDDEN_MAX)
            assert grew(before, registered, "fritz_annotation_ids") == (0, ANNOTATION_IDS_MAX)
            assert grew(before, registered, "fritz_context") == (0, CONTEXT_MAX)
            assert grew(before, registered, "fritz_context_reads") == (0, CONTEXT_READS_MAX)
            assert grew(before, registered, "slack_queue") == (0, 7 + 1)  # max_pending + the one being posted
            assert grew(before, registered, "slack_posted") == (0, 11)
            assert "FRITZ_MAX_PENDING" in registered["fritz_queue"]["where"]
            assert "max_pending" in registered["slack_queue"]["where"]

            made = iter(range(10**6))

            def feed() -> None:  # 10 new objects and alerts to both sinks
                results = [make_result(ZTF_TAXONOMY, f"ZTF24{k:07d}", candid=k + 1, seed=k)
                           for k in (next(made) for _ in range(10))]
                fpart.write_batch(results)
                spart.write_batch(results)

            def full() -> bool:
                feed()
                now = bounds.snapshot()
                return grew(before, now, "fritz_queue")[0] == 6 and grew(before, now, "slack_queue")[0] == 8

            wait_for(full)  # Fritz: 5 waiting + 1 being sent; Slack: 7 waiting + 1 being retried
            for _ in range(5):  # and there they stay
                feed()
                now = bounds.snapshot()
                assert grew(before, now, "fritz_queue") == (6, 6)
                assert grew(before, now, "slack_queue") == (8, 8)
                time.sleep(0.1)
        finally:
            fpart.close()
            spart.close()
    assert spart.stats["dropped"] >= 60 - 8


def test_a_structure_measured_under_its_owners_lock():
    taken = []

    class Lock:
        def __enter__(self):
            taken.append("in")

        def __exit__(self, *exc):
            taken.append("out")

    held = _Sized([1, 2, 3])
    bounds.track("test_locked_structure", held, 4, Lock(), where="a test")
    assert bounds.snapshot()["test_locked_structure"] == {"items": 3, "limit": 4, "objects": 1, "where": "a test"}
    assert taken == ["in", "out"]
    del held
    gc.collect()
    assert "test_locked_structure" not in bounds.snapshot() or bounds.snapshot()["test_locked_structure"]["objects"] == 0


class _Sized(list):
    """A list that `bounds.track` can hold weakly."""


def test_the_soak_verdict_flags_a_structure_over_its_bound():
    grown = _Sized(range(5))
    bounds.track("test_leaky_structure", grown, 4, where="the test's limit")
    lock = threading.Lock()
    kept = _Sized(range(2))
    bounds.track("test_tidy_structure", kept, 4, lock)

    def sample(messages: int) -> dict:
        return {"messages": messages, "seconds": messages / 100, "rss_mb": 300.0, "recovery_bytes": 1000,
                "log_bytes": 0, "lag": 0, "bounds": {k: v for k, v in bounds.snapshot().items() if k.startswith("test_")}}

    report = {"n": 400, "partitions": 1, "samples": [sample(m) for m in (100, 200, 300, 400)]}
    v = verdict(report)
    assert not v["structures_within_bounds"]
    assert any(o.startswith("test_leaky_structure 5>4 at") for o in v["over_bounds"]), v["over_bounds"]
    assert not any(o.startswith("test_tidy_structure") for o in v["over_bounds"])
    assert v["bounds"]["test_leaky_structure"] == {"limit": 4, "where": "the test's limit", "max_items": 5}
    del grown[1:]
    report = {"n": 400, "partitions": 1, "samples": [sample(m) for m in (100, 200, 300, 400)]}
    assert verdict(report)["structures_within_bounds"]
