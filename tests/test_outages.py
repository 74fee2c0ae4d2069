"""Outages: MongoDB stopped mid-run, the Kafka broker unreachable mid-run.
The flow pauses, says so, resumes, and every alert still gets exactly one row."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from operators.runtime.config import KafkaSettings
from operators.samples.load import iter_repeated, load
from operators.oracle.results import read_results
from operators.oracle.surveys import ZTF
from tests.conftest import free_port, tansu_binary
from tests.test_kafka_flow import SAMPLE, expected_outcome, flow_env, start_flow, stop, wait_for

pytestmark = pytest.mark.services


def test_mongodb_outage_pauses_the_flow_and_skips_nothing(tmp_path, kafka, create_topic, restartable_mongo):
    topic = create_topic("ztf_mongo_outage", partitions=1)
    mongo = restartable_mongo
    sample = replace(SAMPLE, cutouts=[])  # nx-27017's on-disk store cannot hold raw bytes; BTSv2 needs none
    ksettings = KafkaSettings(brokers=(kafka.bootstrap,), topic=topic, group_id="x", starting_offset="beginning")
    load(sample, ZTF.collections, mongo.settings("boom"), ksettings, partitions=1)
    load(sample, ZTF.collections, mongo.settings("boom"), None, repeat=2, broken=True)  # documents of what comes later
    first = [m.value() for m in kafka.read(topic, len(SAMPLE.messages))]
    env = flow_env(tmp_path, kafka, topic, mongo.uri, "boom", MONGODB_TIMEOUT_MS=1000)
    proc = start_flow(env, log=tmp_path / "flow.log")
    try:
        rows1, bad1 = expected_outcome(first)
        wait_for(tmp_path / "results", len(rows1), bad1, [proc])
        mongo.stop()
        # More alerts arrive while the database is down (their documents were loaded before).
        load(sample, ZTF.collections, None, ksettings, repeat=2, broken=True)
        time.sleep(4)
        assert proc.poll() is None, "the flow must wait for MongoDB, not exit"
        assert len(read_results(tmp_path / "results" / "oracle_ztf_results.csv")) == len(rows1)
        mongo.start()
        everything = [m.value() for m in kafka.read(topic, 3 * len(SAMPLE.messages))]
        rows_all, bad_all = expected_outcome(everything)
        wait_for(tmp_path / "results", len(rows_all), bad_all, [proc])
    finally:
        stop(proc)
    rows = read_results(tmp_path / "results" / "oracle_ztf_results.csv")
    assert rows.candid.is_unique and set(rows.candid) == rows_all
    log = (tmp_path / "flow.log").read_text()
    assert "MongoDB at" in log and "the flow waits" in log


class Blackout:
    """A TCP proxy in front of the broker that can drop every connection and refuse
    new ones for a while: to the client this is a broker restart."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self._target = target_port
        self._up = threading.Event()
        self._up.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def outage(self, seconds: float) -> None:
        self._up.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        time.sleep(seconds)
        self._up.set()

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def proxied_broker(tmp_path):
    """A tansu broker that advertises a proxy address, so every client goes through it."""
    from confluent_kafka.admin import AdminClient

    real = free_port()
    proxy = Blackout(real)
    url, advertised = f"tcp://127.0.0.1:{real}", f"tcp://127.0.0.1:{proxy.port}"
    with (tmp_path / "tansu.log").open("ab") as out:
        proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
                                 advertised, "--storage-engine", "memory://tansu/"], stdout=out, stderr=out)
    bootstrap = f"127.0.0.1:{proxy.port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=1)
            break
        except Exception:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.2)
    try:
        yield bootstrap, proxy
    finally:
        proxy.close()
        proc.kill()
        proc.wait()


def test_broker_outage_then_the_flow_resumes_consuming(tmp_path, proxied_broker, mongo, mongo_db):
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap, proxy = proxied_broker
    topic = "ZTF_alerts_results"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    ksettings = KafkaSettings(brokers=(bootstrap,), topic=topic, group_id="x", starting_offset="beginning")
    load(SAMPLE, ZTF.collections, mongo.settings(mongo_db), None, repeat=2)  # every document, once
    load(SAMPLE, ZTF.collections, None, ksettings, partitions=1)

    env = flow_env(tmp_path, SimpleNamespace(bootstrap=bootstrap), topic, mongo.uri, mongo_db)
    proc = start_flow(env, log=tmp_path / "flow.log")
    try:
        rows1, bad1 = expected_outcome(SAMPLE.messages)
        wait_for(tmp_path / "results", len(rows1), bad1, [proc])
        proxy.outage(5)
        assert proc.poll() is None, "a broker outage must not stop the flow"
        load(SAMPLE, ZTF.collections, None, ksettings, repeat=2)
        values = [*SAMPLE.messages, *(item.value for item in iter_repeated(SAMPLE, 2))]
        rows_all, bad_all = expected_outcome(values)
        wait_for(tmp_path / "results", len(rows_all), bad_all, [proc], timeout_s=120)
    finally:
        stop(proc)
    rows = read_results(tmp_path / "results" / "oracle_ztf_results.csv")
    assert rows.candid.is_unique and set(rows.candid) == rows_all
    log = (tmp_path / "flow.log").read_text()
    assert "Traceback" not in log
