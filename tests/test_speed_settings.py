"""Speed and memory settings: bounded Kafka prefetch by default, overridable."""

from __future__ import annotations

import pytest
import torch
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
    assert (s.oracle.precision, s.oracle.device) == ("fp32", "cpu")
    assert Settings.from_env(ZTF, {"ORACLE_PRECISION": "BF16", "ORACLE_DEVICE": "cpu"}).oracle.precision == "bf16"
    assert Settings.from_env(ZTF, {"ORACLE_PRECISION": "int8"}).oracle.precision == "int8"
    with pytest.raises(ConfigError, match="ORACLE_PRECISION='int4'") as refused:
        Settings.from_env(ZTF, {"ORACLE_PRECISION": "int4"})
    assert "\n" not in str(refused.value) and "int8" in str(refused.value)  # one line, naming the choices
    with pytest.raises(ConfigError, match="ORACLE_DEVICE='gpu'"):
        Settings.from_env(ZTF, {"ORACLE_DEVICE": "gpu"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_device_the_machine_lacks_fails_the_checks_before_the_flow(tmp_path):
    from dataflows.preflight import validate

    settings = Settings.from_env(ZTF, {"ORACLE_DEVICE": "cuda", "ALERTFLOW_RESULTS_DIR": str(tmp_path / "r"),
                                       "ALERTFLOW_LOGS_DIR": str(tmp_path / "l")})
    checks, _ = validate(settings, ZTF)
    failed = [c for c in checks if not c.ok]
    assert len(failed) == 1 and "ORACLE_DEVICE=cuda" in failed[0].line() and "ORACLE_DEVICE=cpu" in failed[0].line()


def test_int8_off_the_cpu_fails_the_checks_before_the_flow():

    from dataflows.preflight import check_numbers

    settings = Settings.from_env(ZTF, {"ORACLE_PRECISION": "int8"})
    assert not [c for c in check_numbers(settings) if not c.ok]
    failed = [c for c in check_numbers(settings.replace(oracle={"device": "cuda"})) if not c.ok]
    # one line: int8 off the CPU where there is a GPU, else the missing GPU
    assert len(failed) == 1
    assert ("ORACLE_PRECISION=int8" if torch.cuda.is_available() else "ORACLE_DEVICE=cuda") in failed[0].line()
