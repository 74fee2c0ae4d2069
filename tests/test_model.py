"""ORACLE BTSv2 (ZTF) and LSST-lite: strict loading, probability structure, batch invariance."""

from pathlib import Path

import numpy as np
import pytest
import torch

from models.oracle.loading import load_oracle
from models.oracle.networks import ModelLoadError, build_oracle, predict_proba
from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY

DATA = Path(__file__).resolve().parent.parent / "data"
ZTF_PATH = DATA / "best_model_f1_ztf.pth"
LSST_PATH = DATA / "best_model_f1_lsst.pth"


@pytest.fixture(scope="module")
def ztf():
    return load_oracle(ZTF_PATH)


@pytest.fixture(scope="module")
def lsst():
    return load_oracle(LSST_PATH)


def random_batch(lengths, n_static, seed=0, pad_to=None, pad_value=0.0):
    """Light-curve-like random inputs, padded with `pad_value` past each length."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    T = pad_to or int(lengths.max())
    ts = np.full((len(lengths), T, 5), pad_value, np.float32)
    for i, n in enumerate(lengths):
        t = np.sort(rng.uniform(0, 60, n))
        ts[i, :n] = np.column_stack([t - t[0], rng.normal(19, 1, n), rng.uniform(0.02, 0.3, n),
                                     rng.choice([0.476, 0.6215], n), np.ones(n)])
    static = rng.normal(size=(len(lengths), n_static)).astype(np.float32) if n_static else None
    return ts, lengths, static


def test_shipped_weights_load_strictly(ztf, lsst):
    assert (ztf.kind, ztf.n_nodes, ztf.n_static, ztf.needs_static, ztf.needs_stamp) == ("btsv2", 10, 30, True, False)
    assert ztf.taxonomy is ZTF_TAXONOMY
    assert (lsst.kind, lsst.n_nodes, lsst.n_static, lsst.needs_static, lsst.needs_stamp) == ("lsst_lite", 26, 0, False, False)
    assert lsst.taxonomy is LSST_TAXONOMY
    for model, path in ((ztf, ZTF_PATH), (lsst, LSST_PATH)):
        assert not model.training
        saved = torch.load(path, map_location="cpu", weights_only=True)
        ours = model.state_dict()
        assert set(ours) == set(saved)
        assert all(torch.equal(ours[k], saved[k]) for k in saved)


def test_explicit_kind_and_wrong_kind():
    assert load_oracle(ZTF_PATH, kind="btsv2").kind == "btsv2"
    with pytest.raises(ModelLoadError, match="static_proj.weight"):
        load_oracle(LSST_PATH, kind="btsv2")
    with pytest.raises(ValueError):
        load_oracle(ZTF_PATH, kind="bts")


def test_missing_and_extra_keys_are_named(tmp_path):
    state = torch.load(ZTF_PATH, map_location="cpu", weights_only=True)
    del state["head_fc1.weight"]
    state["bogus_layer.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError) as err:
        load_oracle(path)
    message = str(err.value)
    assert "head_fc1.weight" in message and "bogus_layer.weight" in message
    assert str(path) in message


def test_wrong_shape_unreadable_and_absent_files(tmp_path):
    state = torch.load(ZTF_PATH, map_location="cpu", weights_only=True)
    state["head_fc2.weight"] = torch.zeros(64, 100)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ModelLoadError, match="head_fc2.weight"):
        load_oracle(tmp_path / "shape.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="junk.pth"):
        load_oracle(tmp_path / "junk.pth")
    with pytest.raises(ModelLoadError, match="not found"):
        load_oracle(tmp_path / "absent.pth")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="other.pth.*kind="):
        load_oracle(tmp_path / "other.pth")


@pytest.mark.parametrize("which", ["ztf", "lsst"])
def test_probabilities_follow_the_tree(which, request):
    model = request.getfixturevalue(which)
    tax = model.taxonomy
    ts, lengths, static = random_batch([3, 12, 30, 7], model.n_static, seed=1)
    with torch.inference_mode():
        logits = model(torch.from_numpy(ts), torch.from_numpy(lengths),
                       None if static is None else torch.from_numpy(static)).numpy()
    cond = tax.conditional_probabilities(logits)
    for group in tax.sibling_groups:
        np.testing.assert_allclose(cond[:, group].sum(axis=1), 1.0, atol=1e-12)
    probs = predict_proba(model, ts, lengths, static)
    assert probs.dtype == np.float64 and probs.shape == (4, len(tax))
    np.testing.assert_allclose(probs[:, 0], 1.0)
    for i in range(1, len(tax)):
        np.testing.assert_allclose(probs[:, i], cond[:, i] * probs[:, tax.parent[i]], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(probs[:, tax.leaves].sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("which", ["ztf", "lsst"])
def test_rows_do_not_depend_on_the_batch(which, request):
    model = request.getfixturevalue(which)
    lengths = [1, 5, 40, 17, 2, 40, 23]
    # Padding is NaN on purpose: the network must only look at each row's own steps.
    ts, lengths, static = random_batch(lengths, model.n_static, seed=2, pad_to=48, pad_value=np.nan)
    batched = predict_proba(model, ts, lengths, static)
    for i, n in enumerate(lengths):
        alone = predict_proba(model, ts[i:i + 1, :n], lengths[i:i + 1], None if static is None else static[i:i + 1])
        np.testing.assert_allclose(batched[i], alone[0], atol=1e-5)
    assert np.all(np.isfinite(batched))
    # A different neighbour and padding length leaves a row unchanged too.
    pair = predict_proba(model, ts[[2, 0], :45], lengths[[2, 0]], None if static is None else static[[2, 0]])
    np.testing.assert_allclose(pair, batched[[2, 0]], atol=1e-5)


def test_lsst_lite_is_deterministic(lsst):
    ts, lengths, _ = random_batch([9, 30, 4], 0, seed=3)
    first = predict_proba(lsst, ts, lengths)
    second = predict_proba(lsst, ts, lengths)
    assert np.array_equal(first, second)


def test_lite_with_learnt_residual_loads(tmp_path):
    model = build_oracle("lsst_lite", residual=True)
    torch.save(model.state_dict(), tmp_path / "lite_res.pth")
    assert load_oracle(tmp_path / "lite_res.pth").residual_proj is not None


def test_btsv2_without_residual_proj_loads_as_upstreams_code_has_it(tmp_path):
    # new_arch's GRU_MD_Improved has no residual_proj; the shipped BTSv2 weights have one.
    state = build_oracle("btsv2").state_dict()
    del state["residual_proj.weight"]
    torch.save(state, tmp_path / "no_res.pth")
    assert load_oracle(tmp_path / "no_res.pth").residual_proj is None


def test_plausible_ztf_light_curve_gives_sane_probabilities(ztf):
    # A rising-then-fading transient in g and r (days since first detection, mag,
    # mag error, mean wavelength in microns, detection flag); static features unknown (-9).
    t = np.array([0.0, 0.9, 2.1, 3.0, 5.2, 7.9, 10.1, 14.3, 18.0, 25.5])
    mag = np.array([19.8, 19.5, 19.0, 18.8, 18.5, 18.4, 18.6, 18.9, 19.3, 19.9])
    band = np.array([0.476, 0.6215] * 5)
    ts = np.column_stack([t, mag, np.full(10, 0.08), band, np.ones(10)]).astype(np.float32)[None]
    static = np.full((1, 30), -9.0, np.float32)
    probs = predict_proba(ztf, ts, np.array([10]), static)
    assert np.all(np.isfinite(probs)) and np.all((probs >= 0) & (probs <= 1))
    assert abs(probs[0, ZTF_TAXONOMY.leaves].sum() - 1) < 1e-9
    assert len(ZTF_TAXONOMY.predicted_leaf(probs)) == 1


def test_bad_inputs_are_rejected(ztf):
    ts, lengths, static = random_batch([4, 6], 30)
    with pytest.raises(ValueError, match="static"):
        predict_proba(ztf, ts, lengths)
    with pytest.raises(ValueError, match="length"):
        predict_proba(ztf, ts, np.array([0, 6]), static)
    with pytest.raises(ValueError, match="length"):
        predict_proba(ztf, ts, np.array([4, 7]), static)
    with pytest.raises(ValueError, match="ts"):
        predict_proba(ztf, ts[..., :4], lengths, static)
    assert predict_proba(ztf, ts[:0], lengths[:0], static[:0]).shape == (0, 10)


@pytest.mark.parametrize("which", ["ztf", "lsst"])
def test_fast_gru_matches_torchs_gru(which, request):
    """The GRU and attention of models/oracle/gru.py (packed, both directions per matmul,
    tanh as sigmoid, state kept as (h + 1) / 2) against torch's own packed `nn.GRU` and masked
    attention over the padded output: pooled features within float32 rounding; probabilities
    match each row alone (torch's GRU, no padding) and any order of the batch to float32
    rounding (2e-6: torch's GRU alone gives up to 1.3e-6 between batched and alone on such
    batches, 1.0e-6 against this one)."""
    model = request.getfixturevalue(which)
    lengths = [1, 3, 4, 5, 9, 70, 16, 17, 33, 64, 65, 2, 120, 8, 1, 120]
    ts, lengths, static = random_batch(lengths, model.n_static, seed=5)
    ts_t, len_t = torch.from_numpy(ts), torch.from_numpy(lengths)
    with torch.inference_mode():
        fast = model._pooled_sequence(ts_t, len_t)
        reference = model._pooled_reference(ts_t, len_t)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    assert float((fast - reference).abs().max()) > 0  # the two paths really are different code
    batched = predict_proba(model, ts, lengths, static)
    for i, n in enumerate(lengths):
        alone = predict_proba(model, ts[i:i + 1, :n], lengths[i:i + 1], None if static is None else static[i:i + 1])
        np.testing.assert_allclose(batched[i], alone[0], atol=2e-6, rtol=0)
    order = np.random.default_rng(1).permutation(len(lengths))
    shuffled = predict_proba(model, ts[order], lengths[order], None if static is None else static[order])
    np.testing.assert_allclose(shuffled, batched[order], atol=2e-6, rtol=0)


@pytest.mark.parametrize("which", ["ztf", "lsst"])
def test_fast_gru_is_as_close_to_float64_as_torchs_own_gru(which, request, monkeypatch):
    """The bundled real alerts, in one batch as the flow batches them: the fast path's
    probabilities against the same network in float64 (torch's GRU: an evaluation that shares
    no arithmetic with models/oracle/gru.py) are no further off than torch's own float32 GRU,
    batched or one alert at a time. Float32 over LSST's 391-point series is 1-2e-6 off in every
    arrangement of the sums (torch's GRU batched 1.0e-6, alone 2.3e-6; this path 1.9e-6), so
    two float32 paths can differ by 2e-6 while both are right to float32."""
    from bench.backends import bundled_inputs
    from operators.oracle.surveys import LSST, ZTF

    model = request.getfixturevalue(which)
    ts, lengths, static, _ = bundled_inputs({"ztf": ZTF, "lsst": LSST}[which])
    exact = load_oracle({"ztf": ZTF_PATH, "lsst": LSST_PATH}[which]).double().eval()
    exact._pooled_sequence = exact._pooled_reference  # torch's nn.GRU, in float64

    def f64(a):
        return None if a is None else torch.from_numpy(a.astype(np.float64))

    with torch.inference_mode():
        reference = model.taxonomy.class_probabilities(
            exact(f64(ts), torch.from_numpy(lengths.astype(np.int64)), f64(static)).numpy())
    fast = predict_proba(model, ts, lengths, static)
    alone = np.concatenate([predict_proba(model, ts[i:i + 1, :n], lengths[i:i + 1],
                                          None if static is None else static[i:i + 1])
                            for i, n in enumerate(lengths)])  # one series: torch's GRU
    monkeypatch.setattr(model, "_pooled_sequence", model._pooled_reference)
    batched = predict_proba(model, ts, lengths, static)  # torch's packed GRU over the batch
    monkeypatch.undo()
    assert float(np.abs(predict_proba(model, ts, lengths, static) - fast).max()) == 0  # the fast path is back
    torch_error = max(float(np.abs(alone - reference).max()), float(np.abs(batched - reference).max()))
    fast_error = float(np.abs(fast - reference).max())
    assert 0 < fast_error <= max(torch_error, 1e-6) and fast_error < 3e-6, (fast_error, torch_error)


def test_fast_gru_follows_the_weights_and_leaves_gradients_to_torch():
    """The fast path's rearranged weights are rebuilt when the parameters change; with
    gradients wanted, the network runs torch's GRU (the fast path's weights are constants)."""
    model = build_oracle("btsv2")
    ts, lengths, static = random_batch([7, 3, 12], 30, seed=4)
    ts_t, len_t = torch.from_numpy(ts), torch.from_numpy(lengths)
    with torch.inference_mode():
        before = model._pooled_sequence(ts_t, len_t)
    with torch.no_grad():
        model.gru.weight_hh_l1_reverse.mul_(0.5)
    with torch.inference_mode():
        after = model._pooled_sequence(ts_t, len_t)
        torch.testing.assert_close(after, model._pooled_reference(ts_t, len_t), atol=1e-5, rtol=0)
    assert float((after - before).abs().max()) > 1e-3
    import copy

    copied = copy.deepcopy(model)  # the laid-out weights live beside the module, not in it
    with torch.inference_mode():
        torch.testing.assert_close(copied._pooled_sequence(ts_t, len_t), after, atol=0, rtol=0)
    pooled = model._pooled_sequence(ts_t, len_t)  # grad mode, parameters requiring grad
    pooled.sum().backward()
    assert model.gru.weight_hh_l0.grad is not None and float(model.gru.weight_hh_l0.grad.abs().sum()) > 0
