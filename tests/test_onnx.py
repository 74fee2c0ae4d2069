"""ONNX Runtime as a second backend (docs/onnx.md): the exported graphs honour each series'
length, reproduce the golden probabilities through the flow and through plain onnxruntime
(no project code), agree with torch within 1e-5 for every network (Omni in both image-head
layouts), are cached by the weights' sha256, and settings the backend cannot honour stop
the flow with one line.

The golden probabilities (tests/data/golden, see tests/test_golden.py) were computed by an
implementation of ORACLE independent of this project.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from dataflows.preflight import check_backend
from models.oracle import model_card
from models.oracle.export import main as export_main
from models.oracle.loading import load_oracle
from models.oracle.networks import predict_proba
from models.oracle.onnx_backend import cached_export, check_parity, onnxruntime_predict, session
from operators.oracle import lsst_inputs, ztf_inputs
from operators.oracle.results import read_results
from operators.oracle.steps import pad
from operators.oracle.store import EmbeddedStore
from operators.oracle.surveys import LSST, ZTF
from operators.runtime.config import DATA_DIR, REPO_ROOT, ConfigError, Settings
from operators.samples.bundle import read_messages
from tests.helpers import perturbed_weights, run_flow, settings_for
from tests.test_golden import BUILDERS, golden
from tests.test_omni_checkpoints import UPSTREAM_IMAGE_HEADS, random_state, upstream_omni
from tests.test_ops import clean_env

WEIGHTS = {"ZTF": DATA_DIR / "best_model_f1_ztf.pth", "LSST": DATA_DIR / "best_model_f1_lsst.pth"}
GOLDEN_TOLERANCE = 1e-4  # as tests/test_golden.py
TORCH_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Every real alert of each bundled sample, all passing the filter (as tests/test_golden.py)."""
    root = tmp_path_factory.mktemp("samples")
    out = {}
    for name, build in BUILDERS.items():
        build(DATA_DIR, root / name, passes=lambda i, doc: True)
        out[name] = root / name
    return out


def golden_inputs(survey, sample: Path, with_stamp: bool = False):
    """The golden alerts' model inputs, built from their documents by the flow's input builder:
    (candids, [ts, lengths, static, stamps]) with static and stamps None where not used."""
    candids = [int(c) for c in golden(survey)]
    store = EmbeddedStore(sample, survey.collections)
    alerts = store.fetch(candids, [], with_stamp).alerts
    docs = store.fetch(candids, sorted({a["objectId"] for a in alerts.values()}), with_stamp)
    inputs = [survey.build_inputs(docs.alerts[c], docs.aux[docs.alerts[c]["objectId"]], docs.cutouts.get(c),
                                  with_stamp) for c in candids]
    ts, lengths = pad(inputs)
    static = np.stack([x.static for x in inputs]) if inputs[0].static is not None else None
    stamps = np.stack([x.stamp for x in inputs]) if with_stamp else None
    return candids, [ts, lengths, static, stamps]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`python -m models.oracle.export` of the shipped checkpoints, one file per survey."""
    out = tmp_path_factory.mktemp("onnx")
    for survey in ("ZTF", "LSST"):
        assert export_main([str(WEIGHTS[survey]), "--survey", survey.lower(), "--out", str(out / f"{survey}.onnx")]) == 0
    return out


# ---------------------------------------------------------------- plain onnxruntime, no project code


def run_exported(path: Path, arrays: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray, dict]:
    """What another system does with the file: onnxruntime, the metadata, numpy. Returns the node
    names, the probabilities [B, nodes] and the metadata."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    wanted = [spec["name"] for spec in json.loads(meta["oracle.inputs"])]
    assert [i.name for i in session.get_inputs()] == wanted
    feeds = {name: arrays[name].astype(np.int64 if name == "lengths" else np.float32) for name in wanted}
    return json.loads(meta["oracle.nodes"]), session.run(["probabilities"], feeds)[0], meta


@pytest.mark.parametrize("survey", [ZTF, LSST], ids=["ztf", "lsst"])
def test_plain_onnxruntime_reproduces_the_golden_probabilities(survey, samples, exported):
    candids, (ts, lengths, static, _) = golden_inputs(survey, samples[survey.name])
    nodes, probs, meta = run_exported(exported / f"{survey.name}.onnx",
                                      {"ts": ts, "lengths": lengths, "static": static})
    worst = 0.0
    for row, candid in zip(probs, candids):
        for node, expected in golden(survey)[str(candid)].items():
            if node not in ("objectId", "length"):
                worst = max(worst, abs(float(row[nodes.index(node)]) - expected))
    assert worst <= GOLDEN_TOLERANCE, worst
    # provenance and description, as another system reads them
    weights = WEIGHTS[survey.name]
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["oracle.weights_sha256"] == sha
    assert meta["oracle.model_label"].endswith(f"{weights.name}@{sha[:12]}")
    assert meta["oracle.taxonomy"] == survey.taxonomy.name and nodes == list(survey.taxonomy.nodes)
    assert meta["oracle.opset"] == "17"
    columns = json.loads(meta["oracle.inputs"])[0]["columns"]
    assert [c["name"] for c in columns][1:3] == (["magpsf", "sigmapsf"] if survey is ZTF else ["FLUXCAL", "FLUXCALERR"])


def test_the_model_card_names_what_the_input_builders_build():
    assert model_card.ZTF_STATIC_FEATURES == ztf_inputs.STATIC_FEATURES
    assert list(model_card.ZTF_BANDS_UM.values()) == list(ztf_inputs.ZTF_BAND_WAVELENGTH_UM.values())
    assert model_card.LSST_BANDS_UM == lsst_inputs.LSST_BAND_WAVELENGTH_UM


# ---------------------------------------------------------------- lengths


def test_the_recurrence_never_reads_the_padding(exported):
    """Rows of one batch of very different lengths: each as torch gives it alone, unpadded, and
    the same whatever the padding holds (the reverse direction starts at each series' end)."""
    model = load_oracle(WEIGHTS["ZTF"])
    rng = np.random.default_rng(5)
    lengths = np.array([1, 3, 40, 8, 40, 2, 17], dtype=np.int64)
    ts = np.zeros((len(lengths), 40, 5), np.float32)
    for i, n in enumerate(lengths):
        ts[i, :n] = np.column_stack([np.sort(rng.uniform(0, 50, n)), rng.normal(19, 1, n), rng.uniform(.02, .3, n),
                                     rng.choice([0.476, 0.6215], n), np.ones(n)])
        ts[i, :n, 0] -= ts[i, 0, 0]
    static = rng.normal(size=(len(lengths), 30)).astype(np.float32)
    _, zero_padded, _ = run_exported(exported / "ZTF.onnx", {"ts": ts, "lengths": lengths, "static": static})
    noisy = ts.copy()
    for i, n in enumerate(lengths):
        noisy[i, n:] = rng.normal(0, 100, size=(40 - n, 5))
    _, noise_padded, _ = run_exported(exported / "ZTF.onnx", {"ts": noisy, "lengths": lengths, "static": static})
    alone = np.concatenate([predict_proba(model, ts[i:i + 1, :n], lengths[i:i + 1], static[i:i + 1])
                            for i, n in enumerate(lengths)])
    assert np.abs(zero_padded - alone).max() <= TORCH_TOLERANCE
    assert np.abs(noise_padded - zero_padded).max() <= 1e-6
    # and it is not the same batch cut short: the lengths matter
    _, all_long, _ = run_exported(exported / "ZTF.onnx", {"ts": ts, "lengths": np.full_like(lengths, 40),
                                                          "static": static})
    assert np.abs(all_long - zero_padded).max() > 1e-2


# ---------------------------------------------------------------- the flow with ORACLE_BACKEND=onnxruntime


@pytest.mark.parametrize("survey", [ZTF, LSST], ids=["ztf", "lsst"])
def test_the_flow_on_onnxruntime_matches_torch_and_the_golden_probabilities(survey, samples, tmp_path):
    cache = tmp_path / "cache"
    settings = settings_for(survey, tmp_path, ALERTFLOW_SAMPLE_DIR=samples[survey.name], ORACLE_BACKEND="onnxruntime",
                            ORACLE_ONNX_CACHE_DIR=cache)
    run_flow(survey, settings, read_messages(samples[survey.name]))
    rows = read_results(settings.results_csv).set_index("candid")
    candids, inputs = golden_inputs(survey, samples[survey.name])
    torch_probs = predict_proba(load_oracle(WEIGHTS[survey.name], taxonomy=survey.taxonomy), *inputs)
    nodes = list(survey.taxonomy.nodes)
    worst_golden = worst_torch = 0.0
    for candid, expected, reference in zip(candids, torch_probs, golden(survey).values()):
        row = rows.loc[candid]
        worst_torch = max(worst_torch, float(np.abs(row[nodes].to_numpy(float) - expected).max()))
        worst_golden = max(worst_golden, max(abs(float(row[n]) - p) for n, p in reference.items()
                                             if n not in ("objectId", "length")))
    assert worst_torch <= TORCH_TOLERANCE and worst_golden <= GOLDEN_TOLERANCE, (worst_torch, worst_golden)
    [onnx_file] = cache.iterdir()  # one export, nothing half-written beside it
    assert onnx_file.suffix == ".onnx" and hashlib.sha256(WEIGHTS[survey.name].read_bytes()).hexdigest()[:16] in \
        onnx_file.name


def test_exports_are_cached_by_the_weights_sha256(tmp_path):
    model = load_oracle(WEIGHTS["ZTF"])
    first = cached_export(model, WEIGHTS["ZTF"], "ZTF", tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cached_export(model, WEIGHTS["ZTF"], "ZTF", tmp_path) == first and first.stat().st_mtime_ns == stamp
    other = perturbed_weights(WEIGHTS["ZTF"], tmp_path / "retrained.pth")
    second = cached_export(load_oracle(other), other, "ZTF", tmp_path)
    assert second != first and sorted(tmp_path.glob("*.onnx")) == sorted([first, second])
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".onnx" and p.suffix != ".pth"]


def test_a_file_that_does_not_compute_the_loaded_weights_is_refused_at_load(tmp_path):
    """The check every session gets when it is opened: another checkpoint's graph fails it."""
    model = load_oracle(WEIGHTS["ZTF"])
    other = perturbed_weights(WEIGHTS["ZTF"], tmp_path / "retrained.pth")
    wrong = session(cached_export(load_oracle(other), other, "ZTF", tmp_path), threads=1)
    assert check_parity(model, session(cached_export(model, WEIGHTS["ZTF"], "ZTF", tmp_path))) <= TORCH_TOLERANCE
    with pytest.raises(ValueError, match="differs from torch"):
        check_parity(model, wrong)


# ---------------------------------------------------------------- Omni, both image-head layouts


@pytest.mark.slow
@pytest.mark.parametrize("layout,residual", [("new_arch", False), ("dropout", True)], ids=["new_arch", "dropout"])
def test_omni_on_onnxruntime_matches_torch_in_both_head_layouts(layout, residual, samples, tmp_path):
    path = tmp_path / "omni.pth"
    torch.save(random_state(upstream_omni(UPSTREAM_IMAGE_HEADS[layout], residual), seed=len(layout)), path)
    model = load_oracle(path)
    assert [i for i, _, _ in model.image_spine.head_layout] == sorted(UPSTREAM_IMAGE_HEADS[layout])
    _, inputs = golden_inputs(ZTF, samples["ZTF"], with_stamp=True)
    assert (~inputs[3].reshape(len(inputs[3]), -1).any(axis=1)).sum() >= 1  # an alert without a template
    predict = onnxruntime_predict([(model, path)], "ZTF", threads=1, cache_dir=tmp_path / "cache")
    worst = float(np.abs(predict(model, *inputs) - predict_proba(model, *inputs)).max())
    assert worst <= TORCH_TOLERANCE, worst


# ---------------------------------------------------------------- settings the backend cannot honour


def test_settings_the_onnxruntime_backend_cannot_honour_are_refused(tmp_path):
    def problems(**env):
        settings = settings_for(ZTF, tmp_path, ORACLE_BACKEND="onnxruntime", **env)
        return [(c.ok, c.detail, c.fix) for c in check_backend(settings)]

    assert problems()[0][0] is True
    for env, variable in (({"ORACLE_PRECISION": "bf16"}, "ORACLE_PRECISION"), ({"ORACLE_COMPILE": "true"}, "ORACLE_COMPILE"),
                          ({"ORACLE_DEVICE": "cuda"}, "ORACLE_DEVICE")):
        [(ok, detail, fix)] = problems(**env)
        assert not ok and detail.startswith(variable) and fix, detail
    (tmp_path / "a_file").write_text("x")
    [(ok, detail, _)] = problems(ORACLE_ONNX_CACHE_DIR=tmp_path / "a_file" / "cache")
    assert not ok and detail.startswith("ORACLE_ONNX_CACHE_DIR")
    with pytest.raises(ConfigError, match="ORACLE_BACKEND"):
        Settings.from_env(ZTF, {"ORACLE_BACKEND": "tensorrt"})


def flow_exit(tmp_path: Path, **env) -> tuple[int, str]:
    base = {"ALERTFLOW_RESULTS_DIR": tmp_path / "results", "ALERTFLOW_LOGS_DIR": tmp_path / "logs",
            "ORACLE_ONNX_CACHE_DIR": tmp_path / "cache"}
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.ztf"], cwd=REPO_ROOT, timeout=300,
                          env=clean_env(**{**base, **env}), capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_without_onnxruntime_installed_the_flow_exits_2_with_one_line(tmp_path):
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "onnxruntime.py").write_text("raise ImportError('No module named onnxruntime')\n")
    code, out = flow_exit(tmp_path, ORACLE_BACKEND="onnxruntime", PYTHONPATH=f"{hidden}:{REPO_ROOT}")
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, out
    assert lines[0].startswith("configuration error: ORACLE_BACKEND=onnxruntime needs onnxruntime") and \
        "pip install" in lines[0], lines[0]
    assert not (tmp_path / "results" / "oracle_ztf_results.csv").exists()


def test_the_backend_benchmark_measures_both_backends_on_the_same_batches(tmp_path):
    """bench/backends.py (the `backends` part of bench/bench_flow.py) still runs: a short round."""
    sys.path.insert(0, str(REPO_ROOT))
    from bench.backends import bundled_inputs, compare
    from bench.measure import cpu_line

    model = load_oracle(WEIGHTS["ZTF"])
    res = compare(model, WEIGHTS["ZTF"], "ZTF", bundled_inputs(ZTF), batch=16, seconds=0.05, cache=tmp_path, rounds=1)
    assert res["max_abs_dp"] <= TORCH_TOLERANCE
    assert res["torch"]["cpu_us_per_alert"] > 0 and res["onnxruntime"]["cpu_us_per_alert"] > 0
    assert res["torch_over_onnxruntime"] > 0
    assert cpu_line().startswith(platform.machine().lower())  # the one CPU reader: models/oracle/cpu_features.py
