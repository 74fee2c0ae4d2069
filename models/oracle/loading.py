"""Reading ORACLE checkpoints: detect the network, build it from the checkpoint's sizes, load strictly.

`load_oracle` turns a `.pth` state dict into an `OracleModel` of
`models.oracle.networks` (CPU, eval mode), refusing weights that do not fit
with a `ModelLoadError` that names the keys; `configure_inference` then moves
it to its device and precision. `weights_sha256`/`weights_sha12`/`model_label`
name the weights in results and file names.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Optional

import torch

from models.oracle.checkpoint_format import sniff
from models.oracle.image import (IMAGE_HEAD_PREFIX, PRECISIONS, TRUNK_CHUNK, check_image_head, describe_image_head,
                                 image_head_layout)
from models.oracle.networks import KINDS, ModelLoadError, OracleModel, TaxonomyMismatch, build_oracle, taxonomy_for
from models.oracle.taxonomy import Taxonomy

log = logging.getLogger(__name__)


def detect_kind(state: dict) -> str:
    """Which ORACLE network a state dict belongs to, from its key names."""
    if any(k.startswith(("lc_md_spine.", "image_spine.")) for k in state):
        return "omni"
    if "static_proj.weight" in state or "merge_proj.weight" in state:
        return "btsv2"
    if "gru.weight_ih_l0" in state or "attn_W.weight" in state:
        return "lsst_lite"
    raise ModelLoadError("cannot tell which ORACLE network these weights are for "
                         f"(first keys: {sorted(state)[:5]}); pass kind= one of {KINDS}")


def _architecture_from_state(state: dict, kind: str) -> dict:
    """Sizes read from the checkpoint itself, so e.g. a lite network of another taxonomy loads too."""
    prefix = "lc_md_spine." if kind == "omni" else ""
    out_key = "final_out.1.weight" if kind == "omni" else "fc_out.weight"
    args = {}
    if out_key in state:
        args["n_nodes"] = state[out_key].shape[0]
    if prefix + "static_proj.weight" in state:
        args["n_static"] = state[prefix + "static_proj.weight"].shape[1]
    if prefix + "gru.weight_ih_l0" in state:
        args["ts_dim"] = state[prefix + "gru.weight_ih_l0"].shape[1]
    if prefix + "gru.weight_hh_l0" in state:
        args["gru_hidden"] = state[prefix + "gru.weight_hh_l0"].shape[1]
    # Whether the light-curve network has a learnt residual projection: as the checkpoint says.
    args["residual"] = prefix + "residual_proj.weight" in state
    if kind == "omni" and any(k.startswith(IMAGE_HEAD_PREFIX) for k in state):
        layout = image_head_layout(state)
        check_image_head(layout, state)
        args["image_head"] = layout
    layers = [k for k in state if k.startswith(prefix + "gru.weight_ih_l") and not k.endswith("_reverse")]
    if layers:
        args["gru_layers"] = len(layers)
    return args


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ModelLoadError(f"ORACLE weights not found at {path}: check the path (the repo ships "
                             "data/best_model_f1_ztf.pth and data/best_model_f1_lsst.pth)")
    sniff(path)  # a README or an image: said in a few words, not torch's paragraph on weights_only
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text runs to a page; its first sentence is the gist
        raise ModelLoadError(f"{path} holds Python objects besides tensors, which torch.load(weights_only=True) "
                             "refuses (it would run code from the file): save a state dict with "
                             "torch.save(model.state_dict(), path)") from exc
    except Exception as exc:  # a corrupt file
        raise ModelLoadError(f"cannot read ORACLE weights from {path}: {exc}. Expected a torch "
                             "state dict saved with torch.save(model.state_dict(), path)") from exc
    for wrapper in ("state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors (got {type(obj).__name__}); "
                             "save it with torch.save(model.state_dict(), path)")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def weights_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a weights file: two files with one name are never confused."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha12(path) -> str:
    """First 12 hex digits of the checkpoint's sha256 (results' `model` column, backfill file names)."""
    return weights_sha256(path)[:12]


def model_label(model: OracleModel, path: str | os.PathLike) -> str:
    """What the results' `model` column says: `ORACLE-btsv2:best_model_f1_ztf.pth@f1e3353cb6c0`
    (kind, file name, first 12 hex digits of the file's sha256)."""
    return f"ORACLE-{model.kind}:{Path(path).name}@{weights_sha12(path)}"


def load_oracle(path: str | os.PathLike, kind: str | None = None, taxonomy: Taxonomy | None = None) -> OracleModel:
    """Load an ORACLE checkpoint strictly, on CPU, in eval mode.

    `kind` ("btsv2", "lsst_lite", "omni") defaults to detection from the key
    names. `taxonomy` names the checkpoint's outputs: a flow passes its survey's;
    without one the kind's published taxonomy is assumed (`DEFAULT_TAXONOMIES`),
    and a checkpoint whose width is not that taxonomy's is refused. Raises
    ModelLoadError naming the path and any missing, unexpected or wrongly shaped
    keys, or the mismatch of outputs and taxonomy.
    """
    path = Path(path)
    state = _read_state_dict(path)
    if kind is None:
        try:
            kind = detect_kind(state)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
    elif kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    try:
        architecture = _architecture_from_state(state, kind)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    try:
        taxonomy = taxonomy_for(kind, architecture.get("n_nodes"), taxonomy)
    except ValueError as exc:
        raise TaxonomyMismatch(f"{path}: {exc}") from None
    try:
        # Built on the meta device: no time spent on a random init that the
        # checkpoint overwrites anyway (8.5M parameters for Omni's ConvNeXt).
        with torch.device("meta"):
            model = build_oracle(kind, taxonomy=taxonomy, **architecture)
    except ValueError as exc:  # e.g. an image head that cannot be built
        raise ModelLoadError(f"{path}: {exc}") from exc

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(f"{k} {tuple(state[k].shape)} (network wants {tuple(expected[k].shape)})"
                         for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if wrong_shape:
            problems.append(f"wrongly shaped keys {wrong_shape}")
        if kind == "omni":
            problems.append(f"built for the checkpoint's {describe_image_head(model.image_spine.head_layout)}, "
                            f"light-curve spine {'with' if model.lc_md_spine.residual_proj is not None else 'without'}"
                            " residual_proj")
        raise ModelLoadError(
            f"weights in {path} do not fit the ORACLE {kind} network: {'; '.join(problems)}. "
            f"Use an ORACLE {kind} checkpoint saved as a plain state dict, or pass kind= "
            f"(one of {KINDS}) if the network was detected wrongly.")
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {path} do not fit the ORACLE {kind} network: {exc}") from exc
    if kind == "omni":
        model.image_spine.convnext.to(memory_format=torch.channels_last)
    return model.eval()


DEVICES = ("cpu", "cuda", "mps")


def device_problem(device: str) -> Optional[str]:
    """Why the model cannot run on `device` here, or None."""
    if device not in DEVICES:
        return f"device must be one of {DEVICES}, got {device!r}"
    if device == "cuda" and not torch.cuda.is_available():
        return "device cuda asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False)"
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return "device mps asked for, but torch sees no Apple GPU (torch.backends.mps.is_available())"
    return None


def precision_problem(precision: str, device: str = "cpu") -> Optional[str]:
    """Why the image network cannot run in `precision` on `device` here, or None."""
    if precision not in PRECISIONS:
        return f"precision must be one of {PRECISIONS}, got {precision!r}"
    if precision == "int8":
        if device != "cpu":
            return f"precision int8 runs on the CPU only (torch's quantized CPU ops), not on {device}"
        if not set(torch.backends.quantized.supported_engines) - {"none"}:
            return "precision int8 needs torch's quantized CPU ops, which this torch build lacks"
    return None


def compile_problem(precision: str = "fp32", device: str = "cpu") -> Optional[str]:
    """Why torch.compile of the image network cannot work here, or None: it runs fp32 on
    the CPU, where inductor builds C++ kernels with the compiler of $CXX (default g++)
    -- tried for real on a tiny function, so a compiler that cannot build is caught too."""
    if precision != "fp32":
        return f"torch.compile is for precision fp32 only, not {precision}"
    if device != "cpu":
        return f"torch.compile of the image network is for device cpu only, not {device}"
    import torch._inductor.config as inductor_config
    from torch._inductor.cpp_builder import get_cpp_compiler

    looked_for = " or ".join(c for c in inductor_config.cpp.cxx if c) or "g++"
    try:
        get_cpp_compiler()
    except Exception:  # noqa: BLE001 - InvalidCxxCompiler, and whatever a broken toolchain raises
        return f"no working C++ compiler ({looked_for}), which torch.compile (inductor) needs on the CPU"
    try:
        probe = torch.compile(lambda x: torch.nn.functional.gelu(x * 2.0) + 1.0, dynamic=False, fullgraph=True)
        probe(torch.ones(4, 4))
    except Exception as exc:  # noqa: BLE001 - a compiler that is there but cannot build
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"torch.compile fails with the C++ compiler {looked_for}: {text}"
    return None


def configure_inference(model: OracleModel, precision: str = "fp32", device: str = "cpu",
                        compile: bool = False) -> OracleModel:
    """Move `model` to `device` and set the image network's precision (Omni; the
    light-curve networks always run in fp32). int8 packs the current weights: call it
    after loading them. `compile` (fp32 on the CPU): torch.compile the image network and
    run it once, so the compile (~10-45 s) happens here, logged, not at the first batch;
    no-op for models without one. Raises ValueError naming what to fix."""
    problem = precision_problem(precision, device) or device_problem(device)
    if problem:
        raise ValueError(problem)
    model.to(device)
    if model.needs_stamp:
        model.image_spine.convnext.to(memory_format=torch.channels_last)
        try:
            model.image_spine.set_precision(precision)
        except RuntimeError as exc:  # a torch whose quantized ops are gone or refuse this CPU
            raise ValueError(f"precision {precision} does not work with this torch: {exc}") from exc
        if compile:
            problem = compile_problem(precision, device)
            if problem:
                raise ValueError(problem)
            t0 = time.perf_counter()
            try:
                model.image_spine.compile_trunk()
            except Exception as exc:  # noqa: BLE001 - inductor's errors are many and long
                text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"torch.compile of the image network failed: {text}") from exc
            log.info("compiled Omni's image network (torch.compile, fp32, %d stamps per pass) in %.1f s",
                     TRUNK_CHUNK, time.perf_counter() - t0)
    return model
