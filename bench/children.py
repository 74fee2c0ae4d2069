"""Processes the flow benchmark's driver starts (flows, the baseline): their environment and how they stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from bench.measure import proc_status

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CSV_NAME = "oracle_ztf_results.csv"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A process we started (flow, baseline), its log, and how to stop it by its pid."""

    def __init__(self, args: list[str], env: dict, log: Path, name: str):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.peak_rss = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_peak(self) -> None:
        self.peak_rss = max(self.peak_rss, proc_status(self.pid).get("VmHWM", 0))

    def stop(self, grace_s: float = 30.0) -> Optional[int]:
        if self.alive():
            self.sample_peak()
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(timeout=10)
        return self.proc.returncode

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "BOOM_", "MONGODB_", "ALERTFLOW_", "ORACLE_", "BYTEWAX_"))}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    env.update({k: str(v) for k, v in extra.items()})
    return env
