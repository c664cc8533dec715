"""Atomic file output: write to a temporary name in the target folder, then rename.

A failed or interrupted run therefore never leaves a half-written file behind; an
existing file is replaced only once the new one is complete. A process killed outright
(``kill -9``) cannot remove its temporary file: the name says which process wrote it
(``.<name>.<machine>-<pid>-<start>.<hex>.tmp``, `features.process`), and the next write
of the same output removes those whose process is provably gone, never a live writer's. The
file gets the permissions a plain ``open(path, "w")`` would give it: a new file ``0o666`` less the
umask, a replaced file its old permission bits.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from features.process import ProcessId, gone_reason, this_process
from features.warn import warn

_FRAME_SUFFIXES = (".parquet", ".csv", ".csv.gz")


def check_output_path(path: str | Path) -> Path:
    """Raise ValueError unless ``path`` can be written as a file: it must not be an existing
    folder, and the nearest folder of it that exists must be one a file can be created in
    (checked by creating and removing an empty file there: permission bits do not tell for
    root, read-only mounts, immutable folders or /proc). Cheap; commands call it before
    doing any work, and it leaves nothing behind."""
    path = _refuse_folder(Path(path))
    folder = path.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder; choose "
                         f"another path")
    probe = folder / f".lifecast-write-check.{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(
            f"cannot write {path}: no file can be created in {folder} ({exc.strerror}); "
            f"choose another path or fix the folder's permissions"
        ) from None
    return path


def _refuse_folder(path: Path) -> Path:
    if path.is_dir():
        raise ValueError(
            f"cannot write {path}: it is a folder, not a file; give a file name "
            f"(e.g. {path / 'features.parquet'}) or remove the folder"
        )
    return path


def check_frame_path(path: str | Path) -> Path:
    """`check_output_path`, and the name ends in a suffix `write_frame` can write."""
    path = check_output_path(path)
    if _frame_suffix(path) not in _FRAME_SUFFIXES:
        raise ValueError(f"cannot write {path}: use a .parquet, .csv or .csv.gz file name")
    return path


def _frame_suffix(path: Path) -> str:
    """The suffix that says the format, in lower case (``OUT.CSV`` is a CSV file)."""
    suffix = path.suffix.lower()
    return "".join(path.suffixes[-2:]).lower() if suffix == ".gz" else suffix


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


_TEMP_TAIL = re.compile(r"(?P<machine>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>[0-9a-f]{8}|x)"
                        r"\.[0-9a-f]{8}\.tmp")


def _create_temp(path: Path) -> Path:
    """Create an empty file with a fresh name next to ``path``, mode 0o666 less the umask
    (as ``open`` does; ``tempfile.mkstemp`` would make it 0o600). The name holds this
    process's `ProcessId` (`_sweep_leftovers` reads it back)."""
    me = this_process()
    owner = f"{me.machine}-{me.pid}-{me.start or 'x'}"
    for _ in range(100):
        tmp = path.parent / f"{_temp_prefix(path)}{owner}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")


def _sweep_leftovers(path: Path) -> None:
    """Remove the temporary files of earlier writes of ``path`` whose process is provably
    gone (killed outright: nothing else leaves one), each with a one-line warning. Files of a
    process that may still be running (here or on another machine sharing the folder), and
    names this module did not make, are left alone."""
    prefix = _temp_prefix(path)
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        match = _TEMP_TAIL.fullmatch(name[len(prefix):])
        if match is None:
            continue
        start = "" if match["start"] == "x" else match["start"]
        # the machine digest matches this one's or `gone_reason` tells nothing: the host
        # name is this one's whenever it is shown
        owner = ProcessId(host=socket.gethostname(), machine=match["machine"],
                          pid=int(match["pid"]), start=start)
        reason = gone_reason(owner)
        if reason is None:
            continue
        try:
            os.unlink(path.parent / name)
        except OSError:  # another write swept it first, or the folder is read-only
            continue
        warn(f"removed {path.parent / name}, the temporary file of an earlier write of "
             f"{path.name} that was killed before it finished ({reason})")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Raises ValueError when ``path`` is an existing folder (before creating anything). An
    existing file keeps its permission bits; a new one gets 0o666 less the umask.
    """
    path = check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_leftovers(path)
        tmp = _create_temp(path)
    except OSError as exc:  # e.g. the folder became read-only since the check
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        yield tmp
        _refuse_folder(path)  # a folder made meanwhile: say so, not IsADirectoryError
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))  # replacing: keep its mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame to .parquet or .csv (by extension), atomically."""
    path = check_frame_path(path)
    suffix = _frame_suffix(path)
    existed = os.path.lexists(path)
    try:
        with atomic_path(path) as tmp:
            if suffix == ".parquet":
                frame.to_parquet(tmp, index=False)
            elif suffix == ".csv":
                frame.to_csv(tmp, index=False)
            else:
                # gzip's header holds a file name and a time: pandas wrote the temporary
                # name (which `gunzip -N` restored) and the time of the run, so the same
                # frame gave other bytes each run. Neither, as `gzip -n` writes it: the bytes
                # are the frame's alone, as a .parquet or .csv file's are.
                with open(tmp, "wb") as raw, \
                        gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz, \
                        io.TextIOWrapper(gz, encoding="utf-8", newline="") as text:
                    frame.to_csv(text, index=False)
    except OSError as exc:  # the disk or a quota full, an I/O error: not a traceback
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        kept = "the file there was left as it was" if existed else "no file was made"
        raise ValueError(
            f"cannot write {path}: {reason}; {kept}. Free space on its disk (or choose "
            f"another path) and run the command again") from None
    return path
