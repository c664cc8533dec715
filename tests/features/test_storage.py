"""Atomic output files: a folder in the way is a clear error, and files get the permissions
a plain open() would give them."""

from __future__ import annotations

import gzip
import os
import re
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.cli import app
from features.storage import atomic_path, write_frame

FRAME = pd.DataFrame({"customer_id": ["a", "b"], "x": [1.0, 2.0]})


@pytest.fixture()
def umask() -> Iterator[None]:
    """Run with umask 0o027 (new files 0o640), restoring the old umask after."""
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def sales_csv(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    pd.DataFrame({
        "CustomerID": [1, 1, 2],
        "InvoiceDate": ["2011-01-04 10:00", "2011-02-01 09:00", "2011-01-20 12:00"],
        "Quantity": [2, 1, 3],
        "UnitPrice": [10.0, 5.0, 2.5],
    }).to_csv(path, index=False)
    return path


def _build(source: str, out: Path) -> list[str]:
    return ["build", "-t", source, "--customer-col", "CustomerID",
            "--timestamp-col", "InvoiceDate", "--amount", "Quantity * UnitPrice",
            "--cutoff", "2011-03-01", "--out", str(out)]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
def test_a_new_file_gets_the_umask_mode(tmp_path: Path, umask: None, suffix: str) -> None:
    out = write_frame(FRAME, tmp_path / f"out{suffix}")
    assert _mode(out) == 0o640  # 0o666 & ~0o027, as open() gives; not mkstemp's 0o600
    os.umask(0o002)
    assert _mode(write_frame(FRAME, tmp_path / f"other{suffix}")) == 0o664


def test_overwriting_keeps_the_existing_mode(tmp_path: Path, umask: None) -> None:
    out = tmp_path / "out.parquet"
    write_frame(FRAME, out)
    os.chmod(out, 0o604)
    write_frame(FRAME.iloc[:1], out)
    assert _mode(out) == 0o604
    assert len(pd.read_parquet(out)) == 1


def test_a_folder_as_output_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "d.parquet"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"d\.parquet: it is a folder, not a file"):
        write_frame(FRAME, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]
    assert list(folder.iterdir()) == []


def test_a_folder_made_while_writing_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(ValueError, match="it is a folder"), atomic_path(target) as tmp:
        tmp.write_text("x\n")
        target.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_path_under_a_file_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "mapping.yaml").write_text("x")
    with pytest.raises(ValueError, match=r"mapping\.yaml is a file, not a folder"):
        write_frame(FRAME, tmp_path / "mapping.yaml" / "out" / "f.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mapping.yaml"]


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_a_folder_no_file_can_be_created_in_is_a_clear_error() -> None:
    """/proc refuses new files even to root, for whom permission bits say nothing."""
    for target in (Path("/proc/f.parquet"), Path("/proc/new/sub/f.parquet")):
        with pytest.raises(ValueError, match=rf"cannot write {target}: no file can be "
                                             r"created in /proc \("):
            write_frame(FRAME, target)


def test_cli_out_folder_fails_before_any_work(
    tmp_path: Path, sales_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("d.parquet").mkdir()
    res = CliRunner().invoke(app, _build(str(sales_csv), Path("d.parquet")))
    assert res.exit_code == 2, res.output
    assert "d.parquet" in res.output and "is a folder" in res.output
    assert "Traceback" not in res.output and "Validation report" not in res.output
    # checked before reading: a missing source is not even looked at
    res = CliRunner().invoke(app, _build("nosuch.csv", Path("d.parquet")))
    assert res.exit_code == 2 and "is a folder" in res.output
    res = CliRunner().invoke(app, _build("nosuch.csv", Path("/proc/f.parquet")))
    assert res.exit_code == 2 and res.output.startswith(
        "error: cannot write /proc/f.parquet: no file can be created in /proc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet", "sales.csv"]


def test_cli_output_file_mode_follows_the_umask(
    tmp_path: Path, sales_csv: Path, umask: None
) -> None:
    out = tmp_path / "features.parquet"
    res = CliRunner().invoke(app, _build(str(sales_csv), out))
    assert res.exit_code == 0, res.output
    assert _mode(out) == 0o640


def test_a_csv_gz_file_is_the_same_bytes_each_run(tmp_path: Path) -> None:
    """gzip's header held the temporary file name and the time of the run: the same frame
    written twice gave different bytes, and `gunzip -N` restored the temporary name."""
    first = write_frame(FRAME, tmp_path / "out.csv.gz").read_bytes()
    second = write_frame(FRAME, tmp_path / "b" / "other.csv.gz").read_bytes()
    assert first == second
    assert first[3] == 0 and first[4:8] == b"\0\0\0\0"  # no name (FNAME), MTIME 0
    assert gzip.decompress(first) == FRAME.to_csv(index=False).encode()
    assert pd.read_csv(tmp_path / "out.csv.gz").equals(FRAME)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_full_disk_is_a_clear_error_and_keeps_the_old_file(
        tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lifecast features build ... --out <a full disk>/f.parquet` (a 200 KB tmpfs): the old
    file stayed and no temporary file did, but the user got a pandas/pyarrow traceback
    ending in `OSError: [Errno 28] No space left on device` and exit 1. Now one line names
    the file, the cause, what was kept and what to do; the CLI exits 2."""
    method = "to_parquet" if suffix == ".parquet" else "to_csv"

    def disk_full(self: pd.DataFrame, path: Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, method, disk_full)
    old, new = tmp_path / f"old{suffix}", tmp_path / f"new{suffix}"
    old.write_bytes(b"the last run's output")
    with pytest.raises(ValueError) as err:
        write_frame(FRAME, old)
    assert str(err.value) == (
        f"cannot write {old}: No space left on device; the file there was left as it was. "
        f"Free space on its disk (or choose another path) and run the command again")
    with pytest.raises(ValueError, match="No space left on device; no file was made"):
        write_frame(FRAME, new)
    assert old.read_bytes() == b"the last run's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]


# ------------------------------------------------------------------ leftovers of kill -9

_HOLD_WRITE = """
import sys, time
from features.storage import atomic_path

with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half written")
    print(tmp.name, flush=True)  # the temporary file exists: the test may kill us now
    sys.stdin.read()  # ... and we wait until it closes our stdin (or kills us)
"""


def _writer(out: Path) -> tuple[subprocess.Popen, str]:
    """A real process holding a temporary file for ``out`` open: returns it and the file's
    name once the file exists."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_WRITE, str(out)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    name = proc.stdout.readline().strip()
    assert name.startswith(f".{out.name}."), name
    return proc, name


def test_a_temporary_file_left_by_kill_9_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """A writer killed with SIGKILL runs no clean-up: before, its `.<name>.<hex>.tmp`
    stayed beside the output for ever (the name said nothing of who wrote it, so nothing
    could tell it from a live writer's). Now the name holds the writer's pid and start, and
    the next write of the same output removes it, saying so in one line."""
    out = tmp_path / "features.parquet"
    proc, name = _writer(out)
    proc.kill()
    proc.wait()
    assert (tmp_path / name).exists()
    with pytest.warns(UserWarning, match=rf"removed .*{re.escape(name)}, the temporary file "
                      rf"of an earlier write of features.parquet that was killed before it "
                      rf"finished \(pid {proc.pid} on .* is not running\)"):
        write_frame(FRAME, out)
    assert sorted(os.listdir(tmp_path)) == ["features.parquet"]


def test_a_live_writers_temporary_file_is_left_alone(tmp_path: Path) -> None:
    """A second write of the same output while the first still runs: the first one's
    temporary file is its work in progress and stays; the first then finishes as usual."""
    out = tmp_path / "features.parquet"
    other = tmp_path / ".features.parquet.0a1b2c3d.tmp"  # a name storage never made itself
    other.write_bytes(b"not ours")
    proc, name = _writer(out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            write_frame(FRAME, out)
        assert (tmp_path / name).read_bytes() == b"half written"
    finally:
        proc.communicate("")
    assert proc.returncode == 0
    assert out.read_bytes() == b"half written"  # the first writer renamed its file on close
    assert sorted(os.listdir(tmp_path)) == [other.name, "features.parquet"]


@pytest.mark.parametrize(("name", "read"), [("OUT.PARQUET", pd.read_parquet),
                                            ("out.CSV", pd.read_csv),
                                            ("out.Csv.GZ", pd.read_csv)])
def test_the_suffix_says_the_format_in_any_case(tmp_path: Path, name: str, read) -> None:
    """'out/U.PARQUET' was refused ("use a .parquet, .csv or .csv.gz file name") while an
    input named 'upper.CSV' was read."""
    out = write_frame(FRAME, tmp_path / name)
    pd.testing.assert_frame_equal(read(out), FRAME)
    with pytest.raises(ValueError, match="use a .parquet, .csv or .csv.gz file name"):
        write_frame(FRAME, tmp_path / "out.txt")
