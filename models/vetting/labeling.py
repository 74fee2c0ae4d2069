"""Labelling CLI and the `labeled.csv` file it writes.

    python -m models.vetting.labeling label --alerts data/fink/fink_ztf_sample.avro \\
        --labels labeled.csv [--queue results/active_learning/next_batch_galactic.csv]

For each alert to label (the active-learning queue's order when `--queue` is
given, else the alerts' order; alerts already in `labeled.csv` are passed
over) it prints the object id, links to its Lasair and Fink pages, the path of
a PNG of its light curve, and a catalogue hint, then reads ONE key:

    r real  x extragal  g gal  a agn  b bogus  v varstar  s skip  q quit

Each label is appended to `labeled.csv` (`candid,objectId,label,timestamp`)
and flushed to disk before the next alert is shown, so Ctrl-C or a crash
loses at most the alert on screen and leaves a valid file. To change a label,
label the alert again: the latest row wins (`latest_labels`).

    python -m models.vetting.labeling proxy --alerts data/fink/*.avro --out proxy_labels.csv

writes catalogue-based PROXY labels (SIMBAD cross-match, TNS class, Gaia
class/parallax; see `proxy_label`) in the same format, for tests and
simulated runs only: they are not vetted labels.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional, TextIO

import pandas as pd

from models.vetting.classifier import LABEL_KEYS, LABEL_TABLE, LABELS

LABEL_COLUMNS = ["candid", "objectId", "label", "timestamp"]
CONTROL_KEYS = {"s": "skip", "q": "quit"}
KEY_HELP = "  ".join(f"{k}={lab}" for k, lab in LABEL_KEYS.items()) + "  s=skip q=quit"


def lasair_url(object_id: str) -> str:
    return f"https://lasair-ztf.lsst.ac.uk/objects/{object_id}/"


def fink_url(object_id: str) -> str:
    return f"https://fink-portal.org/{object_id}"


# --------------------------------------------------------------------------
# labeled.csv
# --------------------------------------------------------------------------


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def append_label(path: str | Path, candid: int, object_id: str, label: str, timestamp: str | None = None) -> None:
    """Append one row to `labeled.csv` and force it to disk.

    Writes the header when the file is new or empty. One `write` per row,
    then flush + fsync, so an interrupt never leaves half a row behind this
    call; if an earlier crash did (file not ending in a newline), the new row
    starts on a line of its own and `read_labels` drops the torn one.
    """
    if label not in LABEL_TABLE:
        raise ValueError(f"unknown label {label!r}; valid labels are {list(LABELS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_header = not path.exists() or path.stat().st_size == 0
    prefix = ""
    if not needs_header:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                prefix = "\n"
    rows = [LABEL_COLUMNS] if needs_header else []
    rows.append([int(candid), object_id, label, timestamp or utc_timestamp()])
    text = prefix + "".join(_csv_line(r) for r in rows)
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _csv_line(row: list) -> str:
    import io  # noqa: PLC0415

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


def read_labels(path: str | Path) -> pd.DataFrame:
    """All rows of `labeled.csv` (columns `LABEL_COLUMNS`), in file order.

    A missing file gives an empty frame. Rows without a label or candid (a
    torn last line) are dropped with a warning; an unknown label raises
    ValueError naming its line, to be fixed by hand.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "candid" else "object") for c in LABEL_COLUMNS})
    table = pd.read_csv(path, dtype={"objectId": "string", "label": "string", "timestamp": "string"})
    missing = [c for c in LABEL_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; its header must be {','.join(LABEL_COLUMNS)}")
    table["candid"] = pd.to_numeric(table["candid"], errors="coerce")
    torn = table["candid"].isna() | table["label"].isna()
    if torn.any():
        warnings.warn(f"{path}: ignoring {int(torn.sum())} incomplete row(s) (an interrupted write?)", stacklevel=2)
        table = table[~torn]
    bad = ~table["label"].isin(LABELS)
    if bad.any():
        line = int(table.index[bad][0]) + 2  # +1 header, +1 one-based
        raise ValueError(
            f"{path} line {line}: unknown label {table['label'][bad].iloc[0]!r}; "
            f"valid labels are {list(LABELS)}. Fix or delete that line."
        )
    table = table.astype({"candid": "int64", "objectId": "object", "label": "object", "timestamp": "object"})
    return table[LABEL_COLUMNS].reset_index(drop=True)


def latest_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """One row per candid: the last one written (relabelling overrides)."""
    return labels.drop_duplicates("candid", keep="last").reset_index(drop=True)


# --------------------------------------------------------------------------
# Alerts, light curves, catalogue hints
# --------------------------------------------------------------------------


def read_alerts(paths: Iterable[str | Path]) -> list[dict]:
    """Alert packets from Avro files (or every `*.avro` in given directories)."""
    import fastavro  # noqa: PLC0415

    alerts: list[dict] = []
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.avro")) if p.is_dir() else [p]
        if not files or not all(f.exists() for f in files):
            raise FileNotFoundError(f"no Avro alerts at {p}; pass files or directories holding *.avro")
        for f in files:
            with open(f, "rb") as fh:
                alerts.extend(fastavro.reader(fh))
    return alerts


def ztf_only(alerts: list[dict]) -> tuple[list[dict], int]:
    """The ZTF alert packets (a `candid` and a `candidate` record) and how many others
    were left out: a folder of Fink alerts may also hold Rubin ones (`data/fink/`)."""
    kept = [a for a in alerts if isinstance(a, dict) and a.get("candid") is not None
            and isinstance(a.get("candidate"), dict)]
    return kept, len(alerts) - len(kept)


BANDS = {1: ("g", "tab:green"), 2: ("r", "tab:red"), 3: ("i", "goldenrod")}


def light_curve(alert: dict) -> pd.DataFrame:
    """Photometry of an alert: `jd, band, mag, magerr, upper_limit, negative`.

    Detections are the alert's candidate and the previous candidates with a
    magnitude; rows without one are non-detections (5-sigma limit in `mag`).
    """
    rows = []
    for point in [*(alert.get("prv_candidates") or []), alert["candidate"]]:
        band = BANDS.get(point.get("fid"), ("?", "grey"))[0]
        if point.get("magpsf") is not None:
            rows.append((point["jd"], band, point["magpsf"], point.get("sigmapsf"), False,
                         point.get("isdiffpos") in ("f", "0")))
        elif point.get("diffmaglim") is not None:
            rows.append((point["jd"], band, point["diffmaglim"], None, True, False))
    table = pd.DataFrame(rows, columns=["jd", "band", "mag", "magerr", "upper_limit", "negative"])
    return table.drop_duplicates(["jd", "band"]).sort_values("jd").reset_index(drop=True)


def plot_light_curve(alert: dict, path: str | Path) -> Path:
    """Save the light curve (magnitude vs MJD, limits as triangles) as a PNG."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    lc = light_curve(alert)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for band, colour in BANDS.values():
        sel = lc[lc["band"] == band]
        det, lim = sel[~sel["upper_limit"]], sel[sel["upper_limit"]]
        mjd = lambda t: t - 2400000.5  # noqa: E731
        if len(det):
            ax.errorbar(mjd(det["jd"]), det["mag"], yerr=det["magerr"].astype(float), fmt="o", ms=4,
                        color=colour, mfc="white" if det["negative"].all() else colour, label=band)
        if len(lim):
            ax.scatter(mjd(lim["jd"]), lim["mag"], marker="v", s=14, color=colour, alpha=0.35)
    ax.invert_yaxis()
    ax.set_xlabel("MJD")
    ax.set_ylabel("magnitude (difference image)")
    ax.set_title(f"{alert.get('objectId')}  candid {alert.get('candid')}", fontsize=9)
    if len(lc) and (~lc["upper_limit"]).any():
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


# SIMBAD object types (Fink's `cdsxmatch`) -> labels. Types not listed fall
# back on the rule "names ending in '*' are stars", i.e. Galactic.
SIMBAD_TO_LABEL = {
    **dict.fromkeys(["SN", "SN*", "SN_Candidate", "Galaxy", "G", "GinCl", "GinGroup", "GinPair", "EmG",
                     "StarburstG", "LSB_G", "HII_G", "RadioG", "BClG", "IG", "PartofG"], "extragal"),
    **dict.fromkeys(["AGN", "AGN_Candidate", "QSO", "QSO_Candidate", "Seyfert", "Seyfert_1", "Seyfert_2",
                     "Blazar", "Blazar_Candidate", "BLLac", "BLLac_Candidate", "LINER"], "agn"),
    **dict.fromkeys(["RRLyr", "RRLyr_Candidate", "EB*", "EB*_Candidate", "Cepheid", "deltaCep", "Mira",
                     "LPV*", "LP*_Candidate", "V*", "Variable*", "RotV*", "BYDra", "RSCVn", "delSct",
                     "gammaDor", "Pulsating*", "EllipVar", "Irregular_V*", "semi-regular", "Eruptive*",
                     "Orion_V*"], "varstar"),
    **dict.fromkeys(["Star", "CataclyV*", "CV*", "Nova", "YSO", "TTau*", "Em*", "WD*", "Flare*",
                     "HighPM*", "PM*", "low-mass*", "brownD*", "PN", "XB", "Symbiotic*"], "gal"),
}


def _finite(x) -> Optional[float]:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def proxy_label(alert: dict) -> tuple[Optional[str], str]:
    """A catalogue-based guess `(label or None, reason)`; a hint, not a vetted label.

    In order: the SIMBAD class (`cdsxmatch`), a TNS spectroscopic class (SN/TDE
    -> extragal, CV/nova -> gal), Gaia's AGN/QSO class, then a Gaia DR3 star
    with a parallax of 5 sigma or more within 1.5" (-> gal).
    """
    simbad = alert.get("cdsxmatch")
    if simbad and simbad not in ("Unknown", "Fail", "nan") and not str(simbad).startswith("Fail"):
        label = SIMBAD_TO_LABEL.get(simbad) or ("gal" if str(simbad).endswith("*") else None)
        if label:
            return label, f"SIMBAD {simbad}"
    tns = str(alert.get("tnsclass") or "").replace("(TNS)", "").strip()
    if tns and tns not in ("Unknown", "nan"):
        if tns.startswith(("SN", "TDE", "SLSN")):
            return "extragal", f"TNS {tns}"
        if tns.startswith(("CV", "Nova", "Varstar", "M dwarf")):
            return "gal", f"TNS {tns}"
    gaia_class = str(alert.get("gaiaClass") or "")
    if gaia_class.upper() in ("AGN", "QSO"):
        return "agn", f"Gaia class {gaia_class}"
    plx, e_plx = _finite(alert.get("Plx")), _finite(alert.get("e_Plx"))
    sep = _finite((alert.get("candidate") or {}).get("neargaia"))
    if plx is not None and e_plx and plx / e_plx >= 5 and sep is not None and sep <= 1.5:
        return "gal", f'Gaia DR3 parallax {plx:.2f} +/- {e_plx:.2f} mas, {sep:.2f}" away'
    return None, "no catalogue match"


def proxy_labels_table(alerts: list[dict], timestamp: str | None = None) -> pd.DataFrame:
    """`labeled.csv`-shaped frame of proxy labels for alerts that get one."""
    rows = []
    stamp = timestamp or utc_timestamp()
    for alert in alerts:
        label, _ = proxy_label(alert)
        if label:
            rows.append((int(alert["candid"]), alert["objectId"], label, stamp))
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)


# --------------------------------------------------------------------------
# The interactive session
# --------------------------------------------------------------------------


def read_key(stream: TextIO) -> str:
    """One key from `stream`, lower-cased; 'q' at end of input.

    On a terminal: a single keypress, no Enter needed (cbreak mode, so Ctrl-C
    still interrupts). Otherwise (a pipe, a script): the next non-blank
    character, so `printf 'g x s q'` or one key per line both work.
    """
    if stream.isatty():
        import termios  # noqa: PLC0415
        import tty  # noqa: PLC0415

        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
        try:
            # setcbreak flushes pending input (TCSAFLUSH): keys typed before the
            # prompt are dropped, so no alert gets a label before it is shown.
            tty.setcbreak(fd)
            char = os.read(fd, 1).decode(errors="replace")
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        return char.lower() if char else "q"
    while True:
        char = stream.read(1)
        if not char:
            return "q"
        if not char.isspace():
            return char.lower()


@dataclass
class SessionSummary:
    labelled: int = 0
    skipped: int = 0
    remaining: int = 0
    quit: bool = False


def label_session(
    alerts: list[dict],
    labels_path: str | Path,
    plot_dir: str | Path,
    queue: Optional[pd.DataFrame] = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    hints: bool = True,
) -> SessionSummary:
    """Run the labelling loop; returns counts. Writes one row per keyed label.

    `queue` (a frame with `candid`, optionally `objectId`, `p_positive`)
    fixes the order; without it every alert in `alerts` is offered. Candids
    already in `labels_path` are passed over.
    """
    by_candid = {int(a["candid"]): a for a in alerts}
    done = set(read_labels(labels_path)["candid"].tolist())
    if queue is not None:
        items = [(int(r.candid), getattr(r, "objectId", None), getattr(r, "p_positive", None))
                 for r in queue.itertuples(index=False)]
    else:
        items = [(c, a.get("objectId"), None) for c, a in by_candid.items()]
    todo = [it for it in items if it[0] not in done]
    summary = SessionSummary(remaining=len(todo))
    say = lambda text="": print(text, file=stdout, flush=True)  # noqa: E731
    if not todo:
        say(f"Nothing to label: every alert offered is already in {labels_path}.")
        return summary
    for n, (candid, object_id, p_positive) in enumerate(todo, 1):
        alert = by_candid.get(candid)
        object_id = object_id or (alert or {}).get("objectId") or "?"
        extra = f"  p={float(p_positive):.2f}" if p_positive is not None and pd.notna(p_positive) else ""
        say(f"\n[{n}/{len(todo)}] {object_id}  candid {candid}{extra}")
        say(f"  Lasair: {lasair_url(object_id)}")
        say(f"  Fink:   {fink_url(object_id)}")
        if alert is not None:
            png = plot_light_curve(alert, Path(plot_dir) / f"{object_id}_{candid}.png")
            lc = light_curve(alert)
            say(f"  light curve: {png}  ({int((~lc['upper_limit']).sum())} detections, "
                f"{int(lc['upper_limit'].sum())} upper limits)")
            if hints:
                label, reason = proxy_label(alert)
                say(f"  catalogue hint: {label or '-'} ({reason})")
        else:
            say("  light curve: not in the given alert files; see the Fink or Lasair page")
        while True:
            print(f"  label? {KEY_HELP} > ", end="", file=stdout, flush=True)
            key = read_key(stdin)
            print(key, file=stdout, flush=True)
            if key in LABEL_KEYS or key in CONTROL_KEYS:
                break
            say(f"  '{key}' is not a label key; press one of r x g a b v, s to skip, q to quit")
        if key == "q":
            summary.quit = True
            break
        summary.remaining -= 1
        if key == "s":
            summary.skipped += 1
            continue
        append_label(labels_path, candid, object_id, LABEL_KEYS[key])
        summary.labelled += 1
        say(f"  saved: {LABEL_KEYS[key]}")
    return summary


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _read_queue(path: str | Path) -> pd.DataFrame:
    queue = pd.read_csv(path)
    if "candid" not in queue.columns:
        raise SystemExit(f"{path} has no 'candid' column; pass the next_batch_*.csv written by "
                         "`python -m models.vetting.active_learning round`")
    return queue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.vetting.labeling", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("label", help="label alerts one key at a time")
    lab.add_argument("--alerts", nargs="+", required=True,
                     help="Avro alert files or directories (every *.avro in them; non-ZTF alerts are skipped)")
    lab.add_argument("--labels", default="labeled.csv", help="CSV to append to (default: %(default)s)")
    lab.add_argument("--queue", help="next_batch_*.csv from the active-learning round: label in its order")
    lab.add_argument("--plots", default="results/labeling", help="where light-curve PNGs go (default: %(default)s)")
    lab.add_argument("--no-hints", action="store_true", help="hide the catalogue hint (blind labelling)")
    prx = sub.add_parser("proxy", help="write catalogue proxy labels (for tests/simulations only)")
    prx.add_argument("--alerts", nargs="+", required=True,
                     help="Avro alert files or directories (every *.avro in them; non-ZTF alerts are skipped)")
    prx.add_argument("--out", required=True,
                     help="CSV to write, in labeled.csv format (candid,objectId,label,timestamp); "
                          "a trial's first labeled.csv for `python -m models.vetting.active_learning round`")
    args = parser.parse_args(argv)

    alerts, others = ztf_only(read_alerts(args.alerts))
    if others:
        print(f"skipped {others} alert(s) that are not ZTF alerts (no candid/candidate): labelling is for ZTF",
              file=sys.stderr)
    if args.command == "proxy":
        table = proxy_labels_table(alerts)
        table.to_csv(args.out, index=False)
        counts = ", ".join(f"{k}={v}" for k, v in table["label"].value_counts().items())
        print(f"{len(table)} proxy labels of {len(alerts)} alerts -> {args.out} ({counts or 'none'})")
        return 0

    queue = _read_queue(args.queue) if args.queue else None
    summary = SessionSummary()
    try:
        summary = label_session(alerts, args.labels, args.plots, queue=queue, hints=not args.no_hints)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Every label keyed so far is saved in {args.labels}.", file=sys.stderr)
        return 130
    print(f"\n{summary.labelled} labelled, {summary.skipped} skipped, {summary.remaining} left; "
          f"labels in {args.labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
