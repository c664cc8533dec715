"""Atomic file output: write to a temporary name in the target folder, then rename.

A failed or interrupted run therefore never leaves a half-written file behind; an
existing file is replaced only once the new one is complete. The file gets the
permissions a plain ``open(path, "w")`` would give it: a new file ``0o666`` less the
umask, a replaced file its old permission bits.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

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
    return "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix


def _create_temp(path: Path) -> Path:
    """Create an empty file with a fresh name next to ``path``, mode 0o666 less the umask
    (as ``open`` does; ``tempfile.mkstemp`` would make it 0o600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Raises ValueError when ``path`` is an existing folder (before creating anything). An
    existing file keeps its permission bits; a new one gets 0o666 less the umask.
    """
    path = check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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
