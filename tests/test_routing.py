"""Batch keys and bytewax's routing (operators/runtime/routing.py).

The keys are chosen with a re-implementation of the hash bytewax 0.21.1 routes keyed
steps with (Rust's SipHash-1-3). These tests check that prediction against bytewax
itself: a keyed step in a real multi-worker run records which worker thread each key
reached."""

from __future__ import annotations

import threading
from collections import Counter

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main

from operators.oracle.messages import FilterResult
from operators.oracle.steps import shard_of
from operators.io.deadletter import Origin
from operators.runtime.routing import Cluster, batch_keys, siphash13, worker_of


def test_siphash13_matches_the_reference_vectors():
    # SipHash-1-3 outputs of the reference implementation (github.com/veorq/SipHash), as
    # other projects' test suites list them: zero key (bytewax's hasher), messages
    # 0x00.. of length 0 and 1 and two strings; key 0x00..0x0f (Rust's own sip tests).
    assert siphash13(b"") == 0xD1FBA762150C532C
    assert siphash13(bytes(range(1))) == 0x68A914128E01E473
    assert siphash13(b"siphash") == 0x8264CEECCB16BCBE
    assert siphash13(b"digest-sip_hash") == 0xCE31007E34130C0A  # 15 bytes: one full block and a tail
    key = bytes(range(16))
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    assert siphash13(b"", k0, k1) == 0xABAC0158050FC4DC
    assert siphash13(bytes(range(1)), k0, k1) == 0xC9F49BF37D57CA93


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_keys_reach_the_worker_bytewax_routes_them_to(workers):
    keys = [str(j) for j in range(40)] + ["out", "7.3", "a-longer-key-than-eight-bytes"]
    flow = Dataflow("routing_probe")
    items = op.input("in", flow, TestingSource([(k, None) for k in keys]))
    seen = op.stateful_map("where", items, lambda state, _: (state, threading.get_ident()))
    got: list = []
    op.output("out", seen, TestingSink(got))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    planned_by_thread: dict[int, set] = {}
    for key, thread in got:
        planned_by_thread.setdefault(thread, set()).add(worker_of(key, workers))
    assert len(got) == len(keys)
    # every thread received the keys of exactly one planned worker, and every planned worker is one thread
    assert all(len(planned) == 1 for planned in planned_by_thread.values()), planned_by_thread
    assert len(planned_by_thread) == len({worker_of(k, workers) for k in keys})


def test_batch_keys_stay_in_the_process_that_read_the_alerts_when_it_has_a_partition():
    for process_id in (0, 1):
        keys = batch_keys(None, Cluster(workers_per_process=1, processes=2, process_id=process_id), partitions=4)
        assert [worker_of(k, 2) for k in keys] == [process_id]
    keys = batch_keys(8, Cluster(workers_per_process=2, processes=2, process_id=1), partitions=2)
    assert Counter(worker_of(k, 4) for k in keys) == {2: 4, 3: 4}


def test_batch_keys_spread_over_every_worker_when_a_process_has_no_partition():
    keys = batch_keys(None, Cluster(workers_per_process=1, processes=2, process_id=0), partitions=1)
    assert sorted(worker_of(k, 2) for k in keys) == [0, 1]
    keys = batch_keys(32, Cluster(workers_per_process=3, processes=1), partitions=1)
    assert Counter(worker_of(k, 3) for k in keys) == {0: 11, 1: 11, 2: 10}
    assert len(set(keys)) == 32


def test_without_a_bytewax_run_the_keys_are_plain():
    assert batch_keys(None, None, None) == tuple(str(j) for j in range(32))
    assert batch_keys(3, None, 7) == ("0", "1", "2")


def test_candids_with_structure_spread_evenly_over_the_keys():
    origin = Origin(topic="t", partition=0, offset=0)
    alerts = [FilterResult(candid=2_900_000_000_000_000_000 + 2 * i, objectId="x", jd=0.0, ra=0.0, dec=0.0,
                           filters=frozenset(), origin=origin) for i in range(20_000)]  # even candids only
    counts = Counter(shard_of(("a", "b"), a) for a in alerts)
    assert abs(counts["a"] - counts["b"]) < 0.03 * len(alerts), counts
