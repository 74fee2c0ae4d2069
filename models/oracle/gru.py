"""The light-curve network's bidirectional GRU and attention pooling, as pure functions on tensors.

The arithmetic of `torch.nn.GRU` over packed sequences followed by the networks' masked
additive attention (`LightCurveOracle._pooled_reference`, networks.py), arranged for a CPU
running small batches, where torch's own GRU spends half its time outside matmuls:

* one layout for the whole batch, packed as `pack_padded_sequence` has it: series sorted
  by length (longest first), time-major, so the series still running at step t are the
  first `sizes[t]` rows of that step and no padded step is ever computed, neither in the
  recurrence nor in the attention (no length groups needed);
* the reverse direction runs over each series reversed within its own length, so it too
  has the first `sizes[t]` rows running at step t: both directions share one `baddbmm`
  per step over stacked weights, and one set of elementwise ops;
* each layer's input projection, both directions, is one batched matmul per chunk of
  ~`CHUNK_ROWS` rows (about half of the GRU's multiply-adds, at the matmul's full rate;
  chunks keep the gates in cache, a whole LSST batch's are ~40 MB);
* the cell writes its new state straight into the layer's output (`lerp(..., out=)`),
  where the next step reads it: no per-step copies or concatenation;
* fewer, cheaper elementwise ops: tanh(a) = 2 sigmoid(2a) - 1 (torch's CPU tanh costs
  several times its sigmoid), and the state is kept as q = (h + 1) / 2, for which the
  update is one `lerp`: q' = (1 - z) sigmoid(2a) + z q. The factors 2 and the offsets
  (-W 1) are folded into the weights and biases once (`gru_weights`, in float64), so the
  cell is 6 kernels for both directions where torch's is ~10 per direction. The
  attention's tanh likewise, its constant -sum(v) dropped: a softmax does not see it;
* the attention is a softmax per series over the packed rows (`scatter_reduce`,
  `index_add_`).

A single series is left to torch's `nn.GRU` (networks.py): with one row per step, its
C++ step loop beats any per-step Python. The results differ from torch's GRU by float
rounding only (~1e-6 on the pooled features, tests/test_model.py). Rows never interact: a series' result does not depend on the rest
of the batch, to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# Rows of a chunk (see the module doc).
CHUNK_ROWS = 512


@dataclass(frozen=True)
class Packed:
    """Where each point of a batch of series lives in the packed, time-major layout.

    `sizes[t]` series run at step t (those longer than t, longest first); their points are
    consecutive packed rows, N in all. Of packed row k: `series[k]` is its batch row
    (caller's order). `chunks`: consecutive steps of about `CHUNK_ROWS` rows, each
    `(sizes, first_row, end_row, from_input, from_states)`, the last two the rows to
    gather for both directions' inputs (forward, then reverse in reversed time) from the
    padded input `[B * T, F]` and from a layer's states `[2 * N, H]`. `states` gathers
    the last layer's states of each point in forward time, `[N * 2]` -> pairs."""

    sizes: list[int]
    series: torch.Tensor
    chunks: list[tuple[list[int], int, int, torch.Tensor, torch.Tensor]]
    states: torch.Tensor


@dataclass(frozen=True)
class GruWeights:
    """A bidirectional GRU's and its attention's weights, laid out for `pooled_sequence`.

    `layers`: per layer, both directions stacked (forward first): `(w_ih [2, in, 3H],
    b_ih [2, 1, 3H], w_hh [2, H, 3H], b_hh [2, 1, 3H])`, transposed for `baddbmm`, taking
    q = (h + 1) / 2 where they take a GRU state, and giving 2a in the new-gate third.
    `attn_w [2H, H]`, `attn_b [H]` give 2u (u = W h + b), `attn_v [H, 1]` is 2v."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], ...]
    attn_w: torch.Tensor
    attn_b: torch.Tensor
    attn_v: torch.Tensor


def packed_layout(lengths: torch.Tensor, T: int, device: torch.device | str = "cpu",
                  chunk_rows: int = CHUNK_ROWS) -> Packed:
    """The packed layout of series of `lengths` (int64 on the CPU, each in 1..T) padded to T steps.
    (numpy: a few µs per array operation where torch's dispatch costs several, for one alert.)"""
    lengths = lengths.numpy()
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    longest = int(sorted_len[0])
    sizes = np.searchsorted(-sorted_len, -np.arange(longest), side="left")  # series longer than t
    offsets = np.cumsum(sizes) - sizes
    step = np.repeat(np.arange(longest), sizes)
    n = len(step)
    rows = np.arange(n)
    rank = rows - offsets[step]  # among the series running at that step
    mirror = offsets[sorted_len[rank] - 1 - step] + rank  # the same series at length - 1 - step
    series = order[rank]
    source = series * T + step
    from_input = np.stack((source, source[mirror]))  # [2, N]: forward, reverse direction
    # A layer's states [2 * N, H]: forward at k, reverse (in reversed time) at N + k.
    from_states = np.stack((np.stack((rows, n + mirror), 1), np.stack((mirror, n + rows), 1)))  # [2, N, 2]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64).reshape(-1)).to(device)

    chunks, bounds, t0 = [], np.append(offsets, n).tolist(), 0
    while t0 < longest:
        t1 = t0 + 1
        while t1 < longest and bounds[t1 + 1] - bounds[t0] <= chunk_rows:
            t1 += 1
        r0, r1 = bounds[t0], bounds[t1]
        chunks.append((sizes[t0:t1].tolist(), r0, r1, tensor(from_input[:, r0:r1]), tensor(from_states[:, r0:r1])))
        t0 = t1
    return Packed(sizes.tolist(), tensor(series), chunks, tensor(from_states[0]))


def gru_weights(gru: nn.GRU, attn_w: nn.Linear, attn_v: nn.Linear) -> GruWeights:
    """`GruWeights` of a bidirectional, batch-first `nn.GRU` (any number of layers) and the
    attention over its output (Linear 2H -> A, Linear A -> 1 without bias)."""
    if not (gru.bidirectional and gru.batch_first) or gru.bias is False:
        raise ValueError("a bidirectional, batch-first GRU with biases is expected")
    H, dtype = gru.hidden_size, attn_w.weight.dtype

    def of_state(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # w h + b with h = 2q - 1 is (2w) q + (b - w 1).
        return 2 * w, b - w.sum(-1)

    with torch.no_grad(), torch.inference_mode(False):  # plain tensors, usable in any mode
        layers = []
        for k in range(gru.num_layers):
            pairs = [torch.stack((getattr(gru, f"{name}_l{k}"), getattr(gru, f"{name}_l{k}_reverse"))).double()
                     for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")]
            w_ih, b_ih = of_state(*pairs[:2]) if k else pairs[:2]
            w_hh, b_hh = of_state(*pairs[2:])
            new_gate = torch.ones(3 * H, dtype=torch.float64, device=w_ih.device)
            new_gate[2 * H:] = 2  # the cell's tanh(a) is 2 sigmoid(2a) - 1
            layers.append(tuple(t.to(dtype) for t in (
                (w_ih * new_gate.unsqueeze(-1)).transpose(1, 2).contiguous(), (b_ih * new_gate).unsqueeze(1),
                (w_hh * new_gate.unsqueeze(-1)).transpose(1, 2).contiguous(), (b_hh * new_gate).unsqueeze(1))))
        w, b = of_state(attn_w.weight.double(), attn_w.bias.double())
        return GruWeights(tuple(layers), (2 * w).t().contiguous().to(dtype), (2 * b).to(dtype),
                          (2 * attn_v.weight).t().contiguous().to(dtype))


def pooled_sequence(ts: torch.Tensor, lengths: torch.Tensor, weights: GruWeights) -> torch.Tensor:
    """Bidirectional GRU over each series' own steps of `ts [B, T, F]` (zero-padded after each
    series' `lengths`, int64 on the CPU), then attention pooling -> `[B, 2H]`."""
    B, T, F = ts.shape
    packed = packed_layout(lengths, T, ts.device)
    q = bigru_packed(ts.reshape(B * T, F), packed, weights.layers)
    H = q.shape[-1]
    pooled_q = attention_pool(q.view(-1, H).index_select(0, packed.states).view(-1, 2 * H), packed, B, weights)
    return pooled_q.mul_(2).sub_(1)  # the attention weights sum to 1: sum a (2q - 1) = 2 sum a q - 1


def bigru_packed(ts: torch.Tensor, packed: Packed, layers) -> torch.Tensor:
    """The bidirectional GRU over the padded points `ts [B * T, F]` -> each packed point's
    states as q = (h + 1) / 2, `[2, N, H]`: forward, and reverse in reversed time."""
    source, H = ts, layers[0][2].shape[1]
    n = packed.states.shape[0] // 2
    for k, (w_ih, b_ih, w_hh, b_hh) in enumerate(layers):
        q = ts.new_empty((2, n, H))
        last = ts.new_full((2, packed.sizes[0], H), 0.5)  # h = 0
        for sizes, r0, r1, from_input, from_states in packed.chunks:
            # Both directions' inputs of these steps, the reverse in reversed time, projected at once.
            x = source.index_select(0, from_states if k else from_input).view(2, r1 - r0, -1)
            last = _recurrence(torch.baddbmm(b_ih, x, w_ih), sizes, w_hh, b_hh, last, q[:, r0:r1])
        source = q.view(2 * n, H)
    return q


def _recurrence(gates_in: torch.Tensor, sizes: list[int], w_hh: torch.Tensor, b_hh: torch.Tensor,
                q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Both directions' GRU steps from the state `q [2, >= sizes[0], H]`, each step's state
    written to `out [2, sum(sizes), H]`; returns the last one.

    torch's GRU cell, with gi/gh the input/recurrent projections in thirds r, z, n:
    r, z = sigmoid(gi + gh); n = tanh(gi_n + r * gh_n); h' = (1 - z) n + z h. Here, with
    q = (h + 1) / 2 and the n thirds doubled: q' = (1 - z) sigmoid(gi_n + r * gh_n) + z q."""
    H = w_hh.shape[1]
    steps_rz = gates_in[..., :2 * H].split(sizes, dim=1)
    steps_n = gates_in[..., 2 * H:].split(sizes, dim=1)
    steps_out = out.split(sizes, dim=1)
    for t, n in enumerate(sizes):
        if q.shape[1] != n:
            q = q[:, :n]  # the series that ended at the previous step are the last rows
        gh_rz, gh_n = torch.baddbmm(b_hh, q, w_hh).split((2 * H, H), dim=2)
        r, z = gh_rz.add_(steps_rz[t]).sigmoid_().split(H, dim=2)
        q = torch.lerp(torch.addcmul(steps_n[t], r, gh_n).sigmoid_(), q, z, out=steps_out[t])
    return q


def attention_pool(states: torch.Tensor, packed: Packed, batch: int, weights: GruWeights) -> torch.Tensor:
    """Additive attention over each series' own steps: `states [N, D]` -> `[batch, D]` in the
    caller's row order, a_t = softmax_t(v . tanh(u_t)) = softmax_t(2v . sigmoid(2u_t))."""
    scores = torch.addmm(weights.attn_b, states, weights.attn_w).sigmoid_().mm(weights.attn_v).squeeze(1)  # [N]
    top = scores.new_full((batch,), float("-inf")).scatter_reduce_(0, packed.series, scores, "amax")
    e = scores.sub_(top[packed.series]).exp_()
    total = e.new_zeros(batch).index_add_(0, packed.series, e)
    pooled = states.new_zeros((batch, states.shape[1])).index_add_(0, packed.series, states.mul_(e.unsqueeze(1)))
    return pooled.div_(total.unsqueeze(1))
