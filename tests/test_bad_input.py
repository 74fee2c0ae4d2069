"""Bad input never stops a flow: it becomes a dead letter with a reason."""

from __future__ import annotations

import random

import numpy as np
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.testing import TestingSource, run_main
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dataflows.oracle import build_flow
from operators.io.deadletter import DeadLetter, Origin, read_dead_letters
from operators.oracle.messages import FilterResult, decode_avro, parse_message, parse_record
from operators.oracle.steps import Batch, build_inputs
from operators.oracle.results import read_results
from operators.samples.bundle import encode_result, read_messages
from operators.oracle.surveys import ZTF
from operators.oracle.ztf_inputs import ModelInputs
from tests.helpers import settings_for

MESSAGES = read_messages(ZTF.sample_dir)
GOOD = [m for m in MESSAGES if isinstance(parse_message(KafkaSourceMessage(None, m)), FilterResult)]
RECORD = decode_avro(GOOD[0])

junk = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda i, cut: GOOD[i % len(GOOD)][:cut], st.integers(0, 10_000), st.integers(0, 3000)),
    st.builds(lambda i, pos, b: _flip(GOOD[i % len(GOOD)], pos, b), st.integers(0, 10_000),
              st.integers(0, 10_000), st.integers(0, 255)),
)


def _flip(value: bytes, pos: int, byte: int) -> bytes:
    pos = pos % len(value)
    return value[:pos] + bytes([byte]) + value[pos + 1:]


@settings(max_examples=1200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk)
def test_parser_never_raises_on_junk_and_says_why(payload):
    out = parse_message(KafkaSourceMessage(None, payload, topic="t", partition=0, offset=1))
    assert isinstance(out, (FilterResult, DeadLetter))
    if isinstance(out, DeadLetter):
        assert out.reason and out.stage == "parse" and out.offset == 1


field_values = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True),
                         st.text(max_size=5), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(["candid", "objectId", "jd", "ra", "dec", "filters"]), field_values)
def test_wrongly_typed_fields_are_dead_letters(name, value):
    record = dict(RECORD, **{name: value})
    try:
        payload = encode_result(record)
    except Exception:  # Avro's schema refuses it already; the parser must still judge the record
        payload = None
    if payload is None:
        try:
            out = parse_record(record, Origin())
        except ValueError as exc:
            assert str(exc)
            return
    else:
        out = parse_message(KafkaSourceMessage(None, payload))
    assert isinstance(out, (FilterResult, DeadLetter))
    if isinstance(out, FilterResult):
        assert isinstance(out.candid, int) and isinstance(out.objectId, str) and np.isfinite(out.jd)


point = st.dictionaries(
    st.sampled_from(["jd", "fid", "magpsf", "sigmapsf", "programid", "ra", "dec", "drb", "sgscore1"]),
    field_values, max_size=9)
documents = st.tuples(
    st.one_of(st.none(), st.fixed_dictionaries({"candidate": st.one_of(point, st.none(), st.text(max_size=3))},
                                               optional={"coordinates": st.dictionaries(st.sampled_from(["l", "b"]), field_values)})),
    st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "prv_candidates": st.one_of(st.lists(st.one_of(point, st.integers()), max_size=5), st.text(max_size=3)),
        "cross_matches": st.one_of(st.dictionaries(st.just("AllWISE"), st.lists(point, max_size=2)), st.integers())})),
)


@settings(max_examples=1000, deadline=None, database=None)
@given(st.lists(documents, min_size=1, max_size=4))
@example(docs=[({"candidate": {"jd": 0, "magpsf": 3.4028235677973366e+38, "fid": 1, "programid": 1,
                               "sigmapsf": 0}}, {})])  # finite as float64, inf as float32 (found by hypothesis)
def test_input_builder_turns_any_document_into_inputs_or_dead_letters(docs):
    alerts = [FilterResult(candid=i, objectId=f"o{i}", jd=1.0, ra=0.0, dec=0.0, filters=frozenset(), origin=Origin())
              for i in range(len(docs))]
    batch = Batch(items=[(a, (alert or {}, aux, None)) for a, (alert, aux) in zip(alerts, docs)])
    out = build_inputs(ZTF.build_inputs, batch)
    assert len(out.items) + len(out.dead) == len(docs)
    for _, x in out.items:
        assert isinstance(x, ModelInputs) and x.length > 0
        assert np.isfinite(x.ts).all() and np.isfinite(x.static).all()
    for d in out.dead:
        assert d.reason and d.stage == "inputs"


def test_a_thousand_bad_messages_in_the_flow_become_a_thousand_dead_letters(tmp_path):
    rng = random.Random(3)
    bad = []
    for i in range(1000):
        good = GOOD[i % len(GOOD)]
        bad.append(good[: rng.randrange(1, len(good) // 2)] if i % 2 else bytes(rng.randrange(256) for _ in range(40)))
    values = [*bad[:500], *GOOD, *bad[500:]]
    settings = settings_for(ZTF, tmp_path)
    run_main(build_flow(ZTF, settings, source=TestingSource(
        [KafkaSourceMessage(key=None, value=v, topic="t", partition=0, offset=i) for i, v in enumerate(values)])))
    letters = [d for d in read_dead_letters(settings.deadletters) if d["stage"] == "parse"]
    assert len(letters) == 1000
    assert {d["offset"] for d in letters} == set(range(500)) | set(range(500 + len(GOOD), len(values)))
    assert len(read_results(settings.results_csv)) > 20  # the good ones still got through
