"""Omni's image network: upstream's `ConvNeXt` (dev-ved30/Oracle, `architectures.py`).

A timm `convnext_pico` trunk (`models/oracle/convnext.py`) whose head upstream replaces
with pool, LayerNorm2d, flatten and a small MLP down to ORACLE's 16-d latent.
That MLP changed between upstream commits and the deployed Omni pins one that
is not public, so the head is built from the checkpoint: `image_head_layout`
reads its Linear layers, `check_image_head` refuses what no upstream head
could be, and `StampNetwork(n_nodes, layout)` builds the matching modules with
the checkpoint's parameter names, so it loads strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.oracle.convnext import GlobalAvgPool, Int8Linear, LayerNorm2d, convnext_pico, quantize_int8

LATENT_DIM = 16  # every ORACLE spine ends in a 16-d latent
STAMP_SIZE = 224  # upstream upsamples the 63x63 stamps to the ConvNeXt's native size
# Stamps per forward pass of the trunk. A 224x224 stamp's widest activation is 3 MB
# (56x56x256 fp32); 8 of them stay in the CPU's caches where a batch of 32 streams
# through memory: 1.35-1.55x faster on one core in fp32, bit-identical latents here.
TRUNK_CHUNK = 8
PRECISIONS = ("fp32", "bf16", "int8")
INPUT_STAMP = (3, 63, 63)  # the reference stamps the flow builds (operators/oracle/ztf_inputs.py)

# Omni's image head, as (head index, in, out) of each Linear. Upstream's `ConvNeXt`
# replaces timm's head with pool (0), LayerNorm2d (1), flatten (2), then an MLP:
#   new_arch today (96b175a on): Linear(512,256) GELU Linear(256,128) GELU Linear(128,64) GELU Linear(64,16)
#   earlier commits (48611ad..bea9934) add a Dropout after the second GELU: Linear at 3, 5, 8, 10.
# The deployed Omni pins a commit that is not public, so the head is built from the checkpoint.
NEW_ARCH_IMAGE_HEAD = ((3, 512, 256), (5, 256, 128), (7, 128, 64), (9, 64, LATENT_DIM))
IMAGE_HEAD_PREFIX = "image_spine.convnext.head."
_TRUNK_WIDTH = 512  # convnext_pico's last stage


def image_head_layout(state: dict, prefix: str = IMAGE_HEAD_PREFIX) -> tuple:
    """`(index, in, out)` of every Linear (2-d `head.N.weight`) in a checkpoint's image head."""
    layers = []
    for key, value in state.items():
        index = key[len(prefix):-len(".weight")] if key.startswith(prefix) and key.endswith(".weight") else ""
        if index.isdigit() and value.ndim == 2:
            layers.append((int(index), int(value.shape[1]), int(value.shape[0])))
    return tuple(sorted(layers))


def describe_image_head(layout) -> str:
    """`image head Linear layers at 3,5,7,9: 512->256->128->64->16`."""
    if not layout:
        return "image head without Linear layers"
    at = ",".join(str(i) for i, _, _ in layout)
    widths = "->".join([str(layout[0][1])] + [str(o) for _, _, o in layout])
    return f"image head Linear layers at {at}: {widths}"


def check_image_head(layout, state: dict | None = None, prefix: str = IMAGE_HEAD_PREFIX) -> None:
    """Raise ValueError naming the layout unless a GELU (and at most one Dropout) can sit
    between consecutive Linear layers that chain 512 -> ... -> 16 from head index 3."""
    def fail(why: str):
        raise ValueError(f"unknown layout of the Omni image head, found {describe_image_head(layout)} ({why}); "
                         "upstream's have Linear layers at 3,5,7,9: 512->256->128->64->16 (new_arch) or at "
                         "3,5,8,10 (a Dropout after the second GELU)")

    if not layout:
        fail(f"no {prefix}N.weight of a Linear layer")
    if layout[0][0] != 3:
        fail("the first Linear must follow pool, norm and flatten, at index 3")
    if layout[0][1] != _TRUNK_WIDTH:
        fail(f"the first Linear must take the {_TRUNK_WIDTH} features of the convnext_pico trunk")
    for (i, _, out), (j, nxt, _) in zip(layout, layout[1:]):
        if j - i not in (2, 3):
            fail(f"Linear {i} and {j} leave room for neither a GELU nor a GELU and a Dropout")
        if nxt != out:
            fail(f"Linear {i} gives {out} features but Linear {j} takes {nxt}")
    if layout[-1][2] != LATENT_DIM:
        fail(f"the last Linear must give the {LATENT_DIM}-d latent that Omni's fusion layer takes")
    linear = {i for i, _, _ in layout}
    for key in state or ():
        if key.startswith(prefix):
            index = key[len(prefix):].split(".")[0]
            if not (index == "1" or (index.isdigit() and int(index) in linear)):
                fail(f"a layer with parameters at index {index} ({key}) that no upstream head has")


class StampNetwork(nn.Module):
    """Upstream `ConvNeXt` image classifier: convnext_pico trunk + ORACLE's MLP head.

    `convnext.head` is upstream's replacement head (indices matter for the
    state_dict): 0 pool, 1 LayerNorm2d(512), 2 flatten, then the Linear layers of
    `head` (default: new_arch's, at 3, 5, 7, 9) with a GELU right after every
    Linear but the last and Identity in any other slot (upstream's Dropout, a
    no-op in eval). `final_out` (GELU, Linear(16, n_nodes)) is the stand-alone
    classifier's output layer: kept so checkpoints load strictly, unused by Omni.
    """

    def __init__(self, n_nodes: int, head=NEW_ARCH_IMAGE_HEAD):
        super().__init__()
        head = tuple(tuple(layer) for layer in head)
        check_image_head(head)
        self.head_layout = head
        linears = {i: nn.Linear(n_in, n_out) for i, n_in, n_out in head}
        layers = [GlobalAvgPool(), LayerNorm2d(_TRUNK_WIDTH), nn.Flatten(1)]
        for i in range(3, head[-1][0] + 1):
            layers.append(linears[i] if i in linears else nn.GELU() if i - 1 in linears else nn.Identity())
        self.convnext = convnext_pico(head=nn.Sequential(*layers))
        self.final_out = nn.Sequential(nn.GELU(), nn.Linear(LATENT_DIM, n_nodes))

        # channels_last: the blocks' LayerNorm and 1x1 layers then work on contiguous
        # NHWC without copies (~1.6x on CPU, same results). load_oracle converts again
        # after assigning the checkpoint's tensors.
        self.convnext.to(memory_format=torch.channels_last)
        self.precision = "fp32"  # see set_precision (opt-in bf16/int8, ORACLE_PRECISION)
        self._int8_head: tuple | None = None
        self._zero_latent_cache: dict = {}
        self._compiled = None  # see compile_trunk (opt-in torch.compile of fp32, ORACLE_COMPILE)

    def set_precision(self, precision: str) -> None:
        """fp32 (default); bf16: autocast of the trunk and head; int8: dynamic int8 of the
        blocks' 1x1 layers and the head's Linear layers (CPU only), from the current
        weights -- call it after loading them. The float parameters never change."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision != "fp32" and self._compiled is not None:
            raise ValueError(f"precision {precision}: the compiled trunk runs in fp32 only")
        for block in self.convnext.modules():
            if hasattr(block, "int8_mlp"):
                block.int8_mlp = None
        self._int8_head = None
        if precision == "int8":
            quantize_int8(self.convnext)
            self._int8_head = tuple(Int8Linear(m.weight, m.bias) if isinstance(m, nn.Linear) else m
                                    for m in self.convnext.head)
        self.precision = precision

    def compile_trunk(self, stamp_shape: tuple = INPUT_STAMP) -> None:
        """torch.compile (inductor) upsampling, trunk and head in fp32, for `[3, H, W]` stamps, then
        run it once so that the compile happens here, not at the first batch. The graph has
        one static shape, TRUNK_CHUNK stamps: full passes run compiled, a shorter last pass
        eager, so batches of any size reuse the one compiled graph."""
        if self.precision != "fp32":
            raise ValueError(f"torch.compile of the image network runs in fp32 only, not {self.precision}")
        self._compiled = torch.compile(self._trunk, dynamic=False, fullgraph=True)
        self._zero_latent_cache = {}
        param = self.convnext.stem[0].weight
        with torch.inference_mode():  # as predict_proba: grad mode is part of what a compiled graph checks
            self._image_latent(torch.zeros((TRUNK_CHUNK, *stamp_shape), dtype=param.dtype, device=param.device))

    def latent(self, stamps: torch.Tensor) -> torch.Tensor:
        """`[B, 3, H, W]` stamps -> `[B, 16]`; bilinear upsampling to 224x224 as upstream.

        Alerts without a reference stamp carry an all-zero one, whose latent is a
        constant of the weights: it is computed once and reused."""
        zero = ~stamps.flatten(1).any(dim=1)
        n_zero = int(zero.sum())
        if n_zero == 0:
            return self._image_latent(stamps)
        out = self._zero_latent(stamps).expand(stamps.shape[0], -1).clone()
        if n_zero < stamps.shape[0]:
            keep = torch.nonzero(~zero).squeeze(1)
            out[keep] = self._image_latent(stamps[keep])
        return out

    def _zero_latent(self, stamps: torch.Tensor) -> torch.Tensor:
        w = self.convnext.stem[0].weight  # a new or reloaded weight tensor invalidates the constant
        key = (tuple(stamps.shape[1:]), stamps.dtype, str(stamps.device), self.precision, id(w), w._version)
        hit = self._zero_latent_cache.get(key)
        if hit is None:
            hit = self._image_latent(stamps.new_zeros((1, *stamps.shape[1:])))
            self._zero_latent_cache = {key: hit}
        return hit

    def _image_latent(self, stamps: torch.Tensor) -> torch.Tensor:
        """Batched forward passes of TRUNK_CHUNK stamps (int8: 1): upsampling and trunk, channels_last."""
        # int8 quantizes each layer's input with one scale for the whole tensor: one stamp
        # per pass, so that an alert's result does not depend on the others in its batch.
        chunk = 1 if self.precision == "int8" else TRUNK_CHUNK
        if stamps.shape[0] > chunk:
            return torch.cat([self._image_latent(part) for part in stamps.split(chunk)])
        if self._compiled is not None and stamps.shape[0] == chunk:
            return self._compiled(stamps)
        # A shorter last chunk runs eager: compiling its shape would cost a recompile per
        # size (~13 s each), padding it to TRUNK_CHUNK would cost up to 7 stamps of work
        # (a 1-alert batch at 3 a.m. 8x slower). Eager and compiled agree to ~1e-7.
        return self._trunk(stamps)

    def _trunk(self, stamps: torch.Tensor) -> torch.Tensor:
        stamps = stamps.contiguous(memory_format=torch.channels_last)
        with torch.autocast(stamps.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            if stamps.shape[-2:] != (STAMP_SIZE, STAMP_SIZE):
                stamps = F.interpolate(stamps, size=(STAMP_SIZE, STAMP_SIZE), mode="bilinear", align_corners=False)
            if self._int8_head is None:
                return self.convnext(stamps).float()
            x = self.convnext.forward_features(stamps)
            for layer in self._int8_head:
                x = layer(x)
            return x
