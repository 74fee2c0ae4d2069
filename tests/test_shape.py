"""One settings root that every check and the flow read alike (issue 27 trap 1), and
the close of a background writer that says what it waits for and stops cleanly on
Ctrl-C (issue 27 trap 3)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from operators.oracle.surveys import ZTF
from operators.runtime.config import REPO_ROOT, ConfigError, Settings
from tests.conftest import _stop_process, free_port
from tests.test_ops import clean_env

# A value each setting's model refuses, and the variable the one line must name.
REFUSED = {
    "ALERTFLOW_LOG_LEVEL": "verbose",
    "ORACLE_BATCH_SIZE": "0",
    "ORACLE_BATCH_TIMEOUT_S": "0",
    "ORACLE_TORCH_THREADS": "0",
    "ORACLE_SHARDS": "0",
    "ALERTFLOW_RECOVERY_PARTITIONS": "0",
    "ALERTFLOW_SNAPSHOT_INTERVAL_S": "-1",
    "ALERTFLOW_BACKUP_INTERVAL_S": "-1",
    "ALERTFLOW_METRICS_PORT": "web",
    "BYTEWAX_DATAFLOW_API_PORT": "99999",
    "KAFKA_STARTING_OFFSET": "middle",
    "BOOM_DATABASE__PORT": "70000",
    "MONGODB_TIMEOUT_MS": "0",
    "FRITZ_RATE": "0",
    "SLACK_MIN_LEAF_PROBABILITY": "2",
}


def outputs(tmp_path: Path) -> dict:
    return {"ALERTFLOW_RESULTS_DIR": str(tmp_path / "r"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "l")}


@pytest.mark.parametrize("variable", list(REFUSED))
def test_a_value_the_settings_refuse_fails_check_too(tmp_path, variable):
    from dataflows.__main__ import run_checks

    env = {**outputs(tmp_path), variable: REFUSED[variable]}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(ZTF, env)
    line = str(refused.value)
    assert variable in line and " -> " in line and "\n" not in line, line
    failed = [r.line() for r in run_checks("ztf", env) if not r.ok]
    assert len(failed) == 1 and variable in failed[0], failed


def test_an_unknown_log_level_stops_the_flow_in_one_line_as_check_says(tmp_path):
    """Trap 1: `ALERTFLOW_LOG_LEVEL=verbose` was a traceback from logging while `check` passed."""
    env = clean_env(ALERTFLOW_LOG_LEVEL="verbose", **outputs(tmp_path))
    check = subprocess.run([sys.executable, "-m", "dataflows", "check", "ztf"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 1 and "ALERTFLOW_LOG_LEVEL" in check.stdout, check.stdout
    flow = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.ztf"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in (flow.stdout + flow.stderr).splitlines() if line.strip()]
    assert flow.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("configuration error: ALERTFLOW_LOG_LEVEL='VERBOSE'") and "DEBUG" in lines[0]
    assert not (tmp_path / "r").exists()


def test_ctrl_c_while_the_flow_waits_for_an_unreachable_slack_is_a_clean_stop(tmp_path):
    """Trap 3: the bundled replay with Slack configured but unreachable waited ~60 s in
    silence, and Ctrl-C there was a panic and a traceback, exit 1."""
    env = clean_env(**outputs(tmp_path), PYTHONUNBUFFERED="1", POST_TO_SLACK="true", SLACK_BOT_TOKEN="xoxb-test",
                    SLACK_ORACLE_CHANNEL_ID="C1", SLACK_API_URL=f"http://127.0.0.1:{free_port()}/api/")
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.ztf"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "waiting up to" in line:
                break
        said = time.monotonic()
        wait_line = lines[-1]
        assert "27 alerts not sent yet" in wait_line and "waiting up to 60 s for Slack" in wait_line, lines
        assert "Ctrl-C stops now" in wait_line and "recovery state" in wait_line
        # said as the wait starts: the last batch was logged just before
        assert any("ZTF batch:" in line for line in lines[-3:]), lines[-3:]
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        rest, _ = proc.communicate(timeout=30)
        stopped_after = time.monotonic() - said
    finally:
        _stop_process(proc)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-3000:]
    assert stopped_after < 15, stopped_after  # not the rest of the 60 s
    for bad in ("Traceback", "panicked", "BytewaxRuntimeError", "KeyboardInterrupt"):
        assert bad not in out, out[-3000:]
    assert "slack-poster: stopped by Ctrl-C with 27 alerts not sent" in out, out[-3000:]
    assert "27 alerts not posted" in out and "stopped by Ctrl-C (SIGINT)" in out
    assert len((tmp_path / "r" / "oracle_ztf_results.csv").read_text().splitlines()) == 28  # the CSV is whole


def test_each_checkpoint_is_loaded_once_when_the_flow_is_built(tmp_path, monkeypatch):
    """The checks load the models and the flow keeps them: the shadow model was loaded twice."""
    import torch

    from dataflows.oracle import build_flow
    from tests.helpers import perturbed_weights, settings_for

    shadow = perturbed_weights(ZTF.weights, tmp_path / "retrained_ztf.pth", scale=0.02)
    settings = settings_for(ZTF, tmp_path, ORACLE_ZTF_SHADOW_WEIGHTS=shadow)
    loaded = []
    real = torch.load

    def counting(f, *args, **kwargs):
        loaded.append(Path(f).name if isinstance(f, (str, Path)) else repr(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    build_flow(ZTF, settings)
    assert sorted(loaded) == sorted([Path(ZTF.weights).name, "retrained_ztf.pth"]), loaded
