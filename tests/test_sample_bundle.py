"""The bundled samples (data/ztf_sample, data/lsst_sample) are what the builder makes
of data/fink and data/boom, byte for byte: a rebuild of an unchanged sample changes
nothing, and the command that rebuilds them has a real --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from operators.runtime.config import DATA_DIR
from operators.samples.bundle import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ("ztf_sample", "lsst_sample")


def committed_files() -> dict[str, bytes]:
    return {f"{s}/{p.name}": p.read_bytes() for s in SAMPLES for p in sorted((DATA_DIR / s).iterdir())}


def test_rebuilding_the_samples_gives_the_committed_bytes(tmp_path, capsys):
    assert main(["--out-dir", str(tmp_path)]) == 0
    rebuilt = {f"{s}/{p.name}": p.read_bytes() for s in SAMPLES for p in sorted((tmp_path / s).iterdir())}
    committed = committed_files()
    assert sorted(rebuilt) == sorted(committed)
    differ = [name for name in committed if rebuilt[name] != committed[name]]
    assert not differ, f"rebuilt files differ from the committed ones: {differ} (run python -m operators.samples.bundle)"


def test_help_prints_usage_and_writes_nothing():
    before = committed_files()
    proc = subprocess.run([sys.executable, "-m", "operators.samples.bundle", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m operators.samples.bundle") and "--out-dir" in proc.stdout
    assert committed_files() == before


def test_a_wrong_option_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "operators.samples.bundle", "--no-such-option"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-option" in proc.stderr
