"""The README stays a front page that CI can trust: CI runs exactly its two commands,
and it stays short (the rest lives in docs/; tests/test_docs.py checks links, commands
and the configuration table there)."""

from __future__ import annotations

import re

from operators.runtime.config import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_ci_runs_the_readme_commands():
    commands = re.findall(r"```bash\n(.+?)\n```", README.split("## The two commands", 1)[1].split("\n## ", 1)[0])
    assert len(commands) == 2
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    for command in commands:
        assert command in ci


def test_the_readme_is_a_front_page():
    assert len(README.encode()) <= 10_000, "move detail into docs/ and link it from 'Where to go next'"
    assert "## Where to go next" in README
