"""Omni's fast image path (channels_last, batched forward passes of TRUNK_CHUNK stamps,
all-zero stamps computed once) gives the probabilities of the plain NCHW path to 1e-5;
bf16 and int8 are opt-in (tests/test_omni_precision.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.oracle.loading import configure_inference, load_oracle
from models.oracle.networks import build_oracle, predict_proba
from models.oracle.image import STAMP_SIZE


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    torch.manual_seed(3)
    model = build_oracle("omni")
    state = model.state_dict()
    for key in state:  # a trained-looking layer scale, so the image branch matters
        if key.endswith(".gamma"):
            state[key] = torch.full_like(state[key], 0.5)
    path = tmp_path_factory.mktemp("omni") / "omni.pth"
    torch.save(state, path)
    return load_oracle(path)


def batch(n, zero_rows=(), seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, n)
    ts = np.zeros((n, lengths.max(), 5), np.float32)
    for i, k in enumerate(lengths):
        ts[i, :k] = rng.normal(size=(k, 5))
    static = rng.normal(size=(n, 30)).astype(np.float32)
    stamps = rng.normal(size=(n, 3, 63, 63)).astype(np.float32)
    stamps[list(zero_rows)] = 0.0
    return ts, lengths, static, stamps


def plain_probabilities(model, ts, lengths, static, stamps):
    """The network as written upstream: NCHW, every stamp through the trunk."""
    ref = copy.deepcopy(model)
    ref.image_spine.convnext.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        st = torch.from_numpy(stamps).contiguous()
        image = ref.image_spine.convnext(F.interpolate(st, size=(STAMP_SIZE, STAMP_SIZE), mode="bilinear",
                                                       align_corners=False))
        lc = ref.lc_md_spine.latent(torch.from_numpy(ts), torch.from_numpy(lengths), torch.from_numpy(static))
        logits = ref.final_out(ref.mlp_head(torch.cat((lc, image), dim=1)))
    return ref.taxonomy.class_probabilities(logits.numpy())


def test_fast_fp32_path_matches_the_plain_network(omni):
    data = batch(20, zero_rows=(1, 4, 5))  # 17 real stamps: trunk passes of 8, 8 and 1 (TRUNK_CHUNK)
    fast = predict_proba(omni, *data)
    np.testing.assert_allclose(fast, plain_probabilities(omni, *data), atol=1e-5, rtol=0)
    # only zero stamps, and none
    for zero_rows in ((0, 1, 2), ()):
        data = batch(3, zero_rows=zero_rows, seed=7)
        np.testing.assert_allclose(predict_proba(omni, *data), plain_probabilities(omni, *data), atol=1e-5, rtol=0)


def test_zero_stamp_latent_follows_new_weights():
    torch.manual_seed(0)
    model = build_oracle("omni")
    zeros = torch.zeros((2, 3, 63, 63))
    with torch.inference_mode():
        before = model.image_spine.latent(zeros)
    state = model.state_dict()
    state["image_spine.convnext.head.9.bias"] = state["image_spine.convnext.head.9.bias"] + 1.0
    model.load_state_dict(state)
    with torch.inference_mode():
        after = model.image_spine.latent(zeros)
        fresh = model.image_spine._image_latent(zeros)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh, atol=1e-6, rtol=0)


def test_bf16_is_opt_in_and_close(omni):
    data = batch(6, zero_rows=(2,))
    fp32 = predict_proba(omni, *data)
    model = copy.deepcopy(omni)
    configure_inference(model, "bf16", "cpu")
    bf16 = predict_proba(model, *data)
    assert np.all(np.isfinite(bf16))
    np.testing.assert_allclose(bf16[:, model.taxonomy.leaves].sum(axis=1), 1.0, atol=1e-9)
    assert np.abs(bf16 - fp32).max() < 0.1  # reduced precision moves probabilities a little, not wholesale
    assert omni.image_spine.precision == "fp32"


def test_configure_inference_refuses_what_it_cannot_do(omni):
    with pytest.raises(ValueError, match="precision"):
        configure_inference(omni, "fp8")
    with pytest.raises(ValueError, match="device"):
        configure_inference(omni, "fp32", "tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            configure_inference(omni, "fp32", "cuda")
