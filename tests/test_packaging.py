"""The package as pip installs it: the ORACLE flows need no active-learning stack (not
installed by the base, not imported at run time), the `alertflow` command, its
`--version` and one flow's `--help`, and the licence files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib

import pytest

from dataflows import __main__ as dataflows_main
from operators.runtime.config import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
VETTING_STACK = {"mlflow", "scikit-learn", "light-curve", "scipy", "pyarrow"}
VETTING_MODULES = ("mlflow", "sklearn", "light_curve", "scipy")


def names(requirements) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_base_install_leaves_the_vetting_stack_to_its_extra():
    assert not VETTING_STACK & names(PYPROJECT["dependencies"])
    assert VETTING_STACK <= names(PYPROJECT["optional-dependencies"]["vetting"])
    assert "alertflow[vetting]" in PYPROJECT["optional-dependencies"]["test"], "the tests cover every flow"


def test_the_oracle_flows_import_and_run_without_the_vetting_stack(tmp_path):
    """In a fresh interpreter: build and run the ZTF flow on the bundled sample, build the
    LSST flow, import compare and backfill; none of the vetting modules gets imported."""
    code = textwrap.dedent(f"""
        import sys
        from bytewax.testing import run_main
        import dataflows.ztf, dataflows.lsst, dataflows.backfill, operators.oracle.compare
        run_main(dataflows.ztf.flow)
        print(sorted(m for m in {VETTING_MODULES!r} if m in sys.modules))
    """)
    env = {**os.environ, "ALERTFLOW_RESULTS_DIR": str(tmp_path), "ALERTFLOW_LOGS_DIR": str(tmp_path),
           "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "oracle_ztf_results.csv").stat().st_size > 0


def test_alertflow_is_python_m_dataflows():
    module, _, function = PYPROJECT["scripts"]["alertflow"].partition(":")
    assert module == "dataflows.__main__" and getattr(dataflows_main, function) is dataflows_main.main


def test_version_names_the_package_and_the_shipped_models(capsys):
    from importlib.metadata import version

    assert dataflows_main.main(["--version"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"alertflow {version('alertflow')}"
    # The sha256 prefixes of the shipped files, literal: another file with the same name cannot pass.
    assert "  ZTF model: ORACLE-btsv2:best_model_f1_ztf.pth@f1e3353cb6c0" in out
    assert "  LSST model: ORACLE-lsst_lite:best_model_f1_lsst.pth@f98f52330e62" in out


def refuse_exec(*args):
    raise AssertionError(f"the flow was started: {args}")


@pytest.mark.parametrize("argv", [["ztf", "--help"], ["run", "lsst", "-h"]])
def test_one_flows_help(argv, capsys, monkeypatch):
    monkeypatch.setattr(os, "execv", refuse_exec)
    assert dataflows_main.main(argv) == 0
    out = capsys.readouterr().out
    flow = argv[-2]
    assert out.startswith(f"usage: alertflow {flow} ")
    assert "--workers-per-process" in out and "--addresses" in out  # bytewax.run's own options
    assert "ORACLE_BATCH_SIZE" in out and f"configuration of {flow}" in out
    assert "FINK_VRA_TOPIC" not in out  # this flow's variables only


def test_a_bad_flow_option_stops_before_the_flow_starts(capsys, monkeypatch):
    monkeypatch.setattr(os, "execv", refuse_exec)
    assert dataflows_main.main(["ztf", "-w", "many"]) == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


def test_a_good_flow_option_starts_bytewax_run(monkeypatch):
    started = []
    monkeypatch.setattr(os, "execv", lambda path, argv: started.append(argv))
    dataflows_main.main(["ztf", "-w", "2"])
    assert started == [[sys.executable, "-m", "bytewax.run", "dataflows.ztf", "-w", "2"]]


def test_the_vetting_flow_without_its_extra_says_which_to_install(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "light_curve" else real(name, *a))
    monkeypatch.setattr(os, "execv", refuse_exec)
    assert dataflows_main.main(["fink_vra"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'alertflow[vetting]'" in err and "light_curve" in err


def test_the_licences_are_shipped():
    assert "MIT License" in (REPO_ROOT / "LICENSE").read_text()
    assert "alertflow developers" in (REPO_ROOT / "LICENSE").read_text()
    assert (REPO_ROOT / "data" / "ORACLE_LICENSE.txt").is_file()


def test_the_image_installs_the_extras_its_flows_and_backends_need(tmp_path):
    """The Dockerfile's own requirement list (its `python -c` run on pyproject.toml): the base,
    the vetting extra (every flow) and the onnx extra (ORACLE_BACKEND=onnxruntime), whose
    exports it keeps on the /data volume."""
    import re
    import shutil

    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    [command] = re.findall(r"RUN python -c '([^']+)'", dockerfile)
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    listed = subprocess.run([sys.executable, "-c", command], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout.split("\n")
    extras = PYPROJECT["optional-dependencies"]
    for requirement in PYPROJECT["dependencies"] + extras["vetting"] + extras["onnx"]:
        assert requirement in listed
    assert {"onnxruntime", "onnx"} <= names(listed)
    assert re.search(r"^\s*ORACLE_ONNX_CACHE_DIR=/data/", dockerfile, re.M) and "WORKDIR /data" in dockerfile
