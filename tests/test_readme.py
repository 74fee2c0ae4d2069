"""The README stays true: its configuration table is the one generated from the
settings models (every variable the flows read), and CI runs exactly its two commands."""

from __future__ import annotations

import re

from dataflows.__main__ import FLOWS, flow_variables, markdown_table
from operators.runtime.config import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_the_readme_table_is_the_one_generated_from_the_settings_models():
    assert markdown_table() in README, "regenerate it: python -m dataflows --markdown-table"


def test_every_variable_a_flow_reads_is_in_the_readme_table():
    table = README.split("## Configuration", 1)[1]
    missing = sorted({v.name for info in FLOWS.values() for v in flow_variables(info)
                      if f"`{v.name}`" not in table})
    assert not missing, f"add these to the README's configuration table: {missing}"


def test_ci_runs_the_readme_commands():
    commands = re.findall(r"```bash\n(.+?)\n```", README.split("## The two commands", 1)[1].split("\n## ", 1)[0])
    assert len(commands) == 2
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    for command in commands:
        assert command in ci
