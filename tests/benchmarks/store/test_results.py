"""The results store cannot lose data: unknown columns, newer schemas, damaged tails, links,
full disks, and the committed store's migration."""

import os
import shutil
import subprocess
import sys

import pytest

from benchmarks.store import Measurement, ResultsStore, RunConditions, StoreError, read_csv, results
from tests.paths import REPO

RUN = RunConditions("run-a", "cpu", "Test CPU", "fp32", "ncdhw", False, 2)


def row(value: float = 1.0) -> Measurement:
    return Measurement("mfnet", "cost", "params", value, "count", clip="16x224x224")


def test_unknown_columns_and_their_values_are_kept(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row(1.0)], RUN, "2026-01-01T00:00:00+00:00")
    text = store.csv.read_text().splitlines()
    store.csv.write_text("\n".join([text[0] + ",from_the_future", text[1] + ",keep me"]) + "\n")
    store.append([row(2.0)], RUN, "2026-01-02T00:00:00+00:00")
    kept = read_csv(store.csv, keep_unknown=True)
    assert list(kept["from_the_future"]) == ["keep me", ""]
    assert list(read_csv(store.csv)["value"]) == [1.0, 2.0]


@pytest.mark.slow
def test_a_store_from_a_newer_schema_is_refused_not_rewritten(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row()], RUN, "2026-01-01T00:00:00+00:00")
    newer = store.csv.read_text().replace(f",{results.SCHEMA_VERSION}\n", ",99\n")
    store.csv.write_text(newer)
    with pytest.raises(StoreError, match="newer version"):
        store.check_writable()
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--models", "mfnet", "--measure", "cost",
                           "--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "newer version" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert store.csv.read_text() == newer


def test_a_damaged_tail_is_skipped_by_readers_and_never_extended(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row(1.0), row(2.0)], RUN, "2026-01-01T00:00:00+00:00")
    store.csv.write_bytes(store.csv.read_bytes()[:-25])  # a copy cut short: half a row
    with pytest.warns(UserWarning, match=r"skipped 1 damaged line\(s\): 3"):
        assert list(read_csv(store.csv)["value"]) == [1.0]
    store.append([row(3.0)], RUN, "2026-01-02T00:00:00+00:00")
    lines = store.csv.read_text().splitlines()
    assert len(lines) == 4 and lines[3].startswith("run-a,2026-01-02")  # its own line
    with pytest.warns(UserWarning, match=r"damaged line\(s\): 3$"):
        assert list(read_csv(store.csv)["value"]) == [1.0, 3.0]


def test_a_symlinked_store_is_written_through(tmp_path):
    target = tmp_path / "elsewhere" / "measurements.csv"
    target.parent.mkdir()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "measurements.csv").symlink_to(target)
    store = ResultsStore(tmp_path / "r")
    store.append([row()], RUN, "2026-01-01T00:00:00+00:00")
    assert (tmp_path / "r" / "measurements.csv").is_symlink() and len(target.read_text().splitlines()) == 2


def test_a_full_disk_leaves_the_old_file_and_no_temp_files(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    store.append([row(1.0)], RUN, "2026-01-01T00:00:00+00:00")
    before = store.csv.read_bytes()

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space"):
        store.append([row(2.0)], RUN, "2026-01-02T00:00:00+00:00")
    assert store.csv.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["measurements.csv", ".lock"])
def test_a_folder_where_the_store_or_its_lock_should_be_is_one_line_and_exit_2(tmp_path, name):
    (tmp_path / name).mkdir(parents=True)
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--models", "mfnet", "--measure", "cost",
                           "--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not a file" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_the_committed_store_migrates_losslessly(tmp_path):
    if not (REPO / "results" / "measurements.csv").exists():
        pytest.skip("no committed results")
    shutil.copytree(REPO / "results", tmp_path / "results")
    store = ResultsStore(tmp_path / "results")
    before = read_csv(store.csv)
    store.append([row(7.0)], RUN, "2030-01-01T00:00:00+00:00")
    after = read_csv(store.csv)
    assert len(after) == len(before) + 1
    old = after.iloc[: len(before)].reset_index(drop=True)
    assert old.equals(before.reset_index(drop=True))
    assert after["schema"].iloc[-1] == results.SCHEMA_VERSION


def test_thread_count_is_a_condition_of_resume(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row()], RUN, "2026-01-01T00:00:00+00:00")
    required = [("params", None)]
    assert store.done("mfnet", "cost", RUN, "16x224x224", required)
    many = RunConditions("run-b", "cpu", "Test CPU", "fp32", "ncdhw", False, 64)
    assert not store.done("mfnet", "cost", many, "16x224x224", required)


def test_kernels_are_a_condition_and_rows_from_before_the_column_read_as_stock(tmp_path):
    store = ResultsStore(tmp_path)
    latency = Measurement("mfnet", "speed", "latency_ms", 9.0, "ms", "infer", 1, "16x224x224")
    store.append([row(), latency], RUN, "2026-01-01T00:00:00+00:00")
    required, timed = [("params", None)], [("latency_ms", 1)]
    suite = RunConditions("run-b", "cpu", "Test CPU", "fp32", "ncdhw", False, 2, "suite")
    assert not store.done("mfnet", "speed", suite, "16x224x224", timed)
    assert store.done("mfnet", "cost", suite, "16x224x224", required)  # counted: any kernels
    old = store.csv.read_text().splitlines()
    column = old[0].split(",").index("kernels")
    cut = [",".join(c for i, c in enumerate(line.split(",")) if i != column) for line in old]
    store.csv.write_text("\n".join(cut) + "\n")  # a store written before the column existed
    assert read_csv(store.csv)["kernels"].tolist() == ["stock", "stock"]
    assert store.done("mfnet", "speed", RUN, "16x224x224", timed)


def _cut_in_a_quoted_field(store) -> None:
    """The last line cut inside a quoted field (a note with a comma), as a copy cut short leaves it."""
    text = store.csv.read_text()
    cut = text.rindex('"') - 3  # inside the last row's quoted note
    store.csv.write_text(text[:cut])


def test_a_line_cut_inside_a_quote_never_swallows_the_next_run_s_rows(tmp_path):
    store = ResultsStore(tmp_path)
    noted = Measurement("mfnet", "cost", "gmacs", 11.0, "GMAC", clip="16x224x224", note="a note, with a comma")
    store.append([row(1.0), noted], RUN, "2026-01-01T00:00:00+00:00")
    _cut_in_a_quoted_field(store)
    store.append([row(2.0), row(3.0)], RUN, "2026-01-02T00:00:00+00:00")
    with pytest.warns(UserWarning, match=r"skipped 1 damaged line\(s\): 3$"):  # where the damage is
        assert list(read_csv(store.csv)["value"]) == [1.0, 2.0, 3.0]  # the next run's rows all read


def test_a_stray_quote_mid_file_hides_only_its_own_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row(float(v)) for v in range(1, 9)], RUN, "2026-01-01T00:00:00+00:00")
    lines = store.csv.read_text().splitlines()
    lines[2] = lines[2].replace(",count,", ',"count,', 1)  # a byte overwritten: a quote opened
    store.csv.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"damaged line\(s\): 3$"):
        assert list(read_csv(store.csv)["value"]) == [1.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


def test_a_byte_that_is_not_utf8_skips_its_line_not_the_store(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row(1.0), row(2.0), row(3.0)], RUN, "2026-01-01T00:00:00+00:00")
    data = bytearray(store.csv.read_bytes())
    data[data.index(b"\n") + 2] = 0xFF  # inside the first row's run id
    store.csv.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"damaged line\(s\): 2$"):
        assert list(read_csv(store.csv)["value"]) == [2.0, 3.0]


def test_a_value_with_a_line_break_is_written_on_one_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([Measurement("mfnet", "cost", "params", 1.0, "count", note="two\nlines")], RUN,
                 "2026-01-01T00:00:00+00:00")
    assert len(store.csv.read_text().splitlines()) == 2
    assert read_csv(store.csv)["note"].tolist() == ["two lines"]


def test_a_renamed_header_column_is_refused_not_filled_with_blanks(tmp_path):
    store = ResultsStore(tmp_path)
    store.append([row(1.0)], RUN, "2026-01-01T00:00:00+00:00")
    lines = store.csv.read_text().splitlines()
    store.csv.write_text("\n".join([lines[0].replace(",value,", ",val,")] + lines[1:]) + "\n")
    before = store.csv.read_text()
    with pytest.raises(StoreError, match="header lacks value"):
        store.append([row(2.0)], RUN, "2026-01-02T00:00:00+00:00")
    with pytest.raises(StoreError, match="header lacks value"):
        read_csv(store.csv)
    assert store.csv.read_text() == before
