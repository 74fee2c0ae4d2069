"""Small helpers shared by the flow tests."""

from __future__ import annotations

from pathlib import Path

from operators.config import Settings
from operators.messages import decode_avro
from operators.sample import read_messages
from operators.surveys import Survey


def settings_for(survey: Survey, tmp_path: Path, **env) -> Settings:
    """Settings as a user would get them, writing under `tmp_path`."""
    base = {"ALERTFLOW_RESULTS_DIR": str(tmp_path / "results"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "logs")}
    return Settings.from_env(survey, {**base, **{k: str(v) for k, v in env.items()}})


def sample_truth(survey: Survey, messages: list[bytes] | None = None) -> tuple[set, set, int]:
    """Candids of a sample's messages that pass the survey's filter, those that do
    not, and how many messages are malformed (decoded independently of the flow)."""
    passing, failing, malformed = set(), set(), 0
    for value in messages if messages is not None else read_messages(survey.sample_dir):
        try:
            rec = decode_avro(value)
            names = {f.get("filter_name") or f["filter_id"] for f in rec["filters"]}
            (passing if survey.filter_name in names else failing).add(rec["candid"])
        except Exception:
            malformed += 1
    return passing, failing, malformed


def perturbed_weights(src: Path, dst: Path, scale: float = 0.05, seed: int = 0) -> Path:
    """Another checkpoint of the same network: `src` with seeded noise on its matrices
    (a stand-in for retrained weights; the outputs move, the architecture does not)."""
    import torch

    state = torch.load(src, map_location="cpu", weights_only=False)
    g = torch.Generator().manual_seed(seed)
    out = {k: v + scale * v.std() * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.ndim > 1 else v
           for k, v in state.items()}
    torch.save(out, dst)
    return dst
