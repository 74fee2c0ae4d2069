"""ConvNeXt backbone in plain torch, parameter-compatible with timm's `convnext_pico`.

timm itself cannot be used here (it imports torchvision, which does not import in
this environment), but ORACLE's Omni checkpoints were trained with
`timm.create_model("hf_hub:mwalmsley/zoobot-encoder-convnext_pico")`. This module
reproduces timm's module tree exactly so such a `state_dict` loads with
`strict=True`:

    stem.0            Conv2d(3, 64, k=4, s=4)
    stem.1            LayerNorm2d(64)
    stages.N.downsample.0 / .1   LayerNorm2d(C_in), Conv2d(C_in, C_out, k=2, s=2)  (N = 1..3)
    stages.N.blocks.M.conv_dw    depthwise Conv2d(C, C, k=7, pad=3)
    stages.N.blocks.M.norm       LayerNorm2d(C)
    stages.N.blocks.M.mlp.fc1    Conv2d(C, 4C, k=1)    (`convnext_pico` uses conv_mlp=True,
    stages.N.blocks.M.mlp.fc2    Conv2d(4C, C, k=1)     so these are 1x1 convs, not Linear)
    stages.N.blocks.M.gamma      layer scale, shape [C]

Depths 2-2-6-2 and widths 64-128-256-512 as timm's `convnext_pico`; all
LayerNorm2d use eps=1e-6 and GELU is the exact (erf) form, as in timm.
Stage 0 has no downsample (the 4x4 stem already strides by 4), again as timm.
Stochastic depth and dropout are inference no-ops and are left out.

Opt-in int8 (`quantize_int8`, ORACLE_PRECISION=int8): each block's two 1x1 layers
then run as dynamic int8 matmuls on packed copies of their weights; the float
parameters stay, so names, shapes and `state_dict` are untouched.

Input: images `[B, 3, H, W]` float32. `ConvNeXt.forward_features` returns the
last stage's map `[B, 512, H/32, W/32]`; `forward` applies `self.head` to it
(the caller installs the head; see `GlobalAvgPool`, `LayerNorm2d`).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

PICO_DEPTHS = (2, 2, 6, 2)
PICO_DIMS = (64, 128, 256, 512)


class Int8Linear:
    """A Linear layer as a dynamic int8 matmul (torch's quantized CPU ops).

    Weights: symmetric int8 per output channel, packed once for the CPU's engine
    (fbgemm/x86, or qnnpack on ARM). Activations: quantized per call from their
    own min and max (7 bits, `reduce_range`, as torch's dynamic quantization does
    on x86), the output comes back in fp32 with the bias added. Not an `nn.Module`
    on purpose: it stays out of `state_dict`, so checkpoints load as before."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        w = weight.detach().flatten(1).float().cpu()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        with warnings.catch_warnings():
            # torch 2.1x marks quantized tensor creation as deprecated; it still works, and a
            # torch without it fails here, in configure_inference, before the flow starts.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(w, scale, torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float().cpu())
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    def int8_weight(self) -> torch.Tensor:
        """The packed weight as torch holds it (a qint8 tensor): what the matmul really uses."""
        return torch.ops.quantized.linear_unpack(self.packed)[0]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (timm's `LayerNorm2d`)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GlobalAvgPool(nn.Module):
    """Average over H and W, keeping `[B, C, 1, 1]` (timm's SelectAdaptivePool2d('avg'))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class ConvMlp(nn.Module):
    """timm `Mlp(use_conv=True)`: 1x1 conv -> GELU -> 1x1 conv (names fc1, fc2)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, kernel_size=1)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv -> LayerNorm -> MLP (x4) -> layer scale, plus identity shortcut."""

    def __init__(self, dim: int, mlp_ratio: int = 4, ls_init_value: float = 1e-6):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.mlp = ConvMlp(dim, mlp_ratio * dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value))
        self.int8_mlp: tuple | None = None  # (fc1, fc2) as Int8Linear once quantize_int8 ran

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        # Same maths as timm's NCHW path (LayerNorm2d, 1x1 convs), done channels-last:
        # one layer_norm and two matmuls over [B*H*W, C] are much faster on CPU than
        # 1x1 convolutions, and the weights keep their conv shapes for strict loading.
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        if self.int8_mlp is not None:
            x = self.int8_mlp[1](F.gelu(self.int8_mlp[0](x)))
        else:
            fc1, fc2 = self.mlp.fc1, self.mlp.fc2
            x = F.linear(x, fc1.weight.flatten(1), fc1.bias)
            x = F.gelu(x)
            x = F.linear(x, fc2.weight.flatten(1), fc2.bias)
        x = x * self.gamma
        return x.permute(0, 3, 1, 2) + shortcut


class ConvNeXtStage(nn.Module):
    """Optional 2x2 stride-2 downsample (norm then conv), then `depth` blocks."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, downsample: bool):
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim), nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(out_dim) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(nn.Module):
    """timm-named ConvNeXt trunk (`stem`, `stages`) with a replaceable `head`.

    `head` defaults to identity; ORACLE installs its own (pool -> norm -> flatten -> MLP).
    """

    def __init__(self, depths=PICO_DEPTHS, dims=PICO_DIMS, in_chans: int = 3, head: nn.Module | None = None):
        super().__init__()
        self.num_features = dims[-1]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))
        stages, prev = [], dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(ConvNeXtStage(prev, dim, depth, downsample=i > 0))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.head = head if head is not None else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's init (truncated normal, std 0.02, zero bias); only matters for
        # untrained models, since real use loads a checkpoint over it.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def quantize_int8(model: ConvNeXt) -> int:
    """Run every block's 1x1 layers (`mlp.fc1`, `mlp.fc2`) in dynamic int8 from now on;
    returns how many layers were packed. The float weights are left as they are."""
    n = 0
    for block in model.modules():
        if isinstance(block, ConvNeXtBlock):
            block.int8_mlp = (Int8Linear(block.mlp.fc1.weight, block.mlp.fc1.bias),
                              Int8Linear(block.mlp.fc2.weight, block.mlp.fc2.bias))
            n += 2
    return n


def convnext_pico(head: nn.Module | None = None) -> ConvNeXt:
    """timm `convnext_pico` trunk (depths 2-2-6-2, widths 64-128-256-512), random weights."""
    return ConvNeXt(PICO_DEPTHS, PICO_DIMS, head=head)
