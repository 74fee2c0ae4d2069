"""The shape of the code: imports point down the declared layers, no import cycles, short files.

Read from the source with `ast` (nothing is imported), so a violation is found
before anything runs: every `import`/`from ... import` counts, also those inside
functions and under `TYPE_CHECKING` (a lazy import is still a dependency).

The exception lists below name today's known violations with the reason each
is still there. They can only shrink: an entry that no longer happens fails
the test too, so whoever fixes one also deletes its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = ("dataflows", "operators", "models")

# Top to bottom. A package may import its own modules and any package on a lower
# line; packages on the same line are independent of each other.
LAYERS = [
    ("dataflows",),  # the flows and their CLI: wiring only
    ("operators/samples", "operators/sinks"),  # the bundled samples and their tools; Fritz, Slack
    ("operators/oracle", "operators/vra"),  # the ORACLE steps; the Fink VRA steps
    ("operators/io",),  # Kafka, dead letters, append-only files
    ("operators/runtime",),  # settings, batching, recovery, logs, metrics, progress
    ("models/oracle", "models/vetting"),  # ORACLE networks; the vetting classifier and its loop
]

UPWARD_EXCEPTIONS = {
    ("models.vetting.night", "operators.vra.alert_files"): "the night command reads Fink files itself; a CLI above both packages should",
}

# Edges that close a cycle (beyond those of UPWARD_EXCEPTIONS); without them the graph has none.
CYCLE_EXCEPTIONS = {
}

LINE_LIMIT = 400
LONG_FILES = {
    "dataflows/__main__.py": "hand-parsed argv and the --help tables: goes with one settings layer (issue 16 item 1)",
    "operators/vra/steps.py": "config, source, Avro decoding, topic cut, Sherlock and features steps, Parquet sink in one module",
    "models/vetting/labeling.py": "labelling session, proxy labels and their CLI in one module",
    "operators/samples/load.py": "sample reading, MongoDB loading and Kafka publishing in one module",
    "operators/runtime/metrics.py": "Prometheus metrics and the run summary in one module",
    "operators/oracle/tree_plot.py": "the tree layout, its rendering and a CLI in one module",
    "operators/sinks/fritz_client.py": "HTTP client, read pool and error kinds in one module",
}


def module_files() -> dict[str, Path]:
    out = {}
    for top in SOURCE_ROOTS:
        for path in (REPO / top).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _known(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:  # `from operators.oracle import steps` imports a module
                found.add(_known(f"{node.module}.{alias.name}"))
    return found - {None}


def edges() -> set[tuple[str, str]]:
    return {(m, d) for m, path in MODULES.items() for d in imports_of(path) if d != m}


def layer_of(module: str) -> tuple[int, str] | None:
    path = module.replace(".", "/")
    best = None
    for level, packages in enumerate(LAYERS):
        for package in packages:
            if (path == package or path.startswith(package + "/")) and (best is None or len(package) > len(best[1])):
                best = (level, package)
    return best


def test_every_module_has_a_layer():
    outside = [m for m in MODULES if m not in SOURCE_ROOTS and layer_of(m) is None]
    assert not outside, f"modules in no package of LAYERS (move them into one, or declare a layer): {sorted(outside)}"


def test_imports_point_downward_only():
    wrong = []
    for importer, imported in sorted(edges()):
        a, b = layer_of(importer), layer_of(imported)
        if a is None or b is None or a[1] == b[1] or a[0] < b[0]:
            continue
        if (importer, imported) not in UPWARD_EXCEPTIONS:
            kind = "sideways" if a[0] == b[0] else "upward"
            wrong.append(f"{importer} -> {imported} ({kind}: {a[1]} may not import {b[1]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_exceptions_still_happen():
    current = edges()
    gone = [f"{a} -> {b}" for a, b in [*UPWARD_EXCEPTIONS, *CYCLE_EXCEPTIONS] if (a, b) not in current]
    assert not gone, "fixed, so delete from the exception lists:\n" + "\n".join(gone)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for a, b in edges() - set(UPWARD_EXCEPTIONS) - set(CYCLE_EXCEPTIONS):
        graph.setdefault(a, set()).add(b)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_files_stay_short():
    sources = [p for top in (*SOURCE_ROOTS, "bench") for p in (REPO / top).rglob("*.py")]
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in sources}
    too_long = [f"{name}: {n} lines" for name, n in sorted(lengths.items()) if n > LINE_LIMIT and name not in LONG_FILES]
    assert not too_long, f"over {LINE_LIMIT} lines (split by job):\n" + "\n".join(too_long)
    short_now = [name for name in LONG_FILES if lengths.get(name, 0) <= LINE_LIMIT]
    assert not short_now, "now short or gone, so delete from LONG_FILES: " + ", ".join(short_now)
