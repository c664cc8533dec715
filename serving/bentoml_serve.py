"""``bentoml serve`` with a Prometheus folder of its own: what `lifecast serve` runs.

``python -m serving.bentoml_serve serving.service:Lifecast --port 3000`` is ``bentoml serve
serving.service:Lifecast --port 3000`` but for where the workers keep their metrics.

BentoML 1.4 runs the Prometheus client in multiprocess mode: each worker writes its counters
to files in one folder, which every worker's ``/metrics`` reads. ``bentoml serve`` takes that
folder from ``BentoMLContainer.prometheus_multiproc_dir``, always
``$BENTOML_HOME/prometheus_multiproc_dir`` (``PROMETHEUS_MULTIPROC_DIR`` is not read: it is set
for the workers from that setting), and empties it when it starts
(``bentoml.serving.ensure_prometheus_dir``). So a second server on the same machine with the
same ``BENTOML_HOME`` (another ``lifecast serve --port``) deleted the first one's files, and
the first one's ``/metrics`` showed zeros from then on.

Here that setting points at a folder of this process, made under
``$BENTOML_HOME/lifecast_prometheus/`` (`metrics_folder`), before BentoML's command line runs
in this same process; the folder is removed when the server stops (Ctrl-C, SIGTERM: the
server returns and this module's ``finally`` runs). A server killed outright (SIGKILL) cannot
remove its folder: each server holds a lock on ``<folder>.lock`` while it runs, and the next
one to start removes the folders whose lock nobody holds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

#: The folder under BentoML's home that holds one metrics folder per running server.
METRICS_ROOT = "lifecast_prometheus"
_LOCK = ".lock"


def _lock(path: Path) -> int | None:
    """Hold an exclusive lock on the open file ``path`` without waiting: its descriptor,
    or None when another process holds it. Where there is no ``fcntl`` (Windows), nothing
    is locked and every call returns a descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        import fcntl
    except ImportError:  # no advisory locks: abandoned folders are not told apart
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_abandoned(root: Path) -> list[Path]:
    """Remove the metrics folders of servers that stopped without removing them (killed):
    those whose ``.lock`` file no process holds. Returns the folders removed. A running
    server's folder is never touched (its lock is held); without ``fcntl`` nothing is
    removed."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return []
    removed = []
    for lock in sorted(root.glob(f"*{_LOCK}")):
        try:
            fd = _lock(lock)
        except OSError:
            continue
        if fd is None:
            continue  # a running server's
        try:
            folder = lock.with_suffix("")
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def metrics_folder(root: Path) -> Iterator[Path]:
    """A new empty folder under ``root`` for this server's Prometheus files, locked
    (``<folder>.lock``) while the context runs and removed, with its lock file, at its end.
    Folders of servers killed before they could remove theirs are removed first
    (`remove_abandoned`)."""
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    handle, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=_LOCK, dir=root)
    os.close(handle)
    lock = Path(name)
    fd = _lock(lock)
    folder = lock.with_suffix("")
    try:
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)


def main(argv: Sequence[str] | None = None) -> None:
    """``bentoml serve <argv>`` with this process's own Prometheus folder."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    args = list(sys.argv[1:] if argv is None else argv)
    root = Path(BentoMLContainer.bentoml_home.get()) / METRICS_ROOT
    with metrics_folder(root) as folder:
        BentoMLContainer.prometheus_multiproc_dir.set(str(folder))
        from bentoml_cli.cli import cli

        cli.main(args=["serve", *args], prog_name="bentoml")


if __name__ == "__main__":
    main()
