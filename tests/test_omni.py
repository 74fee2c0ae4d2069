"""ORACLE Omni (light curve + static + ConvNeXt-pico stamp network), randomly initialised."""

import numpy as np
import pytest
import torch

from models.oracle.loading import load_oracle
from models.oracle.networks import ModelLoadError, build_oracle, predict_proba

CONVNEXT = "image_spine.convnext."


@pytest.fixture(scope="module")
def omni_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_oracle("omni")
    state = model.state_dict()
    # timm initialises layer scale at 1e-6, which would make the image trunk a
    # near-identity; a trained-looking scale makes the image branch actually matter.
    for key in state:
        if key.endswith(".gamma"):
            state[key] = torch.full_like(state[key], 0.5)
    model.load_state_dict(state)
    path = tmp_path_factory.mktemp("omni") / "omni.pth"
    torch.save(model.state_dict(), path)
    return model, path


def inputs(lengths, seed=0, pad_to=None):
    rng = np.random.default_rng(seed)
    T = pad_to or max(lengths)
    ts = np.full((len(lengths), T, 5), 3.0, np.float32)  # non-zero padding must be ignored
    for i, n in enumerate(lengths):
        ts[i, :n] = rng.normal(size=(n, 5))
    static = rng.normal(size=(len(lengths), 30)).astype(np.float32)
    stamps = rng.normal(size=(len(lengths), 3, 63, 63)).astype(np.float32)
    return ts, np.asarray(lengths), static, stamps


def test_omni_saved_and_reloaded_strictly_gives_identical_output(omni_checkpoint):
    model, path = omni_checkpoint
    loaded = load_oracle(path)
    assert (loaded.kind, loaded.needs_stamp, loaded.needs_static, loaded.n_static, loaded.n_nodes) == \
        ("omni", True, True, 30, 10)
    args = inputs([6, 11])
    assert np.array_equal(predict_proba(model, *args), predict_proba(loaded, *args))
    probs = predict_proba(loaded, *args)
    np.testing.assert_allclose(probs[:, loaded.taxonomy.leaves].sum(axis=1), 1.0, atol=1e-9)


def test_stamp_changes_the_answer(omni_checkpoint):
    model, _ = omni_checkpoint
    ts, lengths, static, stamps = inputs([8])
    with_stamp = predict_proba(model, ts, lengths, static, stamps)
    blank = predict_proba(model, ts, lengths, static, np.zeros_like(stamps))
    assert not np.allclose(with_stamp, blank)


def test_parameter_names_and_shapes_are_timm_convnext_pico(omni_checkpoint):
    state = omni_checkpoint[0].state_dict()
    expected = {
        "stem.0.weight": (64, 3, 4, 4), "stem.0.bias": (64,), "stem.1.weight": (64,), "stem.1.bias": (64,),
        "stages.0.blocks.0.conv_dw.weight": (64, 1, 7, 7), "stages.0.blocks.0.conv_dw.bias": (64,),
        "stages.0.blocks.0.norm.weight": (64,), "stages.0.blocks.0.gamma": (64,),
        "stages.0.blocks.0.mlp.fc1.weight": (256, 64, 1, 1), "stages.0.blocks.0.mlp.fc2.weight": (64, 256, 1, 1),
        "stages.1.downsample.0.weight": (64,), "stages.1.downsample.1.weight": (128, 64, 2, 2),
        "stages.2.blocks.5.mlp.fc1.bias": (1024,), "stages.3.downsample.1.weight": (512, 256, 2, 2),
        "stages.3.blocks.1.mlp.fc2.weight": (512, 2048, 1, 1), "stages.3.blocks.1.mlp.fc2.bias": (512,),
        "stages.3.blocks.1.gamma": (512,),
        # ORACLE's replacement head (new_arch): pool, LayerNorm2d, flatten, 512->256->128->64->16 MLP
        "head.1.weight": (512,), "head.3.weight": (256, 512), "head.5.weight": (128, 256),
        "head.7.weight": (64, 128), "head.9.weight": (16, 64),
    }
    for name, shape in expected.items():
        assert tuple(state[CONVNEXT + name].shape) == shape, name
    blocks = {int(k.split(".")[3]): set() for k in state if k.startswith(CONVNEXT + "stages.")}
    for k in state:
        if ".blocks." in k and k.startswith(CONVNEXT):
            blocks[int(k.split(".")[3])].add(int(k.split(".")[5]))
    assert [len(blocks[i]) for i in range(4)] == [2, 2, 6, 2]
    assert not any(k.startswith(CONVNEXT + "stages.0.downsample") for k in state)
    assert sorted(k for k in state if k.startswith(CONVNEXT + "head.")) == sorted(
        CONVNEXT + f"head.{i}.{p}" for i in (1, 3, 5, 7, 9) for p in ("weight", "bias"))
    # upstream GRU_MD_MM_Improved wrapper: both spines keep their own output layers
    for name, shape in {"lc_md_spine.static_proj.weight": (64, 30), "lc_md_spine.residual_proj.weight": (64, 128),
                        "lc_md_spine.fc_out.weight": (10, 16), "image_spine.final_out.1.weight": (10, 16),
                        "mlp_head.0.weight": (16, 32), "final_out.1.weight": (10, 16)}.items():
        assert tuple(state[name].shape) == shape, name


def test_omni_rows_do_not_depend_on_the_batch(omni_checkpoint):
    model, _ = omni_checkpoint
    lengths = [2, 15, 7]
    ts, lengths, static, stamps = inputs(lengths, seed=1, pad_to=20)
    batched = predict_proba(model, ts, lengths, static, stamps)
    for i, n in enumerate(lengths):
        alone = predict_proba(model, ts[i:i + 1, :n], lengths[i:i + 1], static[i:i + 1], stamps[i:i + 1])
        np.testing.assert_allclose(batched[i], alone[0], atol=1e-5)


def test_omni_needs_stamps_and_rejects_a_mangled_checkpoint(omni_checkpoint, tmp_path):
    model, path = omni_checkpoint
    ts, lengths, static, _ = inputs([5])
    with pytest.raises(ValueError, match="stamps"):
        predict_proba(model, ts, lengths, static)
    state = torch.load(path, weights_only=True)
    del state[CONVNEXT + "stages.3.blocks.1.gamma"]
    torch.save(state, tmp_path / "mangled.pth")
    with pytest.raises(ModelLoadError, match="stages.3.blocks.1.gamma"):
        load_oracle(tmp_path / "mangled.pth")


def test_convnext_block_matches_timm_nchw_formulation():
    # timm's conv_mlp block: dwconv -> LayerNorm2d -> 1x1 conv -> GELU -> 1x1 conv -> *gamma -> +x.
    # Ours computes the MLP channels-last for speed; the two must agree.
    from models.oracle.convnext import ConvNeXtBlock

    torch.manual_seed(1)
    block = ConvNeXtBlock(64).eval()
    torch.nn.init.normal_(block.gamma)
    x = torch.randn(2, 64, 14, 14)
    with torch.no_grad():
        y = block.conv_dw(x)
        y = block.norm(y)  # LayerNorm2d over channels, NCHW
        y = torch.nn.functional.conv2d(y, block.mlp.fc1.weight, block.mlp.fc1.bias)
        y = torch.nn.functional.gelu(y)
        y = torch.nn.functional.conv2d(y, block.mlp.fc2.weight, block.mlp.fc2.bias)
        reference = y * block.gamma.reshape(1, -1, 1, 1) + x
        torch.testing.assert_close(block(x), reference, atol=1e-5, rtol=1e-5)


def test_image_head_gets_a_gelu_after_every_linear_but_the_last():
    from models.oracle.image import describe_image_head

    dropout_layout = ((3, 512, 256), (5, 256, 128), (8, 128, 64), (10, 64, 16))
    model = build_oracle("omni", image_head=dropout_layout)
    kinds = [type(m).__name__ for m in model.image_spine.convnext.head]
    assert kinds == ["GlobalAvgPool", "LayerNorm2d", "Flatten", "Linear", "GELU", "Linear", "GELU", "Identity",
                     "Linear", "GELU", "Linear"]
    assert describe_image_head(model.image_spine.head_layout) == \
        "image head Linear layers at 3,5,8,10: 512->256->128->64->16"
    assert build_oracle("omni", residual=False).lc_md_spine.residual_proj is None
    with pytest.raises(ValueError, match="at 3,4: 512->256->16"):
        build_oracle("omni", image_head=((3, 512, 256), (4, 256, 16)))
