"""Omni checkpoints in upstream's layouts load strictly and classify the bundled ZTF sample.

Key names and shapes are written out here from upstream's code, not taken from
our modules: dev-ved30/Oracle `src/oracle/architectures.py` (`GRU_MD_MM_Improved`
= `lc_md_spine` `GRU_MD_Improved` + `image_spine` `ConvNeXt` + `mlp_head` +
`final_out`) and timm's `convnext_pico` (depths 2-2-6-2, widths 64-128-256-512,
`conv_mlp=True`: LayerNorm2d norms and 1x1-conv MLPs).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bytewax.testing import run_main

from dataflows.oracle import build_flow
from models.oracle.loading import load_oracle
from models.oracle.networks import ModelLoadError
from models.oracle.taxonomy import ZTF_TAXONOMY
from operators.io.deadletter import read_dead_letters
from operators.oracle.results import read_results
from operators.oracle.surveys import ZTF
from tests.helpers import sample_truth, settings_for

# Upstream ConvNeXt.head: 0 global_pool, 1 norm (LayerNorm2d 512), 2 flatten, then Linear/GELU[/Dropout].
UPSTREAM_IMAGE_HEADS = {
    # new_arch since 96b175a: Linear(512,256) GELU Linear(256,128) GELU Linear(128,64) GELU Linear(64,16)
    "new_arch": {3: (256, 512), 5: (128, 256), 7: (64, 128), 9: (16, 64)},
    # 48611ad..bea9934: the same with nn.Dropout after the second GELU
    "dropout": {3: (256, 512), 5: (128, 256), 8: (64, 128), 10: (16, 64)},
}


def timm_convnext_pico() -> dict:
    keys = {"stem.0.weight": (64, 3, 4, 4), "stem.0.bias": (64,), "stem.1.weight": (64,), "stem.1.bias": (64,)}
    prev = 64
    for stage, (depth, c) in enumerate(zip((2, 2, 6, 2), (64, 128, 256, 512))):
        if stage > 0:
            keys |= {f"stages.{stage}.downsample.0.weight": (prev,), f"stages.{stage}.downsample.0.bias": (prev,),
                     f"stages.{stage}.downsample.1.weight": (c, prev, 2, 2), f"stages.{stage}.downsample.1.bias": (c,)}
        for block in range(depth):
            p = f"stages.{stage}.blocks.{block}."
            keys |= {p + "conv_dw.weight": (c, 1, 7, 7), p + "conv_dw.bias": (c,),
                     p + "norm.weight": (c,), p + "norm.bias": (c,),
                     p + "mlp.fc1.weight": (4 * c, c, 1, 1), p + "mlp.fc1.bias": (4 * c,),
                     p + "mlp.fc2.weight": (c, 4 * c, 1, 1), p + "mlp.fc2.bias": (c,),
                     p + "gamma": (c,)}
        prev = c
    return keys


def gru_md_improved(residual: bool) -> dict:
    """Upstream `GRU_MD_Improved(ts 5, static 30, hidden 128, 2 layers)`; the deployed BTSv2
    weights add `residual_proj` (Linear 128->64, no bias), new_arch's code has none."""
    keys = {}
    for layer, n_in in ((0, 5), (1, 256)):
        for direction in ("", "_reverse"):
            keys |= {f"gru.weight_ih_l{layer}{direction}": (384, n_in), f"gru.weight_hh_l{layer}{direction}": (384, 128),
                     f"gru.bias_ih_l{layer}{direction}": (384,), f"gru.bias_hh_l{layer}{direction}": (384,)}
    keys |= {
        "attn_W.weight": (128, 256), "attn_W.bias": (128,), "attn_v.weight": (1, 128),
        "ts_proj.weight": (128, 256), "ts_proj.bias": (128,), "ts_ln.weight": (128,), "ts_ln.bias": (128,),
        "static_proj.weight": (64, 30), "static_proj.bias": (64,),
        "static_bn.weight": (64,), "static_bn.bias": (64,), "static_bn.running_mean": (64,),
        "static_bn.running_var": (64,), "static_bn.num_batches_tracked": (),
        "merge_proj.weight": (128, 192), "merge_proj.bias": (128,),
        "head_fc1.weight": (128, 128), "head_fc1.bias": (128,), "head_fc2.weight": (64, 128), "head_fc2.bias": (64,),
        "head_fc3.weight": (32, 64), "head_fc3.bias": (32,), "latent_proj.weight": (16, 32), "latent_proj.bias": (16,),
        "fc_out.weight": (10, 16), "fc_out.bias": (10,),
        "head_ln1.weight": (128,), "head_ln1.bias": (128,), "head_ln2.weight": (64,), "head_ln2.bias": (64,),
    }
    if residual:
        keys["residual_proj.weight"] = (64, 128)
    return keys


def upstream_omni(head: dict, residual: bool) -> dict:
    keys = {"lc_md_spine." + k: v for k, v in gru_md_improved(residual).items()}
    keys |= {"image_spine.convnext." + k: v for k, v in timm_convnext_pico().items()}
    keys |= {"image_spine.convnext.head.1.weight": (512,), "image_spine.convnext.head.1.bias": (512,)}
    for index, (n_out, n_in) in head.items():
        keys |= {f"image_spine.convnext.head.{index}.weight": (n_out, n_in),
                 f"image_spine.convnext.head.{index}.bias": (n_out,)}
    keys |= {"image_spine.final_out.1.weight": (10, 16), "image_spine.final_out.1.bias": (10,),
             "mlp_head.0.weight": (16, 32), "mlp_head.0.bias": (16,),
             "final_out.1.weight": (10, 16), "final_out.1.bias": (10,)}
    return keys


def random_state(keys: dict, seed: int) -> dict:
    """Random tensors of trained-looking scale for every key."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in keys.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("gamma"):
            state[name] = 0.5 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and name.endswith(".weight"):  # LayerNorm / BatchNorm scale
            state[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) <= 1:
            state[name] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = torch.Size(shape[1:]).numel()
            state[name] = torch.randn(shape, generator=g) / fan_in ** 0.5
    return state


@pytest.fixture(scope="module", params=[("new_arch", False), ("dropout", True)], ids=["new_arch", "dropout+residual"])
def upstream_checkpoint(request, tmp_path_factory):
    layout, residual = request.param
    keys = upstream_omni(UPSTREAM_IMAGE_HEADS[layout], residual)
    state = random_state(keys, seed=len(layout))
    path = tmp_path_factory.mktemp(layout) / "best_model_f1_ztf.pth"
    torch.save(state, path)
    return layout, residual, keys, state, path


def test_upstream_layouts_load_strictly_and_compute_upstreams_head(upstream_checkpoint):
    layout, residual, keys, state, path = upstream_checkpoint
    model = load_oracle(path)
    assert model.kind == "omni"
    loaded = model.state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == keys
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    assert (model.lc_md_spine.residual_proj is not None) == residual

    # The head, computed here from the checkpoint's tensors as upstream's nn.Sequential does:
    # pool, LayerNorm2d(eps 1e-6), flatten, then Linear with a GELU after all but the last.
    features = torch.randn(3, 512, 7, 7, generator=torch.Generator().manual_seed(1))
    h = "image_spine.convnext.head."
    x = F.layer_norm(features.mean(dim=(2, 3)), (512,), state[h + "1.weight"], state[h + "1.bias"], eps=1e-6)
    indices = sorted(UPSTREAM_IMAGE_HEADS[layout])
    for i in indices:
        x = F.linear(x, state[f"{h}{i}.weight"], state[f"{h}{i}.bias"])
        if i != indices[-1]:
            x = F.gelu(x)
    with torch.no_grad():
        torch.testing.assert_close(model.image_spine.convnext.head(features), x, atol=1e-5, rtol=1e-5)


def test_upstream_layouts_classify_the_bundled_sample(tmp_path, upstream_checkpoint):
    layout, _, _, _, path = upstream_checkpoint
    passing, failing, _ = sample_truth(ZTF)
    leaves = [ZTF_TAXONOMY.nodes[i] for i in ZTF_TAXONOMY.leaves]
    stamps = {}
    for filter_name, expected in (("rcfdeep_partnership_ztf", passing), ("ztf_other_filter", failing)):
        settings = settings_for(ZTF, tmp_path / filter_name, ORACLE_ZTF_WEIGHTS=path, ORACLE_FILTER=filter_name)
        run_main(build_flow(ZTF, settings))
        rows = read_results(settings.results_csv)
        dead = [d for d in read_dead_letters(settings.deadletters) if d["stage"] != "parse"]
        assert [(d["objectId"], d["reason"]) for d in dead] == \
            ([("ZTF26orphanxx", "no aux document")] if filter_name.startswith("rcf") else [])
        assert set(rows.candid) == expected - {d["candid"] for d in dead}
        assert rows.model.str.contains("omni").all()
        assert ((rows[leaves].sum(axis=1) - 1).abs() < 1e-4).all()
        stamps |= dict(zip(rows.objectId, rows.stamp))
    # every alert classified, including the one without a template and the CCD-edge one
    assert stamps.pop("ZTF26aarabyi") == "none"
    assert stamps.pop("ZTF26aaoqcvo") == "bad shape 58x63"
    assert set(stamps.values()) == {"template"}


def unknown_layout(tmp_path, edit) -> str:
    state = random_state(upstream_omni(UPSTREAM_IMAGE_HEADS["new_arch"], residual=True), seed=3)
    edit(state)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(ModelLoadError) as err:
        load_oracle(tmp_path / "odd.pth")
    return str(err.value)


def test_an_unknown_image_head_is_refused_naming_the_layout_found(tmp_path):
    h = "image_spine.convnext.head."

    def adjacent(state):  # Linear layers at 3 and 4: no room for the GELU
        for i, j in ((5, 4), (7, 6), (9, 8)):
            state[f"{h}{j}.weight"], state[f"{h}{j}.bias"] = state.pop(f"{h}{i}.weight"), state.pop(f"{h}{i}.bias")

    message = unknown_layout(tmp_path, adjacent)
    assert "image head Linear layers at 3,4,6,8: 512->256->128->64->16" in message
    assert "odd.pth" in message

    def three_layers(state):  # a head whose last Linear does not give the 16-d latent
        for k in [k for k in state if k.startswith(h) and not k.startswith(h + "1.")]:
            del state[k]
        for i, (n_out, n_in) in {3: (256, 512), 6: (64, 256), 9: (32, 64)}.items():
            state[f"{h}{i}.weight"], state[f"{h}{i}.bias"] = torch.zeros(n_out, n_in), torch.zeros(n_out)

    assert "image head Linear layers at 3,6,9: 512->256->64->32" in unknown_layout(tmp_path, three_layers)

    def batchnorm(state):  # a layer with parameters where upstream has a GELU
        state[f"{h}4.weight"], state[f"{h}4.bias"] = torch.ones(256), torch.zeros(256)

    assert f"{h}4.weight" in unknown_layout(tmp_path, batchnorm)
