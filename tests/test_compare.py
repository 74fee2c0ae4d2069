"""`python -m dataflows compare`: two runs with different weights → table, box plots, tree, page."""

from __future__ import annotations

import base64
import csv
from html.parser import HTMLParser
from pathlib import Path

import pytest
from bytewax.testing import run_main

from dataflows.__main__ import main as cli
from dataflows.backfill import Job, build_backfill_flow
from operators.oracle.surveys import LSST, ZTF
from tests.helpers import perturbed_weights, settings_for

PNG = b"\x89PNG\r\n\x1a\n"


def two_runs(tmp_path, survey) -> tuple[Path, Path]:
    other = perturbed_weights(survey.weights, tmp_path / f"retrained_{survey.name.lower()}.pth", scale=0.05)
    out = []
    for name, weights in (("a", None), ("b", other)):
        flow, path = build_backfill_flow(Job(survey, 2_400_001.0, 2_500_000.0, "s", "u", weights=weights),
                                         settings_for(survey, tmp_path / name))
        run_main(flow)
        out.append(path)
    return out[0], out[1]


class Page(HTMLParser):
    """Tables (rows of cell texts, by class), images and links of a page."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict] = []
        self.links: list[str] = []
        self._table = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(a)
        elif tag == "a":
            self.links.append(a.get("href", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def read_csv(path):
    with open(path, newline="") as f:
        return {int(r["candid"]): r for r in csv.DictReader(f)}


def test_compare_two_runs_writes_the_table_plots_and_a_self_contained_page(tmp_path, capsys):
    a, b = two_runs(tmp_path, ZTF)
    html_path = tmp_path / "report" / "compare.html"
    assert cli(["compare", str(a), str(b), "--html", str(html_path), "--top", "5"]) == 0
    out = capsys.readouterr().out

    # Independent truth from the CSV text: how many alerts changed their predicted leaf.
    ra, rb = read_csv(a), read_csv(b)
    both = sorted(set(ra) & set(rb))
    changed = sum(ra[c]["predicted"] != rb[c]["predicted"] for c in both)
    assert len(both) > 30 and changed > 0
    assert f"predicted leaf changed: {changed} of {len(both)}" in out

    page = Page()
    page.feed(html_path.read_text())
    leaves = ["AGN", "CV", "Varstar", "SN-Ia", "SN-II", "SN-Ib/c", "SLSN"]
    table = page.tables["confusion"]
    assert table[0][1:] == [*leaves, "total"] and [r[0] for r in table[1:]] == [*leaves, "total"]
    cells = [[0 if x == "·" else int(x) for x in r[1:]] for r in table[1:]]
    counts = [r[:-1] for r in cells[:-1]]
    assert sum(map(sum, counts)) == len(both)
    # Totals: alerts per leaf under A (last column), under B (last row), all of them in the corner.
    assert [r[-1] for r in cells[:-1]] == [sum(ra[c]["predicted"] == leaf for c in both) for leaf in leaves]
    assert cells[-1][:-1] == [sum(rb[c]["predicted"] == leaf for c in both) for leaf in leaves]
    assert cells[-1][-1] == len(both)
    assert sum(counts[i][j] for i in range(7) for j in range(7) if i != j) == changed
    pairs = {(ra[c]["predicted"], rb[c]["predicted"]) for c in both}
    for i, la in enumerate(leaves):
        for j, lb in enumerate(leaves):
            assert (counts[i][j] > 0) == ((la, lb) in pairs)

    # Images inlined as base64 PNGs; the same PNGs written beside the page.
    assert len(page.images) == 2
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == PNG
    for name in ("compare_boxplots.png", "compare_tree.png"):
        assert (html_path.parent / name).read_bytes()[:8] == PNG
    assert "http" not in html_path.read_text().replace("https://fritz.science/source/", ""), "nothing fetched"

    # The largest changes, with Fritz source links, in decreasing order of change.
    largest = page.tables["largest"][1:]
    assert len(largest) == 5
    assert all(link.startswith("https://fritz.science/source/ZTF") for link in page.links)
    change = {c: 0.5 * sum(abs(float(rb[c][k]) - float(ra[c][k])) for k in leaves) for c in both}
    top = sorted(both, key=lambda c: (-change[c], c))[:5]
    assert page.tables["largest"][0] == ["candid", "object", "jd", "ra", "dec", "leaf A", "p A", "leaf B", "p B",
                                         "change", "largest node shift"]
    assert [int(r[0]) for r in largest] == top
    assert [float(r[9]) for r in largest] == pytest.approx([change[c] for c in top], abs=1e-3)
    # Each listed alert: its time and position, and its predicted leaf with that leaf's probability under A and B.
    for r in largest:
        c = int(r[0])
        assert [float(x) for x in r[2:5]] == pytest.approx([float(ra[c][k]) for k in ("jd", "ra", "dec")], abs=1e-5)
        assert r[5] == ra[c]["predicted"] and float(r[6]) == pytest.approx(float(ra[c][ra[c]["predicted"]]), abs=1e-3)
        assert r[7] == rb[c]["predicted"] and float(r[8]) == pytest.approx(float(rb[c][rb[c]["predicted"]]), abs=1e-3)


def test_lsst_links_go_to_babamul(tmp_path, capsys):
    a, b = two_runs(tmp_path, LSST)
    assert cli(["compare", str(a), str(b), "--out-dir", str(tmp_path / "pngs")]) == 0
    out = capsys.readouterr().out
    assert "https://babamul.caltech.edu/objects/LSST/" in out
    assert " mjd 6" in out and " jd " not in out  # Rubin's time is an MJD
    assert (tmp_path / "pngs" / "compare_tree.png").read_bytes()[:8] == PNG


def test_files_that_are_not_results_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("candid,foo\n1,2\n")
    assert cli(["compare", str(bad), str(bad)]) == 2
    assert cli(["compare", str(tmp_path / "missing.csv"), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not an ORACLE results file" in err[0] and "missing.csv" in err[1]


HEADER = ("candid,objectId,jd,Alert,Persistent,Transient,AGN,CV,Varstar,SN-Ia,SN-II,SN-Ib/c,SLSN,"
          "predicted,model,processed_at,fritz_classifications,fritz_ml_classifications,stamp\n")
# Alert 11 moves 0.5 of probability from SN-II (A) to SN-Ia (B); alert 12 does not change.
RESULTS_A = HEADER + (
    "11,ZTF24aaaaaaa,2460000.5,1,0.2,0.8,0.05,0.05,0.1,0.2,0.5,0.05,0.05,SN-II,model-a,t,,,\n"
    "12,ZTF24bbbbbbb,2460001.5,1,0.9,0.1,0.8,0.05,0.05,0.04,0.03,0.02,0.01,AGN,model-a,t,,,\n")
RESULTS_B = HEADER + (
    "11,ZTF24aaaaaaa,2460000.5,1,0.2,0.8,0.05,0.05,0.1,0.7,0,0.05,0.05,SN-Ia,model-b,t,,,\n"
    "12,ZTF24bbbbbbb,2460001.5,1,0.9,0.1,0.8,0.05,0.05,0.04,0.03,0.02,0.01,AGN,model-b,t,,,\n")


def test_shifts_are_b_minus_a_with_their_sign(tmp_path, capsys):
    from operators.oracle.compare import compare
    from operators.oracle.results import read_results

    (tmp_path / "a.csv").write_text(RESULTS_A)
    (tmp_path / "b.csv").write_text(RESULTS_B)
    c = compare(read_results(tmp_path / "a.csv"), read_results(tmp_path / "b.csv"))
    shifts = c.shifts.set_index(c.joined.candid)
    assert shifts.loc[11, "SN-Ia"] == pytest.approx(+0.5) and shifts.loc[11, "SN-II"] == pytest.approx(-0.5)
    assert (shifts.loc[11].drop(["SN-Ia", "SN-II"]) == 0).all() and (shifts.loc[12] == 0).all()
    assert c.models == ("model-a", "model-b") and c.changed == 1
    assert c.confusion.loc["SN-II", "SN-Ia"] == 1 and c.confusion.loc["AGN", "AGN"] == 1

    # The page and the summary say the same, signed.
    html_path = tmp_path / "compare.html"
    assert cli(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--html", str(html_path)]) == 0
    out = capsys.readouterr().out
    assert "11 ZTF24aaaaaaa jd 2460000.50000  SN-II 0.500 -> SN-Ia 0.700  change 0.500" in out
    page = Page()
    page.feed(html_path.read_text())
    first = page.tables["largest"][1]
    # A file from before 0.2.0 has no position: those cells stay empty.
    assert first[:5] == ["11", "ZTF24aaaaaaa", "2460000.50000", "", ""]
    assert first[5:10] == ["SN-II", "0.500", "SN-Ia", "0.700", "0.500"]
    assert first[10] in ("SN-Ia +0.500", "SN-II -0.500")  # the largest |shift|, either of the two tied nodes
