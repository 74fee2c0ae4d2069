"""What the `alertflow` command (= `python -m dataflows`, dataflows/__main__.py) adds
around a flow: `--version`, one flow's `--help`, its arguments checked before it starts.

    alertflow ztf -w 2            run a flow (ztf, lsst, fink_vra) with bytewax.run's options
    alertflow ztf --help          one flow: its bytewax.run options and every variable it reads
    alertflow check ztf           check a configuration before a night
    alertflow --version           the package version and the shipped models' provenance
    alertflow backfill|compare|replay-dead-letters|...   as `python -m dataflows`

A flow's arguments are parsed by bytewax.run's own parser before the flow
starts, so a mistyped option is one usage error (exit 2), not a failure after
the weights have loaded. `alertflow` is `dataflows.__main__:main` (pyproject's
console script), so the two spellings cannot drift apart.
"""

from __future__ import annotations

import contextlib
import io
import importlib.util
import sys
from typing import Optional, Sequence

# What a flow needs beyond the base install, and the extra that brings it.
FLOW_EXTRAS = {"fink_vra": ("vetting", ("light_curve", "scipy", "pyarrow"))}


def version_text() -> str:
    """`alertflow 0.2.0` and one line per shipped model: its results label (network,
    file, sha256 prefix) as the results' `model` column writes it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        lines = [f"alertflow {version('alertflow')}"]
    except PackageNotFoundError:  # run from a checkout that was never installed
        lines = ["alertflow (not installed: pip install -e .)"]
    from operators.oracle.surveys import SURVEYS

    for name, survey in SURVEYS.items():
        lines.append(f"  {name} model: {shipped_model_label(survey.weights)}")
    return "\n".join(lines) + "\n"


def shipped_model_label(path) -> str:
    """The label `models.oracle.loading.model_label` gives a checkpoint, from the
    file alone (its keys name the network; nothing is built)."""
    from models.oracle.loading import ModelLoadError, _read_state_dict, detect_kind, weights_sha12

    try:
        kind = detect_kind(_read_state_dict(path))
    except (ModelLoadError, OSError) as exc:
        return f"{path}: {exc}"
    return f"ORACLE-{kind}:{path.name}@{weights_sha12(path)}"


def missing_extra(flow: str) -> Optional[str]:
    """One line naming the extra to install when a flow's packages are absent."""
    extra, modules = FLOW_EXTRAS.get(flow, (None, ()))
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return (f"the {flow} flow needs the '{extra}' extra ({', '.join(absent)} not installed) -> "
            f"pip install 'alertflow[{extra}]' (or pip install -e '.[{extra}]' in a checkout)")


def bytewax_args(info, args: Sequence[str]):
    """Parse `args` with bytewax.run's own parser, as `python -m bytewax.run dataflows.FLOW args`
    would (exits 2 with bytewax's usage on a bad option, 0 after --help)."""
    import bytewax.run

    saved = sys.argv
    sys.argv = [f"alertflow {info.name}", info.module, *args]
    try:
        return bytewax.run._parse_args()
    finally:
        sys.argv = saved


def flow_help(info, config_lines: Sequence[str]) -> str:
    """`alertflow FLOW --help`: bytewax.run's options, then the variables the flow reads."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        bytewax_args(info, ["--help"])
    options = buf.getvalue()
    options = options[options.find("options:"):] if "options:" in options else options
    options = "\n".join(line for line in options.splitlines() if "-h, --help" not in line)
    lines = [f"usage: alertflow {info.name} [-w N] [-i ID -a ADDRESSES] [-r DIR -s S -b S]",
             f"       (= python -m bytewax.run {info.module} [options])", "", info.summary, "",
             "bytewax.run " + options.strip(), "",
             f"configuration of {info.name} (environment variables, default in brackets):", *config_lines, "",
             f"check it first: alertflow check {info.name}; every flow's variables: alertflow --help"]
    return "\n".join(lines) + "\n"


def prepare_run(info, args: Sequence[str], config_lines) -> Optional[int]:
    """Before a flow starts: `--help` answered (exit 0), a missing extra or a bad
    bytewax.run option refused (exit 2); None when the flow may start."""
    if {"-h", "--help"} & set(args):
        sys.stdout.write(flow_help(info, config_lines()))
        return 0
    problem = missing_extra(info.name)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        bytewax_args(info, args)
    except SystemExit as exc:  # argparse has printed the usage and the error
        return exc.code if isinstance(exc.code, int) else 2
    return None
