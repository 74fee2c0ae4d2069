"""The first hour's traps (issue 27): each is one clear line or a clean stop."""

from __future__ import annotations

import argparse
import logging
import math
from collections import Counter

import pytest
from bytewax.testing import run_main

from dataflows.oracle import build_flow
from operators.io.deadletter import Origin
from operators.oracle import filter_names
from operators.oracle.messages import FilterResult
from operators.oracle.surveys import ZTF
from operators.samples import load as load_sample
from tests.helpers import settings_for

# ---------------------------------------------------------------- trap 4: a filter no alert passed


def _alert(i: int, *filters: str) -> FilterResult:
    return FilterResult(candid=i, objectId=f"ZTF{i}", jd=2460000.5, ra=1.0, dec=2.0, filters=frozenset(filters),
                        origin=Origin())


def test_filter_watch_warns_once_with_the_filters_seen():
    watch = filter_names.FilterWatch("nonexistent_filter", after=5)
    batch = [_alert(1, "a"), _alert(2, "a"), _alert(3, "b")]
    assert watch.observe(batch, 0) is None  # 3 alerts: not yet "many"
    hint = watch.observe(batch, 0)
    assert hint == ("ORACLE_FILTER='nonexistent_filter': none of the first 6 alerts passed it; the filters they "
                    "passed: a (4), b (2) -> set ORACLE_FILTER to the BOOM filter whose alerts should be classified")
    assert watch.observe(batch, 0) is None  # once


def test_filter_watch_is_silent_once_an_alert_passed():
    watch = filter_names.FilterWatch("a", after=2)
    assert watch.observe([_alert(1, "a")], 1) is None
    assert watch.observe([_alert(i, "b") for i in range(10)], 0) is None


def test_a_misspelt_filter_on_the_bundled_replay_names_the_filters_seen(tmp_path, caplog):
    filter_names._watches.clear()  # per process: another test may have run this filter
    settings = settings_for(ZTF, tmp_path, ORACLE_FILTER="nonexistent_filter")
    with caplog.at_level(logging.WARNING, logger="alertflow.oracle"):
        run_main(build_flow(ZTF, settings))
    hints = [r.getMessage() for r in caplog.records if "ORACLE_FILTER=" in r.getMessage()]
    assert len(hints) == 1, hints
    # The sample: 28 alerts passed rcfdeep_partnership_ztf, 9 passed ztf_other_filter (tests/helpers.py SAMPLE_TRUTH).
    assert "'nonexistent_filter'" in hints[0] and "rcfdeep_partnership_ztf (28)" in hints[0]
    assert "ztf_other_filter (9)" in hints[0]


def test_the_configured_filter_on_the_bundled_replay_gives_no_hint(tmp_path, caplog):
    filter_names._watches.clear()
    with caplog.at_level(logging.WARNING, logger="alertflow.oracle"):
        run_main(build_flow(ZTF, settings_for(ZTF, tmp_path)))
    assert not [r for r in caplog.records if "ORACLE_FILTER=" in r.getMessage()]


def test_filter_check_lines():
    seen = Counter({"a": 3, "b": 1})
    assert filter_names.filter_result("a", seen, 4, "t")[0]
    ok, detail, fix = filter_names.filter_result("x", seen, 4, "t")
    assert not ok and "ORACLE_FILTER='x'" in detail and "a (3), b (1)" in detail and "ORACLE_FILTER" in fix
    assert filter_names.filter_result("x", Counter(), 0, "t")[0]  # an empty topic proves nothing


@pytest.mark.services
def test_check_lists_the_filters_in_the_topics_recent_messages(kafka, create_topic, tmp_path):
    from dataflows.__main__ import run_checks

    topic = create_topic("ZTF_alerts_results", partitions=2)
    kafka.produce(topic, load_sample.read_sample(ZTF.sample_dir, ZTF.collections).messages)
    env = {**kafka.env(topic), "ALERTFLOW_RESULTS_DIR": str(tmp_path / "r"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "l"),
           "ALERTFLOW_RECOVERY_DIR": str(tmp_path / "rec")}
    bad = next(r for r in run_checks("ztf", {**env, "ORACLE_FILTER": "nonexistent_filter"}) if r.name == "filter")
    assert not bad.ok and "rcfdeep_partnership_ztf (28)" in bad.line() and "ztf_other_filter (9)" in bad.line()
    assert "-> set ORACLE_FILTER" in bad.line()
    good = next(r for r in run_checks("ztf", env) if r.name == "filter")
    assert good.ok and "passed by 28 of the 37 most recent alerts" in good.detail, good.line()


# ---------------------------------------------------------------- trap 5: a backfill window without alerts

# The example the documentation shows: the night of 2026-03-22, which the bundled ZTF documents cover.
BACKFILL_EXAMPLE = ["ztf", "--since", "2026-03-22", "--until", "2026-03-23"]


@pytest.fixture
def backfill_dirs(tmp_path, monkeypatch):
    for var, sub in (("ALERTFLOW_RESULTS_DIR", "results"), ("ALERTFLOW_LOGS_DIR", "logs"),
                     ("ALERTFLOW_RECOVERY_DIR", "recovery")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    for var in ("MONGODB_URI", "BOOM_DATABASE__HOST", "KAFKA_BROKERS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_a_window_without_alerts_says_what_the_store_holds(backfill_dirs, caplog):
    from dataflows.backfill import main

    with caplog.at_level(logging.WARNING, logger="alertflow.backfill"):
        assert main(["ztf", "--since", "2026-11-01", "--until", "2026-11-08"]) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "no ZTF_alerts document has candidate.jd in [2026-11-01, 2026-11-08)" in said, said
    # The bundled ZTF documents: 5 from 2019-11-15, 31 from 2026-03-22, one from 2026-04-04.
    assert "37 ZTF_alerts documents from 2019-11-15T02:12:39 to 2026-04-04T05:46:39" in said, said
    assert "-> give --since/--until inside that range" in said
    assert not (backfill_dirs / "results" / "backfill").exists()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alertflow.backfill"):
        assert main([*BACKFILL_EXAMPLE, "--query", '{"candidate.drb": {"$gt": 2}}']) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "none of the 31 ZTF_alerts documents" in said and "loosen --query/--candids" in said, said


def test_the_documented_backfill_example_classifies_the_bundled_night(backfill_dirs):
    from dataflows.backfill import main
    from operators.oracle.results import read_results
    from tests.helpers import SAMPLE_TRUTH

    assert main(BACKFILL_EXAMPLE) == 0
    csvs = list((backfill_dirs / "results" / "backfill").glob("oracle_ztf_*_2026-03-22_2026-03-23.csv"))
    assert len(csvs) == 1
    truth = SAMPLE_TRUTH["ZTF"]
    # ZTF candids begin with the night number (nights since 2017-01-01): 3367 is 2026-03-22.
    night = {c for c in truth["passing"] | truth["failing"] if str(c).startswith("3367")}
    assert len(night) == 31 and set(read_results(csvs[0]).candid) == night


@pytest.mark.services
def test_mongodb_reports_the_same_range_as_the_bundled_documents(mongo, mongo_db):
    from operators.oracle.backfill_source import EmbeddedScanner, MongoScanner
    from operators.oracle.store import read_documents
    from operators.samples.load import upsert_documents

    c = ZTF.collections
    upsert_documents(mongo.client()[mongo_db][c.alerts], read_documents(ZTF.sample_dir / f"{c.alerts}.jsonl"))
    on_mongo = MongoScanner(mongo.settings(mongo_db), c.alerts, ZTF.time_field).time_range()
    assert on_mongo == EmbeddedScanner(ZTF.sample_dir, c.alerts, ZTF.time_field).time_range()
    assert on_mongo[2] == 37


# ---------------------------------------------------------------- trap 6: weights that are not a checkpoint


def test_what_a_file_is_from_its_first_bytes():
    from models.oracle.checkpoint_format import LEGACY_MAGIC, what_it_is

    assert what_it_is(b"# alertflow\n\nBytewax dataflows") == "a text file beginning '# alertflow'"
    assert what_it_is(b"") == "an empty file"
    assert what_it_is(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "binary data beginning b'\\xff\\xd8\\xff\\xe0\\x00\\x10JF'"
    assert what_it_is(b"PK\x03\x04rest", ["weights/data.pkl", "weights/data/0"]) is None
    assert what_it_is(b"PK\x03\x04rest", ["notes.txt"]) == "a zip archive without the data.pkl torch.save writes"
    assert what_it_is(LEGACY_MAGIC + b"\x2e\x80\x02") is None
    assert what_it_is(b"\x80\x04\x95\x0a\x00") == "a Python pickle, not one torch.save wrote"


def test_real_files_from_torch_save_pass_the_sniff(tmp_path):
    import torch

    from models.oracle.checkpoint_format import sniff

    for new in (True, False):
        path = tmp_path / f"w{new}.pth"
        torch.save({"a": torch.zeros(2)}, path, _use_new_zipfile_serialization=new)
        sniff(path)  # raises when refused


def test_the_readme_as_weights_is_one_line_naming_the_variable(tmp_path):
    from operators.runtime.config import REPO_ROOT
    from tests.test_operator_experience import run_flow

    code, out = run_flow("dataflows.ztf", tmp_path, ORACLE_ZTF_WEIGHTS=REPO_ROOT / "README.md")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert out.startswith(f"configuration error: ORACLE_ZTF_WEIGHTS={REPO_ROOT / 'README.md'} is not a PyTorch "
                          "checkpoint (a text file beginning '# "), out
    assert "weights_only" not in out and out.rstrip().endswith("-> point ORACLE_ZTF_WEIGHTS at an ORACLE ZTF "
                                                               "checkpoint (.pth)"), out


def test_pickled_objects_beyond_tensors_are_one_short_sentence(tmp_path):
    import torch

    from models.oracle.loading import load_oracle
    from models.oracle.networks import ModelLoadError

    path = tmp_path / "objects.pth"
    torch.save({"a": argparse.Namespace(x=1)}, path)  # what an old training script saved beside its tensors
    with pytest.raises(ModelLoadError) as info:
        load_oracle(path)
    assert "holds Python objects besides tensors" in str(info.value) and len(str(info.value)) < 300


# ---------------------------------------------------------------- trap 7: --repeat copies the broken messages


def test_repeated_copies_leave_out_the_broken_messages_unless_asked():
    from operators.oracle.messages import decode_avro
    from operators.samples.load import SYNTHETIC_CANDID_BASE, iter_repeated
    from tests.helpers import SAMPLE_TRUTH

    sample = load_sample.read_sample(ZTF.sample_dir, ZTF.collections)
    truth = SAMPLE_TRUTH["ZTF"]
    sound = len(truth["passing"] | truth["failing"]) - len(truth["no_aux"])  # 36 of the 40 messages
    items = list(iter_repeated(sample, 3))
    assert len(items) == 40 + 2 * sound
    aux_ids = {d["_id"] for d in sample.aux}
    copies = [decode_avro(i.value) for i in items[40:]]
    assert all(c["candid"] >= SYNTHETIC_CANDID_BASE and c["objectId"] in aux_ids for c in copies)
    assert all(i.alert is not None for i in items[40:])
    assert len(list(iter_repeated(sample, 3, broken=True))) == 3 * 40


# ---------------------------------------------------------------- trap 8: too few labels, too small a pool


def test_night_with_too_few_labels_says_so_before_the_bar(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from models.vetting.cli import main as al_main
    from models.vetting.labeling import proxy_labels_table, read_alerts
    from operators.runtime.config import REPO_ROOT
    from operators.vra.features import features_table

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    files = [REPO_ROOT / "data/fink/fink_ztf_sample.avro",
             *sorted((REPO_ROOT / "data/fink").glob("fink_ztf_2019_alert_*.avro"))]
    alerts = read_alerts(files)
    features_table(alerts).to_parquet(tmp_path / "fink_vra.parquet")
    labels = tmp_path / "labeled.csv"
    proxy_labels_table(alerts).to_csv(labels, index=False)
    n_labels = len(pd.read_csv(labels))
    assert n_labels < 500
    code = al_main(["night", "--features", str(tmp_path / "fink_vra.parquet"), "--labels", str(labels),
                    "--first-batch", "500", "--batch-size", "3", "--no-label",
                    "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "al")])
    assert code == 0
    out = capsys.readouterr()
    first = out.out.splitlines()[0]
    assert first.startswith("Cold start: ") and "needs 500 labels" in first and "nothing is logged to MLflow" in first
    assert "log to MLflow" not in out.err and "pick a random first batch" in out.err
    assert not (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "al" / "next_batch_galactic.csv").exists()


def test_experiments_on_a_pool_smaller_than_its_first_batch_warn():
    from models.vetting.active_learning import LoopConfig
    from models.vetting.classifier import get_target
    from models.vetting.experiments import small_pool_warning
    from models.vetting.synthetic import synthetic_pool

    pool = synthetic_pool(40, seed=0)
    usable = int(get_target("galactic").encode(pool["label"]).notna().sum())  # bogus rows say nothing of it
    rest = usable - math.ceil(0.3 * usable)  # scikit-learn rounds the held-out part up
    base = LoopConfig(first_batch=30, holdout_fraction=0.3)
    said = small_pool_warning(pool, base, [], validated=False)
    assert said.startswith(f"warning: the pool leaves {rest} rows to label for galactic after the 30% held out")
    assert "first batch (30)" in said and f"below {rest}" in said, said
    assert small_pool_warning(pool, base, [rest - 1], validated=False) is None
    assert f"({rest}, 45)" in small_pool_warning(pool, base, [rest - 1, rest, 45], validated=False)
    assert small_pool_warning(synthetic_pool(400, seed=0), base, [], validated=False) is None


def test_the_experiments_command_warns_on_a_small_pool(tmp_path, capsys):
    from models.vetting.cli import main as al_main

    code = al_main(["experiments", "--pool", "synthetic:40", "--strategies", "random", "--seeds", "1",
                    "--max-labels", "50", "--out", str(tmp_path / "exp")])
    assert code == 0
    assert "warning: the pool leaves" in capsys.readouterr().err


# ---------------------------------------------------------------- trap 9: bf16/int8 where they are slower


# Literal /proc/cpuinfo flag lines (trimmed to the instruction-set part that matters, as the kernel prints it).
ZEN5 = ("fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl "
        "avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg")
SANDY_BRIDGE = "fpu vme sse sse2 ssse3 cx16 sse4_1 sse4_2 popcnt aes xsave avx hypervisor lahf_lm"
HASWELL = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2"
SKYLAKE_SP = "fpu sse sse2 fma sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl"
CASCADE_LAKE = SKYLAKE_SP + " avx512_vnni"
SAPPHIRE_RAPIDS = CASCADE_LAKE + " avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
GRAVITON3 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp sve i8mm bf16"


def test_bf16_and_int8_are_refused_where_slower_than_fp32():
    from models.oracle.cpu_features import precision_refusal

    for flags in (ZEN5, SAPPHIRE_RAPIDS):
        assert precision_refusal("bf16", flags) is None and precision_refusal("int8", flags) is None
    for flags in (SANDY_BRIDGE, HASWELL):
        assert "no bf16 instructions" in precision_refusal("bf16", flags) and "~10x slower" in \
            precision_refusal("bf16", flags)
    for flags in (SKYLAKE_SP, CASCADE_LAKE):
        assert "emulates bf16 with AVX-512" in precision_refusal("bf16", flags)
        assert precision_refusal("int8", flags) is None
    assert precision_refusal("int8", HASWELL) is None
    assert "no AVX2" in precision_refusal("int8", SANDY_BRIDGE) and "it has AVX)" in precision_refusal(
        "int8", SANDY_BRIDGE)
    assert precision_refusal("fp32", SANDY_BRIDGE) is None
    assert precision_refusal("bf16", GRAVITON3, arch="aarch64") is None  # ARM: not refused
    # No /proc/cpuinfo (macOS): torch's kernel level alone.
    assert precision_refusal("bf16", "", capability="AVX2") is not None
    assert precision_refusal("bf16", "", capability="AVX512") is None


def test_cpu_features_line_and_cpuinfo_parsing():
    from models.oracle.cpu_features import Cpu, describe, parse_flags

    text = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {SAPPHIRE_RAPIDS}\n\nprocessor\t: 1\n"
    flags = parse_flags(text)
    assert "amx_bf16" in flags and "avx512f" in flags
    line = describe(Cpu("x86_64", flags, "AVX512", "Some CPU"))
    assert line == ("x86_64 Some CPU: AVX AVX2 AVX-512 AVX512-VNNI AVX-VNNI AVX512-BF16 AMX-BF16 AMX-INT8 "
                    "(torch kernels AVX512)")
    assert describe(Cpu("aarch64", parse_flags(f"Features\t: {GRAVITON3}\n"))) == "aarch64: NEON DOTPROD I8MM BF16 SVE"


def test_the_flow_refuses_bf16_on_an_avx_only_cpu(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from dataflows import preflight
    from models.oracle import cpu_features

    monkeypatch.setattr(cpu_features, "read_cpu",
                        lambda: cpu_features.Cpu("x86_64", cpu_features.parse_flags(f"flags: {SANDY_BRIDGE}"),
                                                 "DEFAULT"))
    omni = SimpleNamespace(needs_stamp=True)
    settings = settings_for(ZTF, tmp_path, ORACLE_PRECISION="bf16")
    result = preflight.check_cpu_precision(settings, omni)
    assert not result.ok
    assert result.error_line().startswith("configuration error: ORACLE_PRECISION=bf16 would be slower than fp32 "
                                          "here: this CPU has no bf16 instructions")
    assert "-> unset ORACLE_PRECISION (fp32)" in result.error_line()
    with pytest.raises(SystemExit) as stop:
        preflight.exit_on_failures([result])
    assert stop.value.code == 2
    assert preflight.check_cpu_precision(settings, SimpleNamespace(needs_stamp=False)) is None  # BTSv2: no image net
    assert preflight.check_cpu_precision(settings_for(ZTF, tmp_path), omni) is None  # fp32
