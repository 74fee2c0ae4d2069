"""ORACLE hierarchical classifiers (CPU inference): BTSv2 (ZTF), LSST-lite, Omni.

Re-implementation of the networks of ORACLE (dev-ved30/Oracle, branch new_arch,
`architectures.py`), written to be `state_dict`-compatible with its checkpoints:

* "btsv2"     `GRU_MD_Improved`: light curve + 30 static features -> ZTF taxonomy.
* "lsst_lite" `GRU_Improved`: light curve only -> ELAsTiCC/LSST taxonomy.
* "omni"      `GRU_MD_MM_Improved`: the BTSv2 network plus a ConvNeXt-pico image
              network on the 3x63x63 reference stamp (`models/oracle/image.py`, its
              head built from the checkpoint), fused by a small MLP.

Shared light-curve network (all ops in this order; dropout is an eval no-op and
is left out):

    GRU 5->128, 2 layers, bidirectional, over the unpadded steps only
    additive attention pool: a_t = softmax_t(v . tanh(W h_t + b)), padded steps masked
    ts     = GELU(LayerNorm(Linear 256->128))
    static = ReLU(BatchNorm(Linear 30->64))                  (btsv2 only)
    x      = GELU(Linear 192->128 (cat[ts, static]))        (btsv2; lite: x = ts)
    h      = GELU(LN(fc1 x)); h = GELU(LN(fc2 h)) + residual_proj(x)   (128->128->64)
    latent = latent_proj(GELU(fc3 h))                       (64->32->16)
    logits = fc_out(ReLU(latent))                           (16->n_nodes)

The final ReLU is upstream's (`GRU_MD_Improved.forward`: `x = self.relu(latent)`),
not the GELU used everywhere else in the head; Omni consumes `latent` before it.

Inputs: `ts [B, T, 5]` float32, zero-padded to the batch's longest series;
`lengths [B]` int (1 <= length <= T); `static [B, 30]`; `stamps [B, 3, 63, 63]`.
Output of `forward`: logits `[B, n_nodes]` in the taxonomy's level order;
`predict_proba` turns them into class probabilities.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.oracle.gru import GruWeights, gru_weights, pooled_sequence
from models.oracle.image import LATENT_DIM, NEW_ARCH_IMAGE_HEAD, StampNetwork
from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY, Taxonomy

KINDS = ("btsv2", "lsst_lite", "omni")
# Light-curve length groups of one ONNX Runtime run (<=4, <=8, ..., <=64, longer): its GRU op steps
# every row up to the longest (models/oracle/onnx_backend.py). The torch path needs none (gru.py).
LENGTH_BUCKETS = (4, 8, 16, 32, 64)
# Each light-curve network's weights as gru.py lays them out, beside the module rather than in
# it: a copy (copy.deepcopy) or a pickle of the module neither carries nor shares them.
_GRU_WEIGHTS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
# The taxonomy each network was published with: what a caller without a survey gets.
# A flow passes its survey's taxonomy instead (`operators/oracle/surveys.py`).
DEFAULT_TAXONOMIES = {"btsv2": ZTF_TAXONOMY, "lsst_lite": LSST_TAXONOMY, "omni": ZTF_TAXONOMY}


class ModelLoadError(Exception):
    """A checkpoint could not be read or does not match the ORACLE network it should fill."""


class TaxonomyMismatch(ModelLoadError):
    """A checkpoint's output width is not the node count of the taxonomy it is loaded with."""


def taxonomy_for(kind: str, n_nodes: int | None = None, taxonomy: Taxonomy | None = None) -> Taxonomy:
    """The taxonomy of a `kind` network with `n_nodes` outputs: `taxonomy` when given (its
    node count must be `n_nodes`). Without one (a caller with no survey at hand), the
    kind's published taxonomy (`DEFAULT_TAXONOMIES`), else the published one of that width."""
    if taxonomy is not None:
        if n_nodes is not None and n_nodes != len(taxonomy):
            raise ValueError(f"the network has {n_nodes} outputs, but the {taxonomy.name} taxonomy has "
                             f"{len(taxonomy)} nodes")
        return taxonomy
    published = [DEFAULT_TAXONOMIES[kind], *DEFAULT_TAXONOMIES.values()]
    for candidate in published:
        if n_nodes is None or n_nodes == len(candidate):
            return candidate
    known = ", ".join(sorted({f"{len(t)} ({t.name})" for t in published}))
    raise ValueError(f"the network has {n_nodes} outputs and no taxonomy was given; the published ones "
                     f"have {known} nodes: pass the checkpoint's taxonomy (a survey's `taxonomy`)")


class OracleModel(nn.Module):
    """Common interface of the ORACLE networks.

    Attributes: `kind` (one of KINDS), `taxonomy`, `n_nodes`, `n_static` (static
    features expected, 0 if none), `needs_static`, `needs_stamp`, `ts_dim` (5).
    `forward(ts, lengths, static=None, stamps=None)` returns logits `[B, n_nodes]`.
    """

    kind: str
    taxonomy: Taxonomy
    n_static: int
    needs_stamp: bool
    ts_dim: int

    @property
    def needs_static(self) -> bool:
        return self.n_static > 0

    @property
    def n_nodes(self) -> int:
        return len(self.taxonomy)


class LightCurveOracle(OracleModel):
    """ORACLE light-curve network: `GRU_MD_Improved` (n_static > 0) or `GRU_Improved` (n_static == 0).

    The light-curve-only checkpoints carry no `residual_proj`: upstream's
    `GRU_Improved`, when that layer is absent, draws a fresh random 128->64
    projection on every forward pass, so its outputs change from call to call.
    Here the residual term is skipped instead, i.e. replaced by its expectation
    over a zero-mean random projection (zero); outputs are deterministic.
    `residual=True` (with n_static == 0) would add a learnt `residual_proj`,
    for checkpoints that have one.
    """

    def __init__(self, taxonomy: Taxonomy, n_static: int = 30, ts_dim: int = 5, gru_hidden: int = 128,
                 gru_layers: int = 2, residual: bool | None = None, kind: str | None = None):
        super().__init__()
        self.taxonomy = taxonomy
        n_nodes = len(taxonomy)
        self.kind = kind or ("btsv2" if n_static else "lsst_lite")
        self.n_static = n_static
        self.ts_dim = ts_dim
        self.needs_stamp = False
        residual = bool(n_static) if residual is None else residual

        # Attribute order follows upstream so state_dict() lists keys as its checkpoints do.
        self.gru = nn.GRU(ts_dim, gru_hidden, num_layers=gru_layers, batch_first=True, bidirectional=True)
        self.attn_W = nn.Linear(2 * gru_hidden, gru_hidden)
        self.attn_v = nn.Linear(gru_hidden, 1, bias=False)
        self.ts_proj = nn.Linear(2 * gru_hidden, 128)
        self.ts_ln = nn.LayerNorm(128)
        self.residual_proj = nn.Linear(128, 64, bias=False) if residual else None
        if n_static:
            self.static_proj = nn.Linear(n_static, 64)
            self.static_bn = nn.BatchNorm1d(64)
            self.merge_proj = nn.Linear(128 + 64, 128)
        self.head_fc1 = nn.Linear(128, 128)
        self.head_fc2 = nn.Linear(128, 64)
        self.head_fc3 = nn.Linear(64, 32)
        self.latent_proj = nn.Linear(32, LATENT_DIM)
        self.fc_out = nn.Linear(LATENT_DIM, n_nodes)
        self.head_ln1 = nn.LayerNorm(128)
        self.head_ln2 = nn.LayerNorm(64)

    def _pooled_sequence(self, ts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Bidirectional GRU over each series' own steps, then attention pooling -> [B, 2H]:
        `models/oracle/gru.py` for batches; torch's own GRU (`_pooled_reference`) for one
        series, where its C++ loop beats any per-step Python, and where gradients are wanted."""
        if ts.shape[0] == 1 or (torch.is_grad_enabled() and any(p.requires_grad for p in self.gru.parameters())):
            return self._pooled_reference(ts, lengths)
        return pooled_sequence(ts, lengths, self._gru_weights())

    def _gru_weights(self) -> GruWeights:
        """The GRU's and attention's weights laid out for `pooled_sequence`, rebuilt when a
        parameter changes (loading a state_dict, moving the model to another device)."""
        params = (*self.gru.parameters(), *self.attn_W.parameters(), *self.attn_v.parameters())
        # In-place changes bump a tensor's version; `.to()` and `.double()` make new tensors.
        key = (params[0].data_ptr(), params[-1].data_ptr(), params[0].dtype, *(p._version for p in params))
        cached = _GRU_WEIGHTS.get(self)
        if cached is None or cached[0] != key:
            cached = _GRU_WEIGHTS[self] = (key, gru_weights(self.gru, self.attn_W, self.attn_v))
        return cached[1]

    def _pooled_reference(self, ts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The same with torch's own packed GRU and masked attention over the padded output:
        the definition `pooled_sequence` is checked against (tests/test_model.py)."""
        if ts.shape[0] == 1:  # no padding to keep out of the recurrence
            out, _ = self.gru(ts[:, :int(lengths[0])])
            scores = self.attn_v(torch.tanh(self.attn_W(out))).squeeze(-1)
        else:
            packed = pack_padded_sequence(ts, lengths, batch_first=True, enforce_sorted=False)
            out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True)
            mask = torch.arange(out.shape[1], device=out.device).unsqueeze(0) >= lengths.to(out.device).unsqueeze(1)
            scores = self.attn_v(torch.tanh(self.attn_W(out))).squeeze(-1).masked_fill(mask, float("-inf"))  # [B, T]
        return torch.bmm(torch.softmax(scores, dim=1).unsqueeze(1), out).squeeze(1)

    def latent(self, ts: torch.Tensor, lengths: torch.Tensor, static: torch.Tensor | None = None) -> torch.Tensor:
        """16-d embedding (upstream `get_latent_space_embeddings`), before the final ReLU."""
        return self.head_latent(self._pooled_sequence(ts, lengths), static)

    def head_latent(self, pooled: torch.Tensor, static: torch.Tensor | None = None) -> torch.Tensor:
        """The latent from the attention-pooled GRU output `[B, 2H]` (shared with the ONNX export,
        models/oracle/export.py, which pools the whole batch in one packed pass)."""
        gelu = F.gelu
        x = gelu(self.ts_ln(self.ts_proj(pooled)))
        if self.n_static:
            s = F.relu(self.static_bn(self.static_proj(static)))
            x = gelu(self.merge_proj(torch.cat((x, s), dim=1)))
        h = gelu(self.head_ln1(self.head_fc1(x)))
        h = gelu(self.head_ln2(self.head_fc2(h)))
        if self.residual_proj is not None:
            h = h + self.residual_proj(x)
        return self.latent_proj(gelu(self.head_fc3(h)))

    def forward(self, ts, lengths, static=None, stamps=None) -> torch.Tensor:
        ts, lengths, static, _ = _check_inputs(self, ts, lengths, static, None)
        if ts.shape[0] == 0:
            return ts.new_zeros((0, self.n_nodes))
        # ReLU here, as upstream's forward: a GELU moves probabilities by up to 0.1 (LSST).
        return self.fc_out(F.relu(self.latent(ts, lengths, static)))


class OmniOracle(OracleModel):
    """Upstream `GRU_MD_MM_Improved`: BTSv2 latent (16) + stamp latent (16) -> Linear -> GELU -> Linear."""

    def __init__(self, taxonomy: Taxonomy = ZTF_TAXONOMY, n_static: int = 30, ts_dim: int = 5,
                 gru_hidden: int = 128, gru_layers: int = 2, residual: bool = True, image_head=NEW_ARCH_IMAGE_HEAD):
        super().__init__()
        self.taxonomy = taxonomy
        n_nodes = len(taxonomy)
        self.kind = "omni"
        self.n_static = n_static
        self.ts_dim = ts_dim
        self.needs_stamp = True
        self.lc_md_spine = LightCurveOracle(taxonomy, n_static, ts_dim, gru_hidden, gru_layers, residual=residual,
                                            kind="btsv2")
        self.image_spine = StampNetwork(n_nodes, image_head)
        self.mlp_head = nn.Sequential(nn.Linear(2 * LATENT_DIM, LATENT_DIM))
        self.final_out = nn.Sequential(nn.GELU(), nn.Linear(LATENT_DIM, n_nodes))

    def forward(self, ts, lengths, static=None, stamps=None) -> torch.Tensor:
        ts, lengths, static, stamps = _check_inputs(self, ts, lengths, static, stamps)
        if ts.shape[0] == 0:
            return ts.new_zeros((0, self.n_nodes))
        z = torch.cat((self.lc_md_spine.latent(ts, lengths, static), self.image_spine.latent(stamps)), dim=1)
        return self.final_out(self.mlp_head(z))


def _check_inputs(model: OracleModel, ts, lengths, static, stamps):
    """Validate shapes once, at the top-level forward; returns tensors ready for the network."""
    if ts.ndim != 3 or ts.shape[2] != model.ts_dim:
        raise ValueError(f"ts must be [B, T, {model.ts_dim}], got {tuple(ts.shape)}")
    B, T = ts.shape[:2]
    lengths = torch.as_tensor(lengths, dtype=torch.int64, device="cpu")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be [B]={B}, got {tuple(lengths.shape)}")
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"every length must be in [1, T={T}], got min {int(lengths.min())}, max {int(lengths.max())}")
    if model.needs_static:
        if static is None:
            raise ValueError(f"the {model.kind} model needs static features [B, {model.n_static}]")
        if tuple(static.shape) != (B, model.n_static):
            raise ValueError(f"static must be [B, {model.n_static}] = {(B, model.n_static)}, got {tuple(static.shape)}")
    else:
        static = None
    if model.needs_stamp:
        if stamps is None:
            raise ValueError("the omni model needs image stamps [B, 3, 63, 63] (zeros where none exist)")
        if stamps.ndim != 4 or stamps.shape[0] != B or stamps.shape[1] != 3:
            raise ValueError(f"stamps must be [B, 3, H, W] with B={B}, got {tuple(stamps.shape)}")
    else:
        stamps = None
    return ts, lengths, static, stamps


# ---------------------------------------------------------------- construction and loading

def build_oracle(kind: str, n_nodes: int | None = None, n_static: int = 30, ts_dim: int = 5,
                 gru_hidden: int = 128, gru_layers: int = 2, residual: bool | None = None,
                 image_head=NEW_ARCH_IMAGE_HEAD, taxonomy: Taxonomy | None = None) -> OracleModel:
    """A randomly initialised ORACLE network of `kind`, in eval mode.

    `taxonomy` (one output per node) defaults to the kind's published one
    (`DEFAULT_TAXONOMIES`: 10 nodes ZTF, 26 LSST); `n_nodes`, when given, must
    match it. For "lsst_lite",
    `n_static` is ignored (no static input). `residual` says whether the
    light-curve network has a learnt `residual_proj`; it defaults to what the
    shipped checkpoints have (btsv2 and Omni yes, lsst_lite no). `image_head`
    (Omni only) lists the image head's Linear layers as `(index, in, out)`;
    it defaults to new_arch's, at head indices 3, 5, 7, 9.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    taxonomy = taxonomy_for(kind, n_nodes, taxonomy)
    if residual is None:
        residual = kind != "lsst_lite"
    if kind == "omni":
        model = OmniOracle(taxonomy, n_static, ts_dim, gru_hidden, gru_layers, residual, image_head)
    elif kind == "btsv2":
        model = LightCurveOracle(taxonomy, n_static, ts_dim, gru_hidden, gru_layers, residual=residual, kind=kind)
    else:
        model = LightCurveOracle(taxonomy, 0, ts_dim, gru_hidden, gru_layers, residual=residual, kind=kind)
    return model.eval()


# ---------------------------------------------------------------- inference

def predict_proba(model: OracleModel, ts: np.ndarray, lengths: np.ndarray,
                  static: np.ndarray | None = None, stamps: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities `[B, n_nodes]` (float64, taxonomy level order).

    ts `[B, T, 5]` float32 zero-padded to the longest series; lengths `[B]` int;
    static `[B, n_static]` (needed when `model.needs_static`); stamps
    `[B, 3, 63, 63]` (needed when `model.needs_stamp`). A row's result does not
    depend on the rest of the batch (to float rounding, ~1e-6).
    """
    device = next(model.parameters()).device  # the batch goes where the model is (ORACLE_DEVICE)

    def tensor(a):
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    lengths_t = torch.from_numpy(np.asarray(lengths).astype(np.int64, copy=False).reshape(-1))  # stay on CPU
    if model.training:
        model.eval()  # BatchNorm must use its running statistics
    with torch.inference_mode():
        logits = model(tensor(ts), lengths_t, tensor(static), tensor(stamps))
    return model.taxonomy.class_probabilities(logits.cpu().numpy())

