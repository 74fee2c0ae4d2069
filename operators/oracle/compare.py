"""What changed between two results files (two models, or a model and its shadow).

    python -m dataflows compare A.csv B.csv [--html out.html] [--out-dir DIR] [--top N]

Joins the two files on candid and reports, for the alerts in both:
- how many changed their predicted leaf, and the confusion table leaf A × leaf B
  with row and column totals;
- the distribution of the probability change (B − A) of every taxonomy node (box plots);
- the alerts that changed most (half the L1 distance between their leaf
  probabilities, 0..1): time, position, predicted leaf and its probability under
  A and under B, and a link to the object (Fritz for ZTF, Babamul for LSST:
  `Survey.link` in operators/oracle/surveys.py);
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
    joined: pd.DataFrame  # candid, objectId, time, ra, dec, predicted_a/_b, p_a/_b (the predicted leaf's
    #                       probability), change, and <node>_a/_b/_shift
    confusion: pd.DataFrame  # leaf A (rows) x leaf B (columns), every leaf, counts
    shifts: pd.DataFrame  # one column per node (root excluded): B − A
    time_column: str = "jd"  # "jd" or "mjd": the survey's own time, as the files carry it

    @property
    def nodes(self) -> list[str]:
        return list(self.shifts.columns)

    @property
    def changed(self) -> int:
        return int((self.joined.predicted_a != self.joined.predicted_b).sum())

    def largest(self, n: int = 20) -> pd.DataFrame:
        return self.joined.sort_values(["change", "candid"], ascending=[False, True]).head(n)

    @property
    def confusion_with_totals(self) -> pd.DataFrame:
        """The confusion table with a `total` column (alerts per leaf under A) and a
        `total` row (per leaf under B); the corner is the number of alerts in both."""
        table = self.confusion.copy()
        table["total"] = table.sum(axis=1)
        table.loc["total"] = table.sum(axis=0)
        return table


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
    time_column = "mjd" if "mjd" in a.columns else "jd"
    where = [c for c in (time_column, "ra", "dec") if c in a.columns]  # files before 0.2.0 have no ra/dec
    j = a[["candid", "objectId", *where, "predicted", *nodes]].merge(
        b[["candid", "predicted", *nodes]], on="candid", suffixes=("_a", "_b"), validate="one_to_one")
    for c in (time_column, "ra", "dec"):
        if c not in j:
            j[c] = np.nan
    j = j.rename(columns={time_column: "time"})
    for side in ("a", "b"):  # the predicted leaf's probability, read from its node column
        leaf_p = j[[f"{n}_{side}" for n in leaves]].astype(float).to_numpy()
        pick = pd.Categorical(j[f"predicted_{side}"], categories=leaves).codes
        j[f"p_{side}"] = np.where(pick >= 0, leaf_p[np.arange(len(j)), np.maximum(pick, 0)], np.nan) \
            if len(j) else pd.Series(dtype=float)
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
    return Comparison(survey, (_model_of(a), _model_of(b)), counts, j, confusion, shifts, time_column)


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


def _where(c: Comparison, r) -> str:
    """`jd 2458802.59213 ra 315.85629 dec -20.71029` (what the files hold of it)."""
    bits = [f"{c.time_column} {r.time:.5f}" if pd.notna(r.time) else ""]
    if pd.notna(r.ra) and pd.notna(r.dec):
        bits.append(f"ra {r.ra:.5f} dec {r.dec:+.5f}")
    return " ".join(b for b in bits if b)


def text_report(c: Comparison, top: int = 20) -> str:
    n = c.counts
    lines = [f"A: {c.models[0]}", f"B: {c.models[1]}",
             f"rows: A {n['A']}, B {n['B']}, in both {n['both']} (only A {n['only A']}, only B {n['only B']})",
             f"predicted leaf changed: {c.changed} of {n['both']}", "",
             "confusion (rows: leaf A, columns: leaf B, with totals):",
             c.confusion_with_totals.to_string(), "", f"largest changes (top {top}):"]
    for _, r in c.largest(top).iterrows():
        lines.append(f"  {r.candid} {r.objectId} {_where(c, r)}  {r.predicted_a} {r.p_a:.3f} -> "
                     f"{r.predicted_b} {r.p_b:.3f}  change {r.change:.3f}  {c.survey.link(r.objectId)}")
    return "\n".join(lines) + "\n"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _confusion_html(c: Comparison) -> str:
    e = html.escape
    table = c.confusion_with_totals
    out = ['<table class="confusion"><thead><tr><th class="corner">A \\ B</th>'
           + "".join(f'<th class="{"total" if col == "total" else "col"}"><span>{e(str(col))}</span></th>'
                     for col in table.columns)
           + "</tr></thead><tbody>"]
    for leaf, row in table.iterrows():
        cells = []
        for col, v in row.items():
            kind = ("total" if "total" in (leaf, col) else "zero" if not v else "same" if col == leaf else "moved")
            cells.append(f'<td class="{kind}">{int(v) if v or kind == "total" else "·"}</td>')
        out.append(f'<tr><th class="{"total" if leaf == "total" else "leaf"}">{e(str(leaf))}</th>{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _largest_html(c: Comparison, top: int) -> str:
    e = html.escape
    out = ['<table class="largest"><thead><tr><th>candid</th><th>object</th>'
           f'<th>{e(c.time_column)}</th><th>ra</th><th>dec</th>'
           '<th>leaf A</th><th>p A</th><th>leaf B</th><th>p B</th><th>change</th><th>largest node shift</th>'
           '</tr></thead><tbody>']

    def num(x, fmt):
        return format(x, fmt) if pd.notna(x) else ""

    for _, r in c.largest(top).iterrows():
        node = max(c.nodes, key=lambda k: abs(r[f"{k}_shift"]))
        moved = " moved" if r.predicted_a != r.predicted_b else ""
        out.append(f"<tr><td>{r.candid}</td><td><a href=\"{e(c.survey.link(r.objectId))}\">{e(r.objectId)}</a></td>"
                   f"<td>{num(r.time, '.5f')}</td><td>{num(r.ra, '.5f')}</td><td>{num(r.dec, '+.5f')}</td>"
                   f'<td class="leaf">{e(r.predicted_a)}</td><td>{num(r.p_a, ".3f")}</td>'
                   f'<td class="leaf{moved}">{e(r.predicted_b)}</td><td>{num(r.p_b, ".3f")}</td>'
                   f"<td>{r.change:.3f}</td><td>{e(node)} {r[f'{node}_shift']:+.3f}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def html_report(c: Comparison, pngs: dict[str, bytes], top: int = 20) -> str:
    e = html.escape
    n = c.counts
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ORACLE {e(c.survey.name)}: A vs B</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em 2em; font-size: 15px; }}
h1 {{ font-size: 1.5em; margin: 0 0 0.3em; }} h2 {{ font-size: 1.15em; margin: 0 0 0.5em; }}
code {{ font-size: 0.9em; }}
.summary {{ display: flex; flex-wrap: wrap; gap: 0.5em 3em; margin-bottom: 1em; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1.5em 3em; align-items: flex-start; margin-bottom: 1.5em; }}
.row > section {{ flex: 1 1 28em; min-width: 0; max-width: 100%; overflow-x: auto; }}
.row > section.fit {{ flex: 0 1 auto; }}
table {{ border-collapse: collapse; font-variant-numeric: tabular-nums; }}
th, td {{ border: 1px solid #d0d0d0; padding: 0.25em 0.55em; text-align: right; white-space: nowrap; }}
th {{ background: #f3f3f3; }} th.leaf, td.leaf {{ text-align: left; }}
table.largest {{ width: 100%; }} table.largest thead th {{ position: sticky; top: 0; }}
table.confusion td {{ min-width: 1.6em; }}
table.confusion th.col {{ vertical-align: bottom; padding: 0.4em 0.25em; }}
table.confusion th.col span {{ writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; }}
td.same {{ background: #e3f2e3; }} td.moved {{ background: #fcdcc4; }} td.zero {{ color: #c0c0c0; text-align: center; }}
th.total, td.total {{ background: #e8e8ef; font-weight: 600; }}
td.leaf.moved {{ background: #fcdcc4; }}
img {{ max-width: 100%; height: auto; display: block; }}
.note {{ color: #555; margin: 0.3em 0 0.6em; }}
</style></head><body>
<h1>ORACLE {e(c.survey.name)}: what changed from A to B</h1>
<div class="summary">
<div>A: <code>{e(c.models[0])}</code><br>B: <code>{e(c.models[1])}</code></div>
<div>Rows: A {n['A']}, B {n['B']}, in both {n['both']} (only in A {n['only A']}, only in B {n['only B']}).<br>
<strong>{c.changed}</strong> of {n['both']} alerts changed their predicted leaf.</div>
</div>
<div class="row">
<section class="fit"><h2>Predicted leaf, A × B</h2>
<p class="note">Rows: leaf under A; columns: leaf under B; totals per leaf in the last row and column.</p>
{_confusion_html(c)}</section>
<section><h2>Mean change on the taxonomy</h2>
{_img(pngs['tree'], 'taxonomy tree coloured by mean probability change')}</section>
</div>
<section style="overflow-x: auto"><h2>Largest changes</h2>
<p class="note">Change: half the sum over leaves of |B − A| (0: same leaf probabilities, 1: disjoint);
p A, p B: the probability of the predicted leaf under each model.</p>
{_largest_html(c, top)}</section>
<section style="margin-top: 1.5em"><h2>Probability change per node</h2>
{_img(pngs['boxplots'], 'probability change per node, box plots')}</section>
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
