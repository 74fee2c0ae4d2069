"""The probability-tree PNG: valid, complete, legible for both taxonomies; the CLI."""

from __future__ import annotations

import csv
import io
import itertools

import matplotlib.image as mpimg
import pytest
from matplotlib.text import Text

from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY
from operators.oracle.tree_plot import (
    detect_taxonomy,
    format_probability,
    main,
    render_png,
    render_result_png,
    render_tree,
)
from tests.fakes import make_result


def test_format_probability():
    assert format_probability(0.8731) == "0.87"
    assert format_probability(0.001) == "<0.01"
    assert format_probability(0.0) == "0.00"
    assert format_probability(None) == "n/a" and format_probability(float("nan")) == "n/a"


@pytest.mark.parametrize("tax", [ZTF_TAXONOMY, LSST_TAXONOMY], ids=lambda t: t.name)
def test_every_node_is_written_with_its_probability_without_overlap(tax):
    r = make_result(tax, "obj", 1, seed=7)
    fig = render_tree(r.probabilities, tax, title="obj", subtitle="candid 1", highlight=r.predicted)
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if isinstance(t, Text)]
    strings = [t.get_text() for t in texts]
    for name in tax.nodes:
        assert name in strings
    for name in tax.nodes:
        i = strings.index(name)
        assert strings[i + 1] == format_probability(r.probabilities[name])  # its probability beside it
    boxes = [t.get_window_extent(renderer) for t in texts]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), f"{strings[i]!r} overlaps {strings[j]!r}"
    w, h = fig.get_size_inches() * fig.dpi
    for b in boxes:  # nothing cut at the border
        assert b.x0 >= 0 and b.y0 >= 0 and b.x1 <= w and b.y1 <= h
    # Legible at Slack preview size: node text 12 pt (subtitle 10.8), not taller than wide.
    assert min(t.get_fontsize() for t in texts) >= 10.8 and h <= w * 1.05


@pytest.mark.parametrize("tax", [ZTF_TAXONOMY, LSST_TAXONOMY], ids=lambda t: t.name)
def test_png_decodes(tax):
    png = render_result_png(make_result(tax, "ZTF24abc", 5, seed=3), tax)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(io.BytesIO(png), format="png")
    assert img.ndim == 3 and 250 < img.shape[0] < 1000 and 400 < img.shape[1] < 1200


def test_missing_probabilities_still_draw():
    png = render_png({"SN-Ia": 0.4}, ZTF_TAXONOMY)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _write_csv(path, tax, rows):
    cols = ["candid", "objectId", "jd", *tax.nodes, "predicted", "model", "processed_at"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({"candid": r.candid, "objectId": r.objectId, "jd": r.jd, **r.probabilities,
                        "predicted": r.predicted, "model": r.model, "processed_at": r.processed_at})


@pytest.mark.parametrize("tax", [ZTF_TAXONOMY, LSST_TAXONOMY], ids=lambda t: t.name)
def test_cli_writes_one_png_per_row(tmp_path, tax, capsys):
    rows = [make_result(tax, f"obj{i}", 100 + i, seed=i) for i in range(3)]
    src = tmp_path / "results.csv"
    _write_csv(src, tax, rows)
    out = tmp_path / "plots"
    assert main([str(src), "--out", str(out)]) == 0
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["obj0_100.png", "obj1_101.png", "obj2_102.png"]
    assert (out / "obj0_100.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote 3 PNG(s)" in capsys.readouterr().out
    assert main([str(src), "--out", str(tmp_path / "one"), "--limit", "1"]) == 0
    assert len(list((tmp_path / "one").glob("*.png"))) == 1


def test_detect_taxonomy():
    assert detect_taxonomy(["candid", *ZTF_TAXONOMY.nodes]) is ZTF_TAXONOMY
    assert detect_taxonomy(LSST_TAXONOMY.nodes[1:]) is LSST_TAXONOMY
    with pytest.raises(ValueError):
        detect_taxonomy(["candid", "objectId"])


def test_cli_reports_a_bad_csv(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("candid,objectId\n1,x\n")
    assert main([str(bad), "--out", str(tmp_path / "p")]) == 2
    assert "no known taxonomy" in capsys.readouterr().err
