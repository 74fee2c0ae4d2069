"""Speed and memory settings: bounded Kafka prefetch by default, overridable."""

from __future__ import annotations

from confluent_kafka import Consumer

from operators.runtime.config import KAFKA_CONSUMER_DEFAULTS, Settings
from operators.oracle.surveys import ZTF


def test_kafka_prefetch_is_bounded_by_default_and_overridable():
    s = Settings.from_env(ZTF, {"KAFKA_BROKERS": "127.0.0.1:1"})
    assert s.kafka.consumer_config["queued.max.messages.kbytes"] == KAFKA_CONSUMER_DEFAULTS["queued.max.messages.kbytes"]
    assert int(s.kafka.consumer_config["queued.max.messages.kbytes"]) < 65536  # librdkafka's default
    assert "queued.max.messages.kbytes" not in s.kafka.client_config  # producers and admin clients do not get it
    s = Settings.from_env(ZTF, {"KAFKA_BROKERS": "127.0.0.1:1", "KAFKA_OPT_QUEUED_MAX_MESSAGES_KBYTES": "65536",
                                "KAFKA_OPT_QUEUED_MIN_MESSAGES": "100000"})
    assert s.kafka.consumer_config["queued.max.messages.kbytes"] == "65536"
    assert s.kafka.consumer_config["queued.min.messages"] == "100000"


def test_librdkafka_accepts_the_defaults():
    c = Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "x", **KAFKA_CONSUMER_DEFAULTS})
    c.close()


def test_precision_and_device_are_checked_before_the_flow_starts():
    import pytest

    from operators.runtime.config import ConfigError

    s = Settings.from_env(ZTF, {})
    assert (s.precision, s.device) == ("fp32", "cpu")
    assert Settings.from_env(ZTF, {"ORACLE_PRECISION": "BF16", "ORACLE_DEVICE": "cpu"}).precision == "bf16"
    with pytest.raises(ConfigError, match="ORACLE_PRECISION='int4'"):
        Settings.from_env(ZTF, {"ORACLE_PRECISION": "int4"})
    with pytest.raises(ConfigError, match="ORACLE_DEVICE='gpu'"):
        Settings.from_env(ZTF, {"ORACLE_DEVICE": "gpu"})
