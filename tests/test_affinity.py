"""ALERTFLOW_CPU_AFFINITY: the value is checked with the settings, the process index is bytewax's,
and the process (every thread it has) really runs on the core it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from operators.oracle.surveys import ZTF
from operators.runtime import affinity
from operators.runtime.config import REPO_ROOT, ConfigError, Settings


def test_values_parse_to_auto_a_core_list_or_not_pinned():
    assert affinity.parse("", [0, 1]) is None
    assert affinity.parse("auto", [0, 1]) == ()
    assert affinity.parse("1,0", [0, 1]) == (1, 0)
    assert affinity.parse("0-2,5", range(8)) == (0, 1, 2, 5)
    with pytest.raises(ValueError, match="not available"):
        affinity.parse("0,7", [0, 1])
    with pytest.raises(ValueError, match="not a core number"):
        affinity.parse("first", [0, 1])
    with pytest.raises(ValueError, match="not a core range"):
        affinity.parse("3-1", range(4))


def test_process_i_gets_core_i_modulo_the_cores():
    assert [affinity.core_for((), i, [2, 3]) for i in range(4)] == [2, 3, 2, 3]
    assert [affinity.core_for((5, 1, 4), i, range(8)) for i in range(4)] == [5, 1, 4, 5]
    assert affinity.process_index(["x", "-i", "3", "-a", "a;b"], {}) == 3
    assert affinity.process_index(["x", "--process-id=2"], {}) == 2
    assert affinity.process_index(["x"], {"BYTEWAX_PROCESS_ID": "1"}) == 1
    assert affinity.process_index(["x"], {}) == 0


def test_the_settings_refuse_a_bad_value_naming_the_variable():
    assert Settings.from_env(ZTF, {}).oracle.cpu_affinity == ""
    assert Settings.from_env(ZTF, {"ALERTFLOW_CPU_AFFINITY": "AUTO"}).oracle.cpu_affinity == "auto"
    with pytest.raises(ConfigError, match="ALERTFLOW_CPU_AFFINITY"):
        Settings.from_env(ZTF, {"ALERTFLOW_CPU_AFFINITY": "0-"})
    with pytest.raises(ConfigError, match="ALERTFLOW_CPU_AFFINITY.*not available"):
        Settings.from_env(ZTF, {"ALERTFLOW_CPU_AFFINITY": str(max(affinity.available_cores()) + 1)})


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity on this OS")
def test_a_pinned_process_runs_every_thread_on_its_core():
    """Process 1 of a cluster, "auto": the second available core (the first when there is one);
    a thread started before the pinning is moved too, one started after inherits it."""
    code = """
import json, os, sys, threading
from operators.runtime import affinity
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
core = affinity.apply("auto", ["bytewax.run", "-i", "1"], {})
after = threading.Thread(target=stop.wait); after.start()
cores = {t: sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
stop.set()
print(json.dumps({"core": core, "threads": cores}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    available = affinity.available_cores()
    assert res["core"] == available[1 % len(available)]
    assert len(res["threads"]) >= 3 and all(c == [res["core"]] for c in res["threads"].values()), res


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity on this OS")
def test_the_flow_pins_its_process_at_start(tmp_path):
    """The ZTF flow on the bundled sample, told to run on the last available core: it says so in its
    log and writes its rows as without pinning."""
    core = affinity.available_cores()[-1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MONGODB_", "BOOM_", "ALERTFLOW_",
                                                                   "ORACLE_", "BYTEWAX_"))}
    env.update(PYTHONPATH=str(REPO_ROOT), ALERTFLOW_CPU_AFFINITY=str(core), ALERTFLOW_RESULTS_DIR=str(tmp_path / "r"),
               ALERTFLOW_LOGS_DIR=str(tmp_path / "logs"))
    out = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.ztf"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    log = (tmp_path / "logs" / "oracle_ztf.log").read_text()
    assert f"ALERTFLOW_CPU_AFFINITY={core}: this process runs on core {core}" in log
    assert (tmp_path / "r" / "oracle_ztf_results.csv").read_text().count("\n") > 10
