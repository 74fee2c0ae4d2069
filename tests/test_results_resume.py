"""Resuming the results CSV from a recovery snapshot (operators/io/files.py).

The snapshot of an append-only file is its size at the end of an epoch; on resume
the file is cut back to it and the replayed epoch writes its rows again. The
candid dedup alone would hide a missing cut-back when the replay repeats the same
rows in the same order, so these tests replay in another order and after a
half-written line, and compare bytes with an uninterrupted run."""

from __future__ import annotations

from dataclasses import replace

import pytest

from models.oracle.taxonomy import ZTF_TAXONOMY
from operators.oracle.results import Result, results_csv_sink


def result(candid: int) -> Result:
    probs = {n: 0.0 for n in ZTF_TAXONOMY.nodes}
    probs.update({"Alert": 1.0, "Transient": 1.0, "SN-Ia": 0.75, "SN-II": 0.25})
    return Result(candid=candid, objectId=f"ZTF24aaaa{candid:04d}", jd=2460500.5 + candid, survey="ZTF",
                  probabilities=probs, predicted="SN-Ia", model="m", processed_at="2026-01-01T00:00:00Z")


def uninterrupted(path, *batches) -> bytes:
    """The bytes a run that never crashed writes for these batches."""
    part = results_csv_sink(path, ZTF_TAXONOMY).build_part("results", path.name, None)
    for batch in batches:
        part.write_batch([[result(c) for c in batch]])
    part.close()
    return path.read_bytes()


def run_until_crash(path, before: list[int], after: list[int], partial: int | None) -> int:
    """Write `before`, take the snapshot, write `after` and maybe half a line of
    `partial` (a kill -9 in the middle of a write); return the snapshot."""
    part = results_csv_sink(path, ZTF_TAXONOMY).build_part("results", path.name, None)
    part.write_batch([[result(c) for c in before]])
    snapshot = part.snapshot()
    if after:
        part.write_batch([[result(c) for c in after]])
    # the process dies here: no close(), no further snapshot (write_batch flushed every row)
    if partial is not None:
        line = uninterrupted(path.with_name("one.csv"), [partial]).split(b"\n")[1]
        with path.open("ab") as f:
            f.write(line[: len(line) // 2])
    return snapshot


def resume(path, snapshot: int | None, replay: list[int]) -> bytes:
    part = results_csv_sink(path, ZTF_TAXONOMY).build_part("results", path.name, snapshot)
    at_resume = path.read_bytes()
    part.write_batch([[result(c) for c in replay]])
    part.close()
    return at_resume


def test_resume_after_a_half_written_line_leaves_each_row_once(tmp_path):
    path = tmp_path / "results.csv"
    snapshot = run_until_crash(path, [1, 2], [], partial=3)
    assert not path.read_bytes().endswith(b"\n")  # the crash left half a line
    at_resume = resume(path, snapshot, [3, 4])
    expected = uninterrupted(tmp_path / "clean.csv", [1, 2], [3, 4])
    assert at_resume == expected[:snapshot]
    assert path.read_bytes() == expected


def test_resume_with_rows_beyond_the_snapshot_rewrites_them_in_the_replayed_order(tmp_path):
    path = tmp_path / "results.csv"
    snapshot = run_until_crash(path, [1, 2], [3, 4], partial=5)
    at_resume = resume(path, snapshot, [4, 3, 5])  # the replayed epoch, as the replay delivers it
    expected = uninterrupted(tmp_path / "clean.csv", [1, 2], [4, 3, 5])
    assert at_resume == expected[:snapshot]
    assert path.read_bytes() == expected


def test_resume_from_a_snapshot_taken_when_the_file_ended_mid_line(tmp_path):
    """A snapshot taken before anything was written to a file a crash had left mid-line."""
    path = tmp_path / "results.csv"
    expected = uninterrupted(tmp_path / "clean.csv", [1], [2, 3])
    uninterrupted(path, [1], [2, 3])
    snapshot = expected.index(b"\n2,") + 20  # inside row 2
    at_resume = resume(path, snapshot, [2, 3])
    assert at_resume == expected[: expected.index(b"\n2,") + 1]  # the unfinished row 2 went too
    assert path.read_bytes() == expected


def test_restart_without_recovery_after_a_half_written_line_loses_nothing(tmp_path):
    """No snapshot to cut back to: the unfinished line must not count as written, nor
    have the next row glued onto it."""
    path = tmp_path / "results.csv"
    expected = uninterrupted(tmp_path / "clean.csv", [1], [2, 3])
    path.write_bytes(expected[: expected.index(b"\n2,") + 30])  # header, row 1, half of row 2
    resume(path, None, [1, 2, 3])  # the source starts over; row 1 is skipped as already written
    assert path.read_bytes() == expected


@pytest.mark.parametrize("chunk", [1, 3, 4, 1 << 16])
@pytest.mark.parametrize("text, kept", [
    (b"h\nrow one\nrow tw", b"h\nrow one\n"), (b"h\nrow one\n", b"h\nrow one\n"), (b"partial head", b""),
    (b"\n", b"\n"), (b"h\nrow one\nrow two, long enough to span chunks", b"h\nrow one\n"),
])
def test_cut_partial_line_keeps_whole_lines_only(tmp_path, chunk, text, kept):
    from operators.io.files import _cut_partial_line

    path = tmp_path / "f"
    path.write_bytes(text)
    assert _cut_partial_line(path, chunk) == len(text) - len(kept)
    assert path.read_bytes() == kept


def test_rows_encoded_where_classified_write_the_same_bytes_and_skip_repeats(tmp_path):
    """The flows send the single CSV writer `csv_rows` (lines encoded by the classifying
    worker); the file must be the one lists of `Result`s give, repeats skipped and counted,
    and the written rows' `received_ms` handed to `after_write` for the latency metric."""
    from operators.oracle.results import CsvLayout, csv_rows

    layout = CsvLayout()
    written, skipped = [], []
    path = tmp_path / "encoded.csv"
    part = results_csv_sink(path, ZTF_TAXONOMY, layout, after_write=written.extend,
                            after_skip=skipped.append).build_part("results", path.name, None)
    batches = [[1, 2], [3, 2], [4]]  # 2 comes twice: a replayed message
    for batch in batches:
        rows = csv_rows(ZTF_TAXONOMY, layout, [replace(result(c), received_ms=1000 + c) for c in batch])
        part.write_batch([rows])
    assert csv_rows(ZTF_TAXONOMY, layout, []) is None  # an empty batch sends nothing
    part.close()
    assert path.read_bytes() == uninterrupted(tmp_path / "objects.csv", [1, 2], [3], [4])
    assert written == [1001, 1002, 1003, 1004] and skipped == [1]
