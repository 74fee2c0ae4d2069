"""`MongoStore` logic without a server: retries, backoff, errors, secrets, documents."""

from __future__ import annotations

import logging

import pytest
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure, ServerSelectionTimeoutError

from operators.oracle import mongo_store
from operators.runtime.config import ConfigError, MongoSettings
from operators.oracle.mongo_store import MongoStore, StoreUnavailable, _unflatten, projection, redact
from operators.oracle.store import Collections

PASSWORD = "s3cr3t/p@ss"
C = Collections(alerts="A", aux="X", cutouts="C", alert_fields=("objectId", "candidate.jd", "candidate.fid"),
                aux_fields=("prv_candidates",))


class FakeCollection:
    def __init__(self, name, client):
        self.name, self.client = name, client

    def find(self, flt, proj, batch_size=None):
        self.client.calls.append((self.name, flt, proj, batch_size))
        if self.client.failures:
            raise self.client.failures.pop(0)
        keys = flt["_id"]["$in"]
        return [dict(self.client.data[self.name][k]) for k in keys if k in self.client.data[self.name]]


class FakeClient:
    def __init__(self, data, failures=()):
        self.data, self.failures, self.calls = data, list(failures), []

    def __getitem__(self, db):
        client = self

        class DB:
            def __getitem__(self, coll):
                return FakeCollection(coll, client)

            def command(self, name):
                return {"ok": 1}

        return DB()


DATA = {
    "A": {1: {"_id": 1, "objectId": "o1", "candidate.jd": 2.5, "candidate.fid": 1}, 2: {"_id": 2, "objectId": "o2",
                                                                                       "candidate": {"jd": 3.0}}},
    "X": {"o1": {"_id": "o1", "prv_candidates": []}},
    "C": {1: {"_id": 1, "cutoutTemplate": b"x"}},
}


def settings(**kw):
    base = dict(database="boom", uri=f"mongodb://user:{PASSWORD}@db.example:27017/?authSource=admin", retries=4)
    base.update(kw)
    return MongoSettings(**base)


def store(failures=(), **kw):
    sleeps: list[float] = []
    client = FakeClient(DATA, failures)
    s = MongoStore(settings(**kw), C, client=client, backoff_initial_s=0.1, backoff_max_s=0.3, sleep=sleeps.append)
    return s, client, sleeps


def test_fetch_asks_each_collection_once_with_the_projection():
    s, client, _ = store()
    docs = s.fetch([1, 2, 1, 3], ["o1", "o1", "o9"], with_cutouts=True)
    assert [c[0] for c in client.calls] == ["A", "X", "C"]
    assert client.calls[0][1] == {"_id": {"$in": [1, 2, 3]}}  # deduplicated, order kept
    assert client.calls[0][2] == {"objectId": 1, "candidate.jd": 1, "candidate.fid": 1}
    assert client.calls[0][3] == 3  # the whole answer in the first batch
    assert client.calls[2][2] == {"cutoutTemplate": 1}
    assert docs.alerts[1] == {"_id": 1, "objectId": "o1", "candidate": {"jd": 2.5, "fid": 1}}
    assert docs.alerts[2]["candidate"] == {"jd": 3.0}
    assert set(docs.aux) == {"o1"} and set(docs.cutouts) == {1}


def test_no_cutout_query_without_cutouts_and_no_query_for_nothing():
    s, client, _ = store()
    s.fetch([1], [], with_cutouts=False)
    assert [c[0] for c in client.calls] == ["A"]


def test_retries_with_growing_jittered_backoff_and_resumes_where_it_failed(caplog):
    caplog.set_level(logging.WARNING)
    s, client, sleeps = store(failures=[AutoReconnect("down"), NetworkTimeout("slow"), ServerSelectionTimeoutError("x")])
    docs = s.fetch([1], ["o1"], with_cutouts=False)
    assert set(docs.alerts) == {1} and set(docs.aux) == {"o1"}
    assert len(sleeps) == 3
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2 and 0.15 <= sleeps[2] <= 0.3
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3
    assert "retry 3/3" in caplog.records[-1].getMessage()


def test_collections_already_answered_are_not_asked_again():
    s, client, _ = store()
    client.failures = []
    original = FakeCollection.find
    state = {"n": 0}

    def flaky(self, flt, proj, batch_size=None):
        state["n"] += 1
        if self.name == "X" and state["n"] == 2:
            raise AutoReconnect("lost")
        return original(self, flt, proj, batch_size)

    FakeCollection.find = flaky
    try:
        s.fetch([1], ["o1"], with_cutouts=False)
    finally:
        FakeCollection.find = original
    assert [c[0] for c in client.calls] == ["A", "X"]  # A once, X on its retry
    assert state["n"] == 3


def test_gives_up_after_the_bound_without_leaking_the_password(caplog):
    caplog.set_level(logging.DEBUG)
    errors = [AutoReconnect(f"db.example:27017 refused for user:{PASSWORD}") for _ in range(10)]
    s, client, sleeps = store(failures=errors, retries=3)
    with pytest.raises(StoreUnavailable) as info:
        s.fetch([1], ["o1"], with_cutouts=False)
    assert len(client.calls) == 3 and len(sleeps) == 2
    msg = str(info.value)
    assert "3 attempts" in msg and "mongodb://***@db.example:27017" in msg and "Check" in msg
    assert PASSWORD not in msg and PASSWORD not in caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_refused_credentials_are_not_retried():
    s, client, sleeps = store(failures=[OperationFailure("Authentication failed.", code=18)])
    with pytest.raises(StoreUnavailable, match="credentials"):
        s.fetch([1], [], with_cutouts=False)
    assert sleeps == []


def test_other_operation_failures_propagate():
    s, _, sleeps = store(failures=[OperationFailure("bad projection", code=2)])
    with pytest.raises(OperationFailure):
        s.fetch([1], [], with_cutouts=False)
    assert sleeps == []


def test_redact_covers_plain_and_url_encoded_secrets():
    st = settings()
    text = f"mongodb://user:{PASSWORD}@h/ user%3A{'s3cr3t%2Fp%40ss'} {PASSWORD}"
    out = redact(text, st)
    assert PASSWORD not in out and "s3cr3t%2Fp%40ss" not in out
    st2 = MongoSettings(database="b", host="h", username="u", password=PASSWORD)
    assert PASSWORD not in redact(st2.client_uri(), st2)


def test_invalid_uri_is_a_config_error_without_the_password():
    with pytest.raises(ConfigError) as info:
        MongoStore(settings(uri=f"mongodb://user:{PASSWORD}@db.example:notaport/"), C)
    assert PASSWORD not in str(info.value) and "MONGODB_URI" in str(info.value)


def test_one_shared_client_per_uri_closed_by_the_last_store():
    st = settings(uri="mongodb://127.0.0.1:1/", timeout_ms=100)
    a, b = MongoStore(st, C), MongoStore(st, C)
    assert a._client is b._client
    other = MongoStore(settings(uri="mongodb://127.0.0.2:1/", timeout_ms=100), C)
    assert other._client is not a._client
    a.close()
    a.close()  # idempotent
    assert mongo_store._client_key(st) in mongo_store._clients
    b.close()
    other.close()
    assert mongo_store._client_key(st) not in mongo_store._clients


def test_unflatten_and_projection():
    assert _unflatten({"_id": 1, "a.b": 1, "a.c.d": 2, "e": 3}) == {"_id": 1, "a": {"b": 1, "c": {"d": 2}}, "e": 3}
    nested = {"_id": 1, "a": {"b": 1}}
    assert _unflatten(nested) is nested
    assert projection(("x", "y.z")) == {"x": 1, "y.z": 1}
