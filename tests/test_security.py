"""Secrets come from the environment only and never reach logs, errors, reprs,
results or dead letters; client security settings pass through."""

from __future__ import annotations

import logging

import pytest
from bytewax.testing import run_main

from dataflows.oracle import build_flow
from operators.runtime.config import Settings
from operators.samples.load import load, read_sample
from operators.oracle.surveys import ZTF
from tests.helpers import settings_for

SECRETS = {
    "KAFKA_OPT_SASL_PASSWORD": "kafka-pw-Zq81",
    "BOOM_DATABASE__PASSWORD": "mongo-pw-Xy42",
    "FRITZ_TOKEN": "fritz-tok-Ab93",
    "SLACK_BOT_TOKEN": "xoxb-slack-Cd27",
}


def test_settings_pass_security_options_through_and_hide_secrets():
    env = {"KAFKA_BROKERS": "broker:9093", "KAFKA_OPT_SECURITY_PROTOCOL": "SASL_SSL",
           "KAFKA_OPT_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_OPT_SASL_USERNAME": "alertflow",
           "BOOM_DATABASE__HOST": "db", "BOOM_DATABASE__USERNAME": "boom", "BOOM_DATABASE__TLS": "true",
           **SECRETS}
    s = Settings.from_env(ZTF, env)
    assert s.kafka.client_config == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                     "sasl.username": "alertflow", "sasl.password": SECRETS["KAFKA_OPT_SASL_PASSWORD"]}
    assert s.mongo.tls and s.mongo.username == "boom"
    assert SECRETS["BOOM_DATABASE__PASSWORD"] in s.mongo.client_uri()  # the client gets it ...
    text = repr(s) + s.mongo.describe()
    for secret in SECRETS.values():
        assert secret not in text  # ... nothing printable does
        assert s.redact(f"error: {secret}") == "error: ***"


@pytest.mark.services
def test_a_run_with_credentials_leaks_them_nowhere(tmp_path, mongo, mongo_db, caplog):
    load(read_sample(ZTF.sample_dir, ZTF.collections), ZTF.collections, mongo.settings(mongo_db), None)
    # nx-27017 accepts any user with PLAIN; a real BOOM MongoDB would check the password.
    uri = f"mongodb://boom:{SECRETS['BOOM_DATABASE__PASSWORD']}@127.0.0.1:{mongo.port}/?authMechanism=PLAIN&authSource=admin"
    settings = settings_for(ZTF, tmp_path, MONGODB_URI=uri, BOOM_DATABASE__NAME=mongo_db,
                            FRITZ_TOKEN=SECRETS["FRITZ_TOKEN"], FRITZ_URL="http://127.0.0.1:9",  # nothing listens
                            FRITZ_MAX_RETRIES=0, FRITZ_CONTEXT_TIMEOUT=0)
    with caplog.at_level(logging.DEBUG):
        run_main(build_flow(ZTF, settings))
    written = "".join(p.read_text() for p in (tmp_path / "results").iterdir())
    assert "ZTF" in written  # rows and dead letters were written
    everything = caplog.text + written + (tmp_path / "logs" / "oracle_ztf.log").read_text()
    for secret in SECRETS.values():
        assert secret not in everything
