"""Small helpers shared by the flow tests."""

from __future__ import annotations

from pathlib import Path

from operators.config import Settings
from operators.surveys import Survey


def settings_for(survey: Survey, tmp_path: Path, **env) -> Settings:
    """Settings as a user would get them, writing under `tmp_path`."""
    base = {"ALERTFLOW_RESULTS_DIR": str(tmp_path / "results"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "logs")}
    return Settings.from_env(survey, {**base, **{k: str(v) for k, v in env.items()}})
