"""The documentation stays true: every relative link in README.md, CHANGELOG.md and
docs/ resolves (files and #anchors), every `python -m ...`, `python bench/...` and
`alertflow ...` command they show parses its arguments with the real parsers (no
command runs), and docs/configuration.md holds the table generated from the
settings models."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from dataflows import __main__ as dataflows_main
from dataflows.__main__ import FLOWS, flow_variables, markdown_table
from operators.runtime.config import REPO_ROOT

DOCS = sorted([REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", *(REPO_ROOT / "docs").glob("*.md")])
CONFIGURATION = REPO_ROOT / "docs" / "configuration.md"
# Commands shown that are not ours to parse: the installer, the test runner, a shell.
NOT_OURS = {"pip", "venv", "pytest", "mlflow"}
SUBCOMMANDS = {"check", "run", "backfill", "compare", "listen", "replay-dead-letters"}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


# ------------------------------------------------------------------ links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            yield target


def test_the_slug_is_githubs():
    assert slug(" When the weights change: backfill, shadow, compare") == "when-the-weights-change-backfill-shadow-compare"
    assert slug("The `alertflow` command") == "the-alertflow-command"
    assert slug("Workers, processes and hosts") == "workers-processes-and-hosts"


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        where = (doc.parent / file).resolve() if file else doc
        if not where.exists():
            broken.append(f"{target}: no {where.relative_to(REPO_ROOT) if where.is_relative_to(REPO_ROOT) else where}")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no heading #{anchor} in {_rel(where)}")
    assert not broken, f"{_rel(doc)}: " + "; ".join(broken)


def test_the_link_check_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nothing) [gone](missing.md)\n")
    assert list(links(page)) == ["#title", "#nothing", "missing.md"]
    assert anchors(page) == {"title"}


# ------------------------------------------------------------------ commands


def commands(path: Path) -> list[str]:
    """Every command line of a ```bash block (continuations joined, `&&`/`;` split)
    and every inline `python -m ...` / `alertflow ...` span."""
    text = path.read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found.extend(_split(line))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`((?:python3? (?:-m |bench/)|alertflow )[^`]*)`", prose):
        # A module or subcommand named in prose (`python -m dataflows backfill`), or a usage
        # synopsis (`[--option X]`), is no command to run.
        words = span.split()
        named = words[-1] in SUBCOMMANDS and len(words) == (4 if span.startswith("python") else 2)
        if len(words) > (3 if span.startswith("python") else 1) and "[" not in span and not named:
            found.extend(_split(span))
    return found


def _split(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    out, current = [], []
    for token in lexer:
        if token in {"&&", ";", "|", "||", "&"}:
            out.append(current)
            current = []
        else:
            current.append(token)
    out.append(current)
    result = []
    for tokens in out:
        while tokens and re.match(r"[A-Z_][A-Z0-9_]*=", tokens[0]):  # VAR=value prefixes
            tokens = tokens[1:]
        if tokens and (tokens[0] == "alertflow" or (tokens[0] in {"python", "python3"} and len(tokens) > 1
                                                   and (tokens[1] == "-m" or tokens[1].startswith("bench/")))):
            result.append(shlex.join(tokens))
    return result


def _refuse_unparsed(source: Path) -> None:
    """Only a command whose arguments go through argparse can be stopped before it works:
    anything else would really run here (and, e.g., rebuild the bundled samples)."""
    assert _parses(source, depth=2), f"{source.name} parses no arguments with argparse"


def _parses(source: Path, depth: int) -> bool:
    if source.name == "__init__.py":
        source = source.with_name("__main__.py")
    text = source.read_text() if source.is_file() else ""
    if "parse_args(" in text or "cli_main" in text:
        return True
    # A module that hands over to another's CLI (runpy.run_module, or `from X import main`).
    handed = re.findall(r"run_module\(\"([\w.]+)\"", text) + re.findall(r"from ([\w.]+) import [^\n]*\bmain\b", text)
    return depth > 0 and any(_parses(Path(importlib.util.find_spec(m).origin), depth - 1) for m in handed)


class Parsed(Exception):
    """Raised where a command would start its work: its arguments were accepted."""


def parse_only(command: str, monkeypatch) -> None:
    """Run `command` in this process up to the point where its arguments are
    parsed: argparse's parse_args, bytewax.run's parser, `check`'s flow name, the
    exec of a flow. Raises AssertionError when they are refused."""
    tokens = shlex.split(command)
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    def checks(flow, *a, **k):
        assert flow in FLOWS, f"unknown flow {flow!r}"
        raise Parsed

    def execv(*a):
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(dataflows_main, "run_checks", checks)
    monkeypatch.setattr(os, "execv", execv)
    if tokens[0] == "alertflow" or tokens[1:3] == ["-m", "dataflows"]:
        args, run = tokens[1:] if tokens[0] == "alertflow" else tokens[3:], lambda a: dataflows_main.main(a)
    elif tokens[1] == "-m":
        module, args = tokens[2], tokens[3:]
        if module == "bytewax.run":
            target = next((a for a in args if not a.startswith("-")), "")
            assert importlib.util.find_spec(target.split(":")[0]), f"no module {target}"

        _refuse_unparsed(Path(importlib.util.find_spec(module).origin))

        def run(a, module=module):
            monkeypatch.setattr(sys, "argv", [module, *a])
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, args = REPO_ROOT / tokens[1], tokens[2:]
        assert script.is_file(), f"no {tokens[1]}"
        _refuse_unparsed(script)

        def run(a, script=script):
            monkeypatch.setattr(sys, "argv", [str(script), *a])
            monkeypatch.syspath_prepend(str(script.parent))
            runpy.run_path(str(script), run_name="__main__")
    try:
        code = run(args)
    except Parsed:
        return
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None), f"exit status {code}"


ALL_COMMANDS = sorted({(_rel(doc), c) for doc in DOCS for c in commands(doc)})
NOT_OURS_COMMANDS = [(d, c) for d, c in ALL_COMMANDS if shlex.split(c)[1:3] in (["-m", m] for m in NOT_OURS)]


def test_the_docs_show_commands():
    shown = {c for _, c in ALL_COMMANDS}
    assert "python -m bytewax.run dataflows.ztf" in shown
    assert any(c.startswith("alertflow ") for c in shown)
    assert len(shown) > 20


@pytest.mark.parametrize("doc,command", [dc for dc in ALL_COMMANDS if dc not in NOT_OURS_COMMANDS],
                         ids=[f"{d}: {c[:60]}" for d, c in ALL_COMMANDS if (d, c) not in NOT_OURS_COMMANDS])
def test_every_command_shown_parses(doc, command, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("ALERTFLOW_LOGS_DIR", str(tmp_path))
    monkeypatch.setenv("ALERTFLOW_RESULTS_DIR", str(tmp_path))
    parse_only(command, monkeypatch)


def test_the_command_check_refuses_a_bad_command(monkeypatch):
    for bad in ("python -m operators.oracle.surveys ztf",  # no argparse: it could only be run for real
                "alertflow ztf -w many", "python -m dataflows check nosuchflow", "alertflow nosuchcommand",
                "python -m dataflows backfill ztf --sinse 2026-01-01", "python -m bytewax.run dataflows.nosuch"):
        with pytest.raises(AssertionError):
            parse_only(bad, monkeypatch)


# ------------------------------------------------------------------ configuration


def test_the_configuration_table_is_the_one_generated_from_the_settings_models():
    assert markdown_table() in CONFIGURATION.read_text(), "regenerate it: python -m dataflows --markdown-table"


def test_every_variable_a_flow_reads_is_in_the_configuration_table():
    table = CONFIGURATION.read_text()
    missing = sorted({v.name for info in FLOWS.values() for v in flow_variables(info) if f"`{v.name}`" not in table})
    assert not missing, f"add these to docs/configuration.md: {missing}"
