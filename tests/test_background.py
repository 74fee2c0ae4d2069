"""The bounded background sender Fritz and Slack share: order, retries, stop, bound, close."""

from __future__ import annotations

import threading

from operators.sinks.background import STOP, BackgroundSender


def test_one_worker_sends_in_order_and_retries_the_head_before_the_rest():
    sent, attempts = [], {}

    def send(key, value):
        attempts[key] = attempts.get(key, 0) + 1
        if key == "a" and attempts[key] < 3:
            return 0.01  # not yet: the same item again, the others wait behind it
        sent.append((key, value))
        return None

    sender = BackgroundSender("t", send, max_pending=10)
    for key in "abc":
        sender.submit(key, key.upper())
    assert sender.flush(30)
    assert sender.close(5) == 0
    assert sent == [("a", "A"), ("b", "B"), ("c", "C")] and attempts["a"] == 3


def test_stop_keeps_the_item_and_everything_behind_it():
    gate = threading.Event()

    def send(key, value):
        gate.wait(30)
        return STOP if key == 2 else None

    sender = BackgroundSender("t", send, max_pending=10)
    for k in (1, 2, 3, 4):
        sender.submit(k, f"v{k}")
    gate.set()
    assert sender.flush(30)  # returns once sending stopped, with items left
    assert sender.stopped and sender.pending() == ["v2", "v3", "v4"] and 3 in sender
    assert sender.close(1) == 3


def test_the_queue_is_bounded_and_says_what_it_dropped():
    gate = threading.Event()
    sender = BackgroundSender("t", lambda k, v: gate.wait(30) and None, max_pending=2)
    sender.submit("busy", 0)
    while len(sender.queue):  # wait until the worker holds "busy"
        threading.Event().wait(0.01)
    dropped = [d for k in ("x", "y", "z") for d in sender.submit(k, k)]
    assert dropped == [("x", "x")] and sender.pending() == [0, "y", "z"]
    gate.set()
    assert sender.close(30) == 0


def test_close_ends_a_retry_pause():
    started = threading.Event()

    def send(key, value):
        started.set()
        return 3600.0  # an hour's pause: only close can end it

    sender = BackgroundSender("pause-test", send, max_pending=10)
    sender.submit("k", "v")
    assert started.wait(30)
    assert sender.close(0.1) == 1  # the item is left, and the call came back
    assert not [t for t in threading.enumerate() if t.name.startswith("pause-test")]


def test_a_delivery_counts_what_it_drops_as_a_prometheus_counter():
    """Past its bound a delivery drops the oldest: `alertflow_delivery_dropped_total{sink}` says how
    many (docs/reliability.md, what is kept and what is dropped), so an operator can alert on it."""
    from types import SimpleNamespace

    from prometheus_client import REGISTRY

    from operators.sinks.background import Delivery

    gate = threading.Event()

    class Slow(Delivery):
        service = "Slack"

        def send(self, key, value):
            gate.wait(30)

    labels = {"flow": "oracle_lsst", "survey": "LSST", "sink": "slack"}
    before = REGISTRY.get_sample_value("alertflow_delivery_dropped_total", labels) or 0.0
    delivery = Slow("t", max_pending=2)
    delivery.submit("busy", SimpleNamespace(survey="LSST"))
    while len(delivery.sender.queue):  # the worker holds "busy"
        threading.Event().wait(0.01)
    dropped = [d for k in "vwxyz" for d in delivery.submit(k, SimpleNamespace(survey="LSST"))]
    assert [k for k, _ in dropped] == ["v", "w", "x"]
    assert REGISTRY.get_sample_value("alertflow_delivery_dropped_total", labels) - before == 3
    gate.set()
    assert delivery.close(30) == 0
