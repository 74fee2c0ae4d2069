"""What changed between two results files (two models, or a model and its shadow).

    python -m dataflows compare A.csv B.csv [--html out.html] [--out-dir DIR] [--top N]

Joins the two files on candid and reports, for the alerts in both:
- how many changed their predicted leaf, and the confusion table leaf A × leaf B;
- the distribution of the probability change (B − A) of every taxonomy node (box plots);
- the alerts that changed most (half the L1 distance between their leaf
  probabilities, 0..1), with a link to the object (Fritz for ZTF, Babamul for
  LSST: `Survey.link` in operators/oracle/surveys.py);
- the taxonomy tree coloured by the mean change of each node.

Outputs: a text summary on stdout, `compare_boxplots.png` and `compare_tree.png`
in the output directory, and with `--html` one self-contained page (images
inlined as base64) to open in a browser.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm, to_hex
from matplotlib.figure import Figure

from operators.oracle.results import read_results
from operators.oracle.surveys import SURVEYS, Survey
from operators.oracle.tree_plot import figure_png, render_tree


@dataclass
class Comparison:
    survey: Survey
    models: tuple[str, str]
    counts: dict  # rows in A, in B, in both, only in A, only in B
    joined: pd.DataFrame  # candid, objectId, predicted_a, predicted_b, change, and <node>_a/_b/_shift
    confusion: pd.DataFrame  # leaf A (rows) x leaf B (columns), every leaf, counts
    shifts: pd.DataFrame  # one column per node (root excluded): B − A

    @property
    def nodes(self) -> list[str]:
        return list(self.shifts.columns)

    @property
    def changed(self) -> int:
        return int((self.joined.predicted_a != self.joined.predicted_b).sum())

    def largest(self, n: int = 20) -> pd.DataFrame:
        return self.joined.sort_values(["change", "candid"], ascending=[False, True]).head(n)


def survey_of(columns: Sequence[str]) -> Survey:
    for survey in SURVEYS.values():
        if all(node in columns for node in survey.taxonomy.nodes):
            return survey
    raise ValueError("not an ORACLE results file: its columns are not a known taxonomy's classes")


def _model_of(df: pd.DataFrame) -> str:
    names = sorted(set(df["model"])) if "model" in df and len(df) else []
    return ", ".join(names) or "unknown model"


def compare(a: pd.DataFrame, b: pd.DataFrame) -> Comparison:
    survey = survey_of(list(a.columns))
    if survey_of(list(b.columns)) is not survey:
        raise ValueError("the two files are results of different surveys")
    tax = survey.taxonomy
    nodes = list(tax.nodes[1:])  # the root is 1 in every row
    leaves = [tax.nodes[i] for i in tax.leaves]
    a, b = a.drop_duplicates("candid", keep="last"), b.drop_duplicates("candid", keep="last")
    j = a[["candid", "objectId", "predicted", *nodes]].merge(
        b[["candid", "predicted", *nodes]], on="candid", suffixes=("_a", "_b"), validate="one_to_one")
    shifts = pd.DataFrame({n: j[f"{n}_b"].astype(float) - j[f"{n}_a"].astype(float) for n in nodes})
    for n in nodes:
        j[f"{n}_shift"] = shifts[n]
    j["change"] = 0.5 * shifts[leaves].abs().sum(axis=1) if len(j) else pd.Series(dtype=float)
    confusion = pd.crosstab(pd.Categorical(j.predicted_a, categories=leaves),
                            pd.Categorical(j.predicted_b, categories=leaves), dropna=False)
    confusion.index.name, confusion.columns.name = "A \\ B", None
    both = set(j.candid)
    counts = {"A": len(a), "B": len(b), "both": len(j), "only A": len(set(a.candid) - both),
              "only B": len(set(b.candid) - both)}
    return Comparison(survey, (_model_of(a), _model_of(b)), counts, j, confusion, shifts)


# ---------------------------------------------------------------- figures


def boxplot_figure(c: Comparison, dpi: float = 100.0) -> Figure:
    """One box per node: the distribution of its probability change B − A."""
    nodes = c.nodes
    fig = Figure(figsize=(8, 0.8 + 0.32 * len(nodes)), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    data = [c.shifts[n].to_numpy() for n in reversed(nodes)]
    ax.boxplot(data, vert=False, tick_labels=list(reversed(nodes)), showfliers=True, widths=0.6)
    ax.axvline(0.0, color="#888888", linewidth=0.8)
    ax.set_xlim(-1.02, 1.02)
    ax.set_xlabel("probability change, B − A")
    ax.set_title(f"{c.counts['both']} alerts in both files")
    fig.tight_layout()
    return fig


def shift_colours(mean_shift: dict[str, float], limit: Optional[float] = None) -> dict[str, str]:
    """Diverging colours: blue where B is lower, red where higher, white at 0; the
    largest |shift| (or `limit`) gets the strongest colour, kept light enough for text."""
    top = limit or max([abs(v) for v in mean_shift.values() if np.isfinite(v)] + [1e-3])
    norm, cmap = TwoSlopeNorm(0.0, -top, top), colormaps["RdBu_r"]

    def light(v: float) -> str:
        rgb = np.array(cmap(norm(v))[:3])
        return to_hex(1.0 - 0.6 * (1.0 - rgb))

    return {k: light(v) if np.isfinite(v) else "#f4f4f4" for k, v in mean_shift.items()}


def tree_figure(c: Comparison, dpi: float = 100.0) -> Figure:
    """The taxonomy tree, each node's box coloured and labelled by its mean change B − A."""
    mean = {n: float(c.shifts[n].mean()) if len(c.shifts) else float("nan") for n in c.nodes}
    root = c.survey.taxonomy.nodes[0]
    return render_tree({}, c.survey.taxonomy, highlight="", dpi=dpi, shading={root: "#ffffff", **shift_colours(mean)},
                       value_text={root: "", **{n: f"{v:+.3f}" for n, v in mean.items()}},
                       title=f"mean probability change B − A ({c.counts['both']} alerts)",
                       subtitle=f"A: {c.models[0]}  ·  B: {c.models[1]}")


# ---------------------------------------------------------------- report


def text_report(c: Comparison, top: int = 20) -> str:
    n = c.counts
    lines = [f"A: {c.models[0]}", f"B: {c.models[1]}",
             f"rows: A {n['A']}, B {n['B']}, in both {n['both']} (only A {n['only A']}, only B {n['only B']})",
             f"predicted leaf changed: {c.changed} of {n['both']}", "", "confusion (rows: leaf A, columns: leaf B):",
             c.confusion.to_string(), "", f"largest changes (top {top}):"]
    for _, r in c.largest(top).iterrows():
        lines.append(f"  {r.candid} {r.objectId} {r.predicted_a} -> {r.predicted_b} change {r.change:.3f} "
                     f"{c.survey.link(r.objectId)}")
    return "\n".join(lines) + "\n"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def html_report(c: Comparison, pngs: dict[str, bytes], top: int = 20) -> str:
    e = html.escape
    n = c.counts
    conf = ['<table class="confusion"><tr><th>A \\ B</th>'
            + "".join(f"<th>{e(col)}</th>" for col in c.confusion.columns) + "</tr>"]
    for leaf, row in c.confusion.iterrows():
        cells = "".join(f'<td class="{"same" if col == leaf else ("moved" if v else "")}">{v}</td>'
                        for col, v in row.items())
        conf.append(f"<tr><th>{e(str(leaf))}</th>{cells}</tr>")
    conf.append("</table>")
    rows = ['<table class="largest"><tr><th>candid</th><th>object</th><th>leaf A</th><th>leaf B</th>'
            '<th>change</th><th>largest node shift</th></tr>']
    for _, r in c.largest(top).iterrows():
        node = max(c.nodes, key=lambda k: abs(r[f"{k}_shift"]))
        rows.append(f"<tr><td>{r.candid}</td><td><a href=\"{e(c.survey.link(r.objectId))}\">{e(r.objectId)}</a></td>"
                    f"<td>{e(r.predicted_a)}</td><td>{e(r.predicted_b)}</td><td>{r.change:.3f}</td>"
                    f"<td>{e(node)} {r[f'{node}_shift']:+.3f}</td></tr>")
    rows.append("</table>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ORACLE {e(c.survey.name)}: A vs B</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 80em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td.same {{ background: #e8f4e8; }} td.moved {{ background: #fde2cf; }}
img {{ max-width: 100%; display: block; margin: 1em 0; }}
</style></head><body>
<h1>ORACLE {e(c.survey.name)}: what changed from A to B</h1>
<p>A: <code>{e(c.models[0])}</code><br>B: <code>{e(c.models[1])}</code></p>
<p>Rows: A {n['A']}, B {n['B']}, in both {n['both']} (only in A {n['only A']}, only in B {n['only B']}).
<strong>{c.changed}</strong> of {n['both']} alerts changed their predicted leaf.</p>
<h2>Predicted leaf, A × B</h2>
{''.join(conf)}
<h2>Probability change per node</h2>
{_img(pngs['boxplots'], 'probability change per node, box plots')}
<h2>Mean change on the taxonomy</h2>
{_img(pngs['tree'], 'taxonomy tree coloured by mean probability change')}
<h2>Largest changes</h2>
<p>Change: half the sum over leaves of |B − A| (0: same leaf probabilities, 1: disjoint).</p>
{''.join(rows)}
</body></html>
"""


def write_report(a_path: Path, b_path: Path, out_dir: Path, html_path: Optional[Path] = None,
                 top: int = 20) -> tuple[Comparison, dict[str, Path]]:
    c = compare(read_results(a_path), read_results(b_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = {"boxplots": figure_png(boxplot_figure(c)), "tree": figure_png(tree_figure(c))}
    written = {}
    for name, png in pngs.items():
        written[name] = out_dir / f"compare_{name}.png"
        written[name].write_bytes(png)
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(html_report(c, pngs, top))
        written["html"] = html_path
    return c, written


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dataflows compare",
                                 description="Compare two ORACLE results files joined on candid.")
    ap.add_argument("a", type=Path, help="results CSV of model A (the reference)")
    ap.add_argument("b", type=Path, help="results CSV of model B")
    ap.add_argument("--html", type=Path, help="write one self-contained HTML page here")
    ap.add_argument("--out-dir", type=Path, help="PNG directory (default: beside --html, else results/compare)")
    ap.add_argument("--top", type=int, default=20, help="alerts listed with the largest changes")
    args = ap.parse_args(argv)
    out_dir = args.out_dir or (args.html.parent if args.html else Path("results") / "compare")
    try:
        c, written = write_report(args.a, args.b, out_dir, args.html, args.top)
    except (OSError, ValueError, KeyError) as exc:
        print(f"compare: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text_report(c, args.top))
    for path in written.values():
        print(f"wrote {path}")
    return 0
