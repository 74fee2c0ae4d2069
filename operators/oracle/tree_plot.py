"""Draw a classification's probability tree as a PNG (for Slack and for people).

One function for every taxonomy: the tree is laid out left to right, the root
in the first column and each depth in the next, leaves one per row in
pre-order, every internal node centred on its children. Each node is a box
whose filled part is proportional to its class probability, with the class
name and the probability written in it; the path to the predicted leaf is
drawn in a second colour. Sizes are computed from the measured text, so the
26-node ELAsTiCC tree stays as legible as the 10-node ZTF (BTS) one, and the
image is wider than tall so a Slack preview still reads.

Only the object-oriented matplotlib API is used (no pyplot), so rendering is
safe from background threads.

Inputs: class probabilities per node name (the root may be missing: it is 1),
a `Taxonomy`. Outputs: a matplotlib `Figure` or PNG bytes.

CLI: `python -m operators.oracle.tree_plot results/oracle_ztf_results.csv` writes one
PNG per row to `results/plots/` (see `--help`).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

from models.oracle.taxonomy import Taxonomy
from operators.oracle.results import jd_utc

log = logging.getLogger(__name__)


def survey_taxonomies() -> dict[str, Taxonomy]:
    """Survey name -> taxonomy, for the CLI (imported here: a sink needs no surveys)."""
    from operators.oracle.surveys import SURVEYS

    return {name: s.taxonomy for name, s in SURVEYS.items()}

# Colours: bar of an ordinary node, bar of a node on the predicted path,
# box background, outline, edges.
BAR = "#9ecae1"
BAR_PATH = "#fdae6b"
BOX_BG = "#f4f4f4"
OUTLINE = "#9a9a9a"
OUTLINE_PATH = "#d9480f"
EDGE = "#b0b0b0"
EDGE_PATH = "#d9480f"
FAINT_TEXT = "#6e6e6e"
SUBTITLE_SEP = "  ·  "


def format_probability(p: Optional[float]) -> str:
    """Two decimals; tiny but non-zero values read `<0.01`, unknown `n/a`."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if 0 < p < 0.005:
        return "<0.01"
    return f"{p:.2f}"


def _prob(probabilities: Mapping[str, Any], taxonomy: Taxonomy, i: int) -> Optional[float]:
    name = taxonomy.nodes[i]
    value = probabilities.get(name)
    if value is None or value == "":
        return 1.0 if i == 0 else None
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return p if math.isfinite(p) else None


def _layout(taxonomy: Taxonomy) -> dict[int, float]:
    """Row of each node: leaves 0, 1, ... in pre-order; a parent at its children's mean."""
    row: dict[int, float] = {}
    next_leaf = 0

    def place(i: int) -> float:
        nonlocal next_leaf
        kids = taxonomy.children(i)
        if not kids:
            row[i] = float(next_leaf)
            next_leaf += 1
        else:
            ys = [place(c) for c in kids]
            row[i] = (min(ys) + max(ys)) / 2.0
        return row[i]

    place(0)
    return row


def _path_to(taxonomy: Taxonomy, leaf: Optional[str]) -> set[int]:
    if leaf is None or leaf not in taxonomy.nodes:
        return set()
    i = taxonomy.nodes.index(leaf)
    out = set()
    while i >= 0:
        out.add(i)
        i = taxonomy.parent[i]
    return out


def render_tree(
    probabilities: Mapping[str, Any],
    taxonomy: Taxonomy,
    *,
    title: Optional[str] = None,
    subtitle: Optional[str] = None,
    highlight: Optional[str] = None,
    fontsize: float = 12.0,
    dpi: float = 100.0,
    shading: Optional[Mapping[str, str]] = None,
    value_text: Optional[Mapping[str, str]] = None,
) -> Figure:
    """The probability tree as a matplotlib Figure (Agg canvas attached).

    `highlight` names the leaf whose path from the root is drawn in the path
    colour; by default the most probable leaf. `shading` (node -> colour) fills
    those nodes' boxes with a colour instead of the probability bar, and
    `value_text` (node -> text) replaces their probability (e.g. a mean shift
    between two models, `operators/oracle/compare.py`).
    """
    n = len(taxonomy.nodes)
    probs = [_prob(probabilities, taxonomy, i) for i in range(n)]
    shading, value_text = shading or {}, value_text or {}

    def shown(i: int) -> str:
        return value_text.get(taxonomy.nodes[i], format_probability(probs[i]))

    if highlight is None:
        known = [(probs[i], i) for i in taxonomy.leaves if probs[i] is not None]
        highlight = taxonomy.nodes[max(known)[1]] if known else None
    on_path = _path_to(taxonomy, highlight)

    fig = Figure(dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()

    def text_width_in(s: str, **kw: Any) -> float:
        t = fig.text(0, 0, s, fontsize=fontsize, **kw)
        w = t.get_window_extent(renderer).width / dpi
        t.remove()
        return w

    # Geometry in inches: the axes cover the whole figure with data units = inches.
    pad = 0.07  # inside a box, left and right
    gap_label = 0.18  # between name and probability
    row_h = fontsize / 72.0 * 1.8  # one leaf row
    box_h = fontsize / 72.0 * 1.4
    col_gap = 0.42  # between one column's boxes and the next
    margin = 0.15
    depth = taxonomy.depth
    n_cols = max(depth) + 1
    col_w = [0.0] * n_cols
    for i in range(n):
        weight = "bold" if i in on_path else "normal"
        w = (text_width_in(taxonomy.nodes[i], fontweight=weight) + gap_label
             + text_width_in(shown(i), fontweight=weight) + 2 * pad)
        col_w[depth[i]] = max(col_w[depth[i]], w)
    col_x = [margin]
    for c in range(1, n_cols):
        col_x.append(col_x[-1] + col_w[c - 1] + col_gap)
    width = col_x[-1] + col_w[-1] + margin
    if title:
        width = max(width, 2 * margin + text_width_in(title, fontweight="bold") * 1.25)
    # The subtitle wraps at its "  ·  " separators rather than widen the figure.
    sub_lines: list[str] = []
    for piece in (subtitle.split(SUBTITLE_SEP) if subtitle else []):
        joined = sub_lines[-1] + SUBTITLE_SEP + piece if sub_lines else piece
        if sub_lines and 2 * margin + text_width_in(joined) * 0.9 > width:
            sub_lines.append(piece)
        elif sub_lines:
            sub_lines[-1] = joined
        else:
            sub_lines.append(piece)
    for line in sub_lines:
        width = max(width, 2 * margin + text_width_in(line) * 0.9)
    sub_line_h = fontsize * 0.9 / 72.0 * 1.45

    rows = _layout(taxonomy)
    n_rows = len(taxonomy.leaves)
    header = 0.0
    if title:
        header += fontsize * 1.25 / 72.0 * 1.6
    header += sub_line_h * len(sub_lines)
    if header:
        header += 0.08
    height = margin + header + n_rows * row_h + margin

    fig.set_size_inches(width, height)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()

    top = height - margin - header

    def y_of(i: int) -> float:
        return top - (rows[i] + 0.5) * row_h

    # Edges first (under the boxes): elbow from a parent's right end to a child's left end.
    for i in range(1, n):
        p_i = taxonomy.parent[i]
        x0 = col_x[depth[p_i]] + col_w[depth[p_i]]
        x1 = col_x[depth[i]]
        xm = x0 + col_gap / 2.0
        y0, y1 = y_of(p_i), y_of(i)
        path = i in on_path and p_i in on_path
        p = probs[i] or 0.0
        ax.plot(
            [x0, xm, xm, x1],
            [y0, y0, y1, y1],
            color=EDGE_PATH if path else EDGE,
            linewidth=(1.0 + 3.0 * max(0.0, min(1.0, p))) if not path else 2.6,
            solid_capstyle="butt",
            solid_joinstyle="miter",
            zorder=1.5 if path else 1,
        )

    for i in range(n):
        x = col_x[depth[i]]
        w = col_w[depth[i]]
        y = y_of(i)
        p = probs[i]
        path = i in on_path
        ax.add_patch(
            FancyBboxPatch(
                (x, y - box_h / 2),
                w,
                box_h,
                boxstyle="round,pad=0,rounding_size=0.04",
                facecolor=shading.get(taxonomy.nodes[i], BOX_BG),
                edgecolor=OUTLINE_PATH if path else OUTLINE,
                linewidth=1.8 if path else 0.8,
                zorder=2,
            )
        )
        if p is not None and p > 0 and taxonomy.nodes[i] not in shading:
            ax.add_patch(
                Rectangle(
                    (x, y - box_h / 2),
                    w * max(0.0, min(1.0, p)),
                    box_h,
                    facecolor=BAR_PATH if path else BAR,
                    edgecolor="none",
                    zorder=3,
                )
            )
        faint = (p is None or p < 0.005) and taxonomy.nodes[i] not in value_text  # <0.01, 0.00 or n/a
        color = FAINT_TEXT if faint and not path else "black"
        weight = "bold" if path else "normal"
        ax.text(x + pad, y, taxonomy.nodes[i], ha="left", va="center_baseline",
                fontsize=fontsize, color=color, fontweight=weight, zorder=4)
        ax.text(x + w - pad, y, shown(i), ha="right", va="center_baseline",
                fontsize=fontsize, color=color, fontweight=weight, zorder=4)

    y_text = height - margin
    if title:
        ax.text(margin, y_text, title, ha="left", va="top", fontsize=fontsize * 1.25,
                fontweight="bold")
        y_text -= fontsize * 1.25 / 72.0 * 1.6
    for line in sub_lines:
        ax.text(margin, y_text, line, ha="left", va="top", fontsize=fontsize * 0.9, color=FAINT_TEXT)
        y_text -= sub_line_h
    return fig


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    return buf.getvalue()


def render_png(
    probabilities: Mapping[str, Any],
    taxonomy: Taxonomy,
    *,
    title: Optional[str] = None,
    subtitle: Optional[str] = None,
    highlight: Optional[str] = None,
    fontsize: float = 12.0,
    dpi: float = 100.0,
) -> bytes:
    """`render_tree` as PNG bytes."""
    fig = render_tree(probabilities, taxonomy, title=title, subtitle=subtitle,
                      highlight=highlight, fontsize=fontsize, dpi=dpi)
    return figure_png(fig)


def result_titles(record: Any, taxonomy: Taxonomy) -> tuple[str, str]:
    """Title and subtitle for a result record (any object with the result attributes)."""
    predicted = getattr(record, "predicted", None)
    probs = getattr(record, "probabilities", {}) or {}
    p = probs.get(predicted) if predicted else None
    title = f"{record.objectId}"
    if predicted:
        title += f"   {predicted} {format_probability(_as_float(p))}"
    bits = [f"candid {record.candid}"]
    jd = _as_float(getattr(record, "jd", None))
    if jd is not None:
        bits.append(f"jd {jd:.5f}")
    model = getattr(record, "model", None)
    bits.append(f"ORACLE {taxonomy.name}" + (f" ({model})" if model else ""))
    return title, SUBTITLE_SEP.join(bits)


def render_result_png(record: Any, taxonomy: Taxonomy, *, dpi: float = 100.0) -> bytes:
    """PNG of a result record's probability tree, titled with its object and candid."""
    title, subtitle = result_titles(record, taxonomy)
    return render_png(record.probabilities, taxonomy, title=title, subtitle=subtitle,
                      highlight=getattr(record, "predicted", None), dpi=dpi)


def _as_float(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------------------
# CLI: a results CSV to PNGs


class _Row:
    """A results-CSV row seen as a result record."""

    def __init__(self, row: Mapping[str, str], taxonomy: Taxonomy):
        self.candid = row.get("candid", "")
        self.objectId = row.get("objectId", "") or "unknown"
        mjd = _as_float(row.get("mjd"))  # LSST files carry Rubin's MJD (TAI)
        self.jd = row.get("jd") or (jd_utc(mjd) if mjd is not None else None)
        self.model = row.get("model") or None
        self.predicted = row.get("predicted") or None
        self.probabilities = {name: row.get(name) for name in taxonomy.nodes}


def detect_taxonomy(columns: Iterable[str], taxonomies: Optional[Mapping[str, Taxonomy]] = None) -> Taxonomy:
    """The taxonomy whose non-root node names are all columns (the largest that fits), among
    `taxonomies` (label -> taxonomy; default: the surveys')."""
    taxonomies = survey_taxonomies() if taxonomies is None else taxonomies
    cols = set(columns)
    fits = [t for t in taxonomies.values() if set(t.nodes[1:]) <= cols]
    if not fits:
        raise ValueError(
            "no known taxonomy matches the CSV columns (need one column per node of "
            + " or ".join(f"{k} ({t.name})" for k, t in taxonomies.items()) + ")"
        )
    return max(fits, key=len)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)) or "x"


def plot_csv(
    csv_path: Path | str,
    out_dir: Path | str = "results/plots",
    *,
    taxonomy: Optional[Taxonomy] = None,
    limit: Optional[int] = None,
    dpi: float = 100.0,
) -> list[Path]:
    """One PNG per row of a results CSV, named `{objectId}_{candid}.png`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        tax = taxonomy or detect_taxonomy(reader.fieldnames or [])
        for row in reader:
            if limit is not None and len(written) >= limit:
                break
            rec = _Row(row, tax)
            path = out / f"{_safe(rec.objectId)}_{_safe(rec.candid)}.png"
            path.write_bytes(render_result_png(rec, tax, dpi=dpi))
            written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m operators.oracle.tree_plot",
        description="Write one probability-tree PNG per row of an ORACLE results CSV.",
    )
    ap.add_argument("csv", help="results CSV (candid, objectId, jd or mjd, one column per node, predicted, ...)")
    ap.add_argument("--out", default="results/plots", help="output folder (default results/plots)")
    taxonomies = survey_taxonomies()
    ap.add_argument("--taxonomy", choices=sorted(taxonomies), default=None,
                    help="taxonomy of the CSV (default: detected from the columns)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many rows")
    ap.add_argument("--dpi", type=float, default=100.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = plot_csv(args.csv, args.out,
                         taxonomy=taxonomies[args.taxonomy] if args.taxonomy else None,
                         limit=args.limit, dpi=args.dpi)
    except (OSError, ValueError) as e:
        print(f"tree_plot: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} PNG(s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
