"""ORACLE_COMPILE=true: Omni's image network compiled by torch.compile (inductor, fp32, CPU)
gives eager fp32's probabilities to 1e-5 on the bundled ZTF alerts' real stamps, compiles
once at start-up whatever the batch sizes, and a machine without a C++ compiler is
refused before the flow starts, in one line naming ORACLE_COMPILE."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from models.oracle.image import TRUNK_CHUNK
from models.oracle.loading import compile_problem, configure_inference
from models.oracle.networks import predict_proba

pytestmark = pytest.mark.slow  # one real compile: ~10 s with inductor's cache warm, ~45 s cold


@pytest.fixture(scope="module")
def eager_and_compiled():
    from bench.omni import random_omni

    if compile_problem() is not None:  # CI and the dev machine have g++; a bare laptop may not
        pytest.skip(compile_problem())
    torch._dynamo.reset()
    eager = random_omni()
    compiled = configure_inference(copy.deepcopy(eager), "fp32", "cpu", compile=True)
    return eager, compiled


@pytest.fixture(scope="module")
def bundled():
    from bench.omni import bundled_omni_inputs

    ts, lengths, static, stamps = bundled_omni_inputs()
    assert len(stamps) >= 30 and stamps.reshape(len(stamps), -1).any(axis=1).sum() >= 30  # real stamps
    return ts, lengths, static, stamps


def test_compiled_gives_eager_fp32_probabilities_on_the_bundled_alerts(eager_and_compiled, bundled):
    eager, compiled = eager_and_compiled
    assert compiled.image_spine._compiled is not None
    fp32 = predict_proba(eager, *bundled)
    probs = predict_proba(compiled, *bundled)
    # the stamps matter with these weights: zeroing them moves the probabilities by ~1e-2
    ts, lengths, static, stamps = bundled
    assert np.abs(predict_proba(eager, ts, lengths, static, 0 * stamps) - fp32).max() > 1e-3
    assert np.abs(probs - fp32).max() < 1e-5


def test_batches_of_any_size_reuse_the_one_compiled_graph(eager_and_compiled, bundled):
    """Full passes of TRUNK_CHUNK stamps run compiled, a short last one eager: no recompile
    whatever the batch size, and every alert's result stays that of eager fp32."""
    eager, compiled = eager_and_compiled
    ts, lengths, static, stamps = bundled
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 1  # compiled at start-up, in configure_inference
    ref = predict_proba(eager, *bundled)
    spine = compiled.image_spine
    passes = []
    spine._compiled = (lambda f: lambda x: (passes.append(len(x)), f(x))[1])(spine._compiled)
    with torch._dynamo.config.patch(error_on_recompile=True):
        start = 0
        for size in (1, 3, 8, 9, 13, 2, 5, 32):
            rows = np.arange(start, start + size) % len(stamps)
            probs = predict_proba(compiled, ts[rows], lengths[rows], static[rows], stamps[rows])
            assert np.abs(probs - ref[rows]).max() < 1e-5, size
            start += size
        zero = predict_proba(compiled, ts[:4], lengths[:4], static[:4], 0 * stamps[:4])  # the zero-stamp constant
        assert np.abs(zero - predict_proba(eager, ts[:4], lengths[:4], static[:4], 0 * stamps[:4])).max() < 1e-5
        # bytewax workers are threads sharing the model
        rows = np.arange(32) % len(stamps)
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(lambda _: predict_proba(compiled, ts[rows], lengths[rows], static[rows],
                                                         stamps[rows]), range(4)))
        assert max(np.abs(p - ref[rows]).max() for p in both) < 1e-5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert passes and set(passes) == {TRUNK_CHUNK}  # the full passes did run compiled


def test_compile_is_for_fp32_on_the_cpu_only():
    assert "fp32 only" in compile_problem("bf16", "cpu")
    assert "cpu only" in compile_problem("fp32", "cuda")


def test_compile_with_another_precision_is_one_line_naming_both_variables(tmp_path):
    from dataflows.preflight import check_numbers
    from operators.oracle.surveys import ZTF
    from operators.runtime.config import Settings

    settings = Settings.from_env(ZTF, {"ORACLE_COMPILE": "true", "ORACLE_PRECISION": "bf16"})
    failed = [c for c in check_numbers(settings) if not c.ok]
    assert len(failed) == 1
    line = failed[0].error_line()
    assert "ORACLE_COMPILE" in line and "ORACLE_PRECISION" in line and " -> " in line and "\n" not in line


def test_the_flow_refuses_compile_without_a_cxx_compiler_before_it_starts(tmp_path):
    """Inductor looks for $CXX (default g++): pointing it at nothing is a machine without one."""
    from bench.omni import random_omni
    from tests.test_operator_experience import run_flow

    weights = tmp_path / "omni.pth"
    torch.save(random_omni().state_dict(), weights)
    code, out = run_flow("dataflows.ztf", tmp_path, ORACLE_ZTF_WEIGHTS=weights, ORACLE_COMPILE="true",
                         CXX=tmp_path / "no-such-g++")
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2, out
    assert len(lines) == 1, out
    assert lines[0].startswith("configuration error: ORACLE_COMPILE=true: no working C++ compiler"), lines[0]
    assert "install gcc and g++" in lines[0] and "unset ORACLE_COMPILE" in lines[0]
    assert not (tmp_path / "results" / "oracle_ztf_results.csv").exists()


def test_benchmark_report_keeps_the_fp32_target_on_eager_and_adds_compile_as_info():
    from bench.report import targets

    omni = {"alerts": 36, "batch": 32, "fp32": {"alerts_per_s": 22.0, "max_abs_dp": 0.0},
            "fp32+compile": {"alerts_per_s": 27.5, "max_abs_dp": 2e-7, "compile_s": 14.6}}
    rows = {t["what"]: t for t in targets({"machine": {"cores": 2}, "ratios": {}, "settings": {"alt_shards": 8},
                                  "workload": {"n": 1000, "pass_fraction": 0.9}, "modes": {"omni": omni}})}
    assert rows["Omni fp32 ≥ 25 alerts/s per core"]["verdict"] == "MISSED"  # eager, the default, decides
    compiled = next(t for w, t in rows.items() if "fp32+compile" in w)
    assert compiled["verdict"] == "info"
    assert "27.5 alerts/s" in compiled["value"] and "1.25× eager fp32" in compiled["value"]
    assert "2.0e-07" in compiled["value"] and "15 s" in compiled["value"]
    assert not any("fp32+compile" in w and "≥ 50" in w for w in rows)
