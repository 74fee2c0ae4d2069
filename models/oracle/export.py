"""ORACLE networks as ONNX files that run without this project.

    python -m models.oracle.export data/best_model_f1_ztf.pth --survey ztf --out oracle_ztf.onnx

writes one `.onnx` file per checkpoint (BTSv2, LSST-lite, Omni in either image-head
layout) whose graph takes `ts [B, T, 5]`, `lengths [B]` (+ `static [B, 30]`,
+ `stamps [B, 3, 63, 63]` for Omni), batch and length variable, and gives the
class probabilities of every taxonomy node and the logits. Its `metadata_props`
say what each input column is and in which unit (`models/oracle/model_card.py`),
the taxonomy's node names in output order with their parents, and the provenance
(`model_label`, the weights' sha256, the opset, the exporter). The flows' ONNX
Runtime backend (`models/oracle/onnx_backend.py`) runs the same files.

The exporter is torch's TorchScript one (`dynamo=False`; it needs the `onnx`
package): it turns the packed sequences the GRU runs on into ONNX's GRU with
`sequence_lens`, so each series' recurrence, in both directions, stops at its own
length as it does in torch. The torch.export-based exporter, torch 2.13's default,
fails on `pack_padded_sequence` (its data-dependent sizes), and padding the
recurrence instead would let the reverse direction start in the padding.

The graph is the networks' eval-mode forward pass, written once for the whole
batch: torch groups series by length and stamps by eight, and computes the
latent of an all-zero stamp once; ONNX Runtime runs all rows together. Rows do
not interact, so the results differ by float rounding only (tests: within 1e-5).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.oracle.image import STAMP_SIZE
from models.oracle.loading import load_oracle, model_label, weights_sha256
from models.oracle.model_card import OUTPUTS, inputs_card
from models.oracle.networks import KINDS, LightCurveOracle, ModelLoadError, OracleModel
from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY, Taxonomy

OPSET = 17  # ONNX Runtime >= 1.11 runs it; LayerNormalization is a single node from 17 on
# Bump when the graph changes for the same weights: cached files of another version are not reused.
EXPORT_VERSION = 1
SURVEY_TAXONOMIES = {"ztf": ZTF_TAXONOMY, "lsst": LSST_TAXONOMY}
SURVEY_OF_KIND = {"btsv2": "ztf", "omni": "ztf", "lsst_lite": "lsst"}
OUTPUT_NAMES = ("probabilities", "logits")


def packed_pool(lc: LightCurveOracle, ts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`LightCurveOracle._pooled_bucket` for a whole batch of any lengths: packed GRU (ONNX GRU
    with sequence_lens), padded steps masked out of the attention."""
    packed = pack_padded_sequence(ts, lengths, batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(lc.gru(packed)[0], batch_first=True, total_length=ts.shape[1])
    scores = lc.attn_v(torch.tanh(lc.attn_W(out))).squeeze(-1)  # [B, T]
    padding = torch.arange(out.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)
    weights = torch.softmax(scores.masked_fill(padding, float("-inf")), dim=1)
    return torch.bmm(weights.unsqueeze(1), out).squeeze(1)


def class_probabilities(logits: torch.Tensor, taxonomy: Taxonomy) -> torch.Tensor:
    """`Taxonomy.class_probabilities` as graph operations: softmax within each sibling group,
    then the product of conditional probabilities from the root down."""
    conditional = [None] * len(taxonomy)
    for group in taxonomy.sibling_groups:
        p = torch.softmax(logits.index_select(1, torch.tensor(group)), dim=1)
        for k, node in enumerate(group):
            conditional[node] = p[:, k]
    probs = [torch.ones_like(logits[:, 0])]
    for node in range(1, len(taxonomy)):  # level order: a parent comes before its children
        probs.append(conditional[node] * probs[taxonomy.parent[node]])
    return torch.stack(probs, dim=1)


class OracleGraph(nn.Module):
    """An ORACLE network's forward pass as it is exported: (ts, lengths[, static][, stamps])
    -> (probabilities, logits). It holds the model's own modules, so their weights."""

    def __init__(self, model: OracleModel):
        super().__init__()
        self.model = model
        self.kind = model.kind

    def forward(self, ts, lengths, static=None, stamps=None):
        m = self.model
        lc = m.lc_md_spine if self.kind == "omni" else m
        latent = lc.head_latent(packed_pool(lc, ts, lengths), static)
        if self.kind == "omni":
            image = F.interpolate(stamps, size=(STAMP_SIZE, STAMP_SIZE), mode="bilinear", align_corners=False)
            logits = m.final_out(m.mlp_head(torch.cat((latent, m.image_spine.convnext(image)), dim=1)))
        else:
            logits = lc.fc_out(F.relu(latent))
        return class_probabilities(logits, m.taxonomy), logits


def input_names(model: OracleModel) -> list[str]:
    """The graph's inputs, in order: ts, lengths, then static and stamps where the network takes them."""
    return ["ts", "lengths"] + ["static"] * model.needs_static + ["stamps"] * model.needs_stamp


def example_inputs(model: OracleModel, lengths=(3, 1, 2), seed: int = 0) -> list[np.ndarray]:
    """Small inputs of mixed lengths in the graph's input order (tracing, self-checks)."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    ts = np.zeros((len(lengths), int(lengths.max()), model.ts_dim), np.float32)
    for i, n in enumerate(lengths):
        ts[i, :n] = rng.normal(size=(n, model.ts_dim))
        ts[i, :n, 0] = np.sort(rng.uniform(0, 30, n))
    out = [ts, lengths]
    if model.needs_static:
        out.append(rng.normal(size=(len(lengths), model.n_static)).astype(np.float32))
    if model.needs_stamp:
        out.append(rng.normal(size=(len(lengths), 3, 63, 63)).astype(np.float32))
    return out


def metadata(model: OracleModel, survey: str, label: str, sha256: str, opset: int) -> dict[str, str]:
    """The `metadata_props` of an exported file (every value a string; lists and dicts as JSON)."""
    tax = model.taxonomy
    return {
        "oracle.kind": model.kind,
        "oracle.survey": survey,
        "oracle.taxonomy": tax.name,
        "oracle.nodes": json.dumps(list(tax.nodes)),
        "oracle.parents": json.dumps(list(tax.parent)),
        "oracle.leaves": json.dumps([tax.nodes[i] for i in tax.leaves]),
        "oracle.inputs": json.dumps(inputs_card(survey, model.n_static, model.needs_stamp)),
        "oracle.outputs": json.dumps(OUTPUTS),
        "oracle.model_label": label,
        "oracle.weights_sha256": sha256,
        "oracle.opset": str(opset),
        "oracle.export_version": str(EXPORT_VERSION),
        "oracle.exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=False)",
    }


@contextlib.contextmanager
def _without_packing_notices():
    """The exporter's C++ code prints, straight to file descriptor 2, that it has no shape
    inference for `prim::PackPadded`/`PadPacked`: intermediate nodes it replaces by ONNX's
    GRU with sequence_lens (the parity tests check the result). Those lines are dropped;
    anything else it prints is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _PACKING_NOTICE.search(line):
                    sys.stderr.write(line)


_PACKING_NOTICE = re.compile(r"shape inference of prim::(PackPadded|PadPacked) type is missing")


def export_onnx(model: OracleModel, out: str | os.PathLike, *, survey: str, label: str, sha256: str,
                opset: int = OPSET) -> Path:
    """Write `model` (fp32, eval) to `out` as ONNX with metadata; the file appears whole or not
    at all (written beside it, then renamed), so concurrent flows can share a cache."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = OracleGraph(model.eval())
    names = input_names(model)
    args = tuple(torch.from_numpy(a) for a in example_inputs(model))
    dynamic = {"ts": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "static": {0: "batch"},
               "stamps": {0: "batch"}, "probabilities": {0: "batch"}, "logits": {0: "batch"}}
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter's deprecation notice, and its warning that a GRU over packed
            # sequences may fix the batch size: not here, the graph shapes the GRU's zero initial
            # state from each run's batch (the flow tests run batches of 1 to 35 through one file).
            warnings.simplefilter("ignore")
            with _without_packing_notices():
                torch.onnx.export(graph, args, tmp, dynamo=False, input_names=names,
                                  output_names=list(OUTPUT_NAMES), opset_version=opset, do_constant_folding=True,
                                  dynamic_axes={k: v for k, v in dynamic.items() if k in names or k in OUTPUT_NAMES})
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(proto, metadata(model, survey, label, sha256, opset))
        proto.doc_string = (f"ORACLE {model.kind} ({model.taxonomy.name} taxonomy, {len(model.taxonomy)} nodes), "
                            f"{label}. Inputs, units and outputs: metadata_props oracle.inputs, oracle.outputs.")
        onnx.save(proto, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the file is as readable as any other
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def export_checkpoint(weights: str | os.PathLike, out: str | os.PathLike, survey: str | None = None,
                      kind: str | None = None, opset: int = OPSET) -> tuple[Path, OracleModel]:
    """Load an ORACLE checkpoint (the survey's taxonomy; by default the kind's) and export it."""
    taxonomy = SURVEY_TAXONOMIES[survey.lower()] if survey else None
    model = load_oracle(weights, kind, taxonomy=taxonomy)
    survey = (survey or SURVEY_OF_KIND[model.kind]).lower()
    path = export_onnx(model, out, survey=survey, label=model_label(model, weights), sha256=weights_sha256(weights),
                       opset=opset)
    return path, model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.oracle.export",
                                     description="Write an ORACLE checkpoint as an ONNX file with its metadata "
                                                 "(docs/onnx.md).")
    parser.add_argument("weights", type=Path, help="ORACLE checkpoint (.pth), e.g. data/best_model_f1_ztf.pth")
    parser.add_argument("--survey", choices=sorted(SURVEY_TAXONOMIES),
                        help="whose inputs and taxonomy (default: the network's, btsv2/omni ztf, lsst_lite lsst)")
    parser.add_argument("--kind", choices=KINDS, help="the network (default: detected from the checkpoint)")
    parser.add_argument("--out", type=Path, help="the .onnx file to write (default: the weights' name, .onnx)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = parser.parse_args(argv)
    out = args.out or args.weights.with_suffix(".onnx")
    try:
        path, model = export_checkpoint(args.weights, out, args.survey, args.kind, args.opset)
    except (ModelLoadError, ValueError, ImportError) as exc:  # bad weights or kind; no onnx package
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): ORACLE {model.kind}, "
          f"{len(model.taxonomy)} {model.taxonomy.name} nodes, opset {args.opset}, {model_label(model, args.weights)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
