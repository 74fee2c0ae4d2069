"""`decode_avro`'s cached-schema fast path gives exactly what fastavro's container
reader gives: the same record for every bundled message, the same refusal (type
and text) for anything malformed, so malformed messages stay dead letters."""

from __future__ import annotations

import io

import fastavro
import pytest
from bytewax.connectors.kafka import KafkaSourceMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.runtime.config import DATA_DIR
from operators.io.deadletter import DeadLetter
from operators.oracle.messages import FilterResult, _decode_avro_cached, decode_avro, parse_message
from operators.samples.bundle import read_messages
from operators.oracle.surveys import LSST, ZTF

BUNDLED = read_messages(ZTF.sample_dir) + read_messages(LSST.sample_dir)


def reference(payload: bytes):
    """fastavro's reader, record by record, as the flow decoded before the cache."""
    try:
        records = list(fastavro.reader(io.BytesIO(payload)))
        if len(records) != 1:
            raise ValueError(f"not one record: the container holds {len(records)}")
        return "ok", records[0]
    except Exception as exc:
        return "error", (type(exc), str(exc))


def ours(payload: bytes):
    try:
        return "ok", decode_avro(payload)
    except Exception as exc:
        return "error", (type(exc), str(exc))


def test_every_bundled_message_decodes_as_fastavro_reads_it():
    fast = 0
    for payload in BUNDLED:
        got, expected = ours(payload), reference(payload)
        assert got[0] == expected[0] and (got[0] == "error" or got[1] == expected[1])
        try:
            _decode_avro_cached(payload)
            fast += 1
        except Exception:
            pass
    # the fast path (not the fallback) is what decoded the good ones
    assert fast == sum(reference(p)[0] == "ok" for p in BUNDLED) > 0


@pytest.mark.parametrize("name", ["fink_ztf_sample.avro", "fink_lsst_sample.avro", "fink_ztf_2019_alert_1.avro"])
def test_other_containers_fall_back_to_the_reader(name):
    payload = (DATA_DIR / "fink" / name).read_bytes()
    assert ours(payload) == reference(payload)


GOOD = [p for p in BUNDLED if reference(p)[0] == "ok"]
junk = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda i, cut: GOOD[i % len(GOOD)][:cut], st.integers(0, 10_000), st.integers(0, 3000)),
    st.builds(lambda i, pos, b: _flip(GOOD[i % len(GOOD)], pos, b), st.integers(0, 10_000),
              st.integers(0, 100_000), st.integers(0, 255)),
    st.builds(lambda i, extra: GOOD[i % len(GOOD)] + extra, st.integers(0, 10_000), st.binary(max_size=40)),
)


def _flip(value: bytes, pos: int, byte: int) -> bytes:
    pos = pos % len(value)
    return value[:pos] + bytes([byte]) + value[pos + 1:]


@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk)
def test_malformed_messages_are_refused_as_the_reader_refuses_them(payload):
    got = ours(payload)
    out = parse_message(KafkaSourceMessage(None, payload, topic="t", partition=0, offset=3))
    if got[0] == "error" and got[1][0].__name__ == "CorruptContainer":
        # Refused before decoding (fastavro's compiled reader would first allocate what the
        # damaged bytes declare): not compared with it.
        assert isinstance(out, DeadLetter) and "CorruptContainer" in out.reason
        return
    expected = reference(payload)
    assert got[0] == expected[0]
    if got[0] == "ok":
        assert got[1] == expected[1]
    if expected[0] == "error":
        assert isinstance(out, DeadLetter) and out.reason.startswith(("undecodable Avro", "empty message"))
    else:
        assert isinstance(out, (FilterResult, DeadLetter))


def test_a_damaged_schema_cannot_make_a_reader_allocate_gigabytes():
    """One flipped byte (`"fields"` -> `"Jields"`) gives a record type without fields, whose
    items take no bytes: the array's declared count alone would decide the allocation."""
    good = BUNDLED[0]
    at = good.index(b'"fields"', good.index(b"FilterResults"))
    bad = good[:at + 1] + b"J" + good[at + 2:]
    out = parse_message(KafkaSourceMessage(None, bad, topic="t", partition=0, offset=4))
    assert isinstance(out, DeadLetter) and "corrupt writer schema" in out.reason


def test_a_block_declaring_gigabytes_is_refused_before_anything_allocates_it():
    """9 junk bytes in a Snappy block can declare 4 GB; cramjam allocates what is declared
    and aborts the process when it cannot. The message must be a dead letter instead
    (run in a child with 1 GB of address space, so a regression fails here, not the suite)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from bytewax.connectors.kafka import KafkaSourceMessage
        from operators.oracle.messages import _container_header, _read_long, parse_message
        from operators.samples.bundle import read_messages
        from operators.oracle.surveys import ZTF
        m = read_messages(ZTF.sample_dir)[0]
        _, _, pos = _container_header(m)
        _, pos = _read_long(m, pos)
        _, pos = _read_long(m, pos)
        junk = m[:pos] + bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) + m[pos + 5:]
        out = parse_message(KafkaSourceMessage(key=None, value=junk, topic="t", partition=0, offset=7))
        print(out.reason)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=DATA_DIR.parent)
    assert done.returncode == 0, done.stderr[-500:]
    assert "corrupt Snappy block: declares 4294967295 bytes" in done.stdout
