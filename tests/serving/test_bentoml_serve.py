"""`serving.bentoml_serve`: `bentoml serve` with a Prometheus folder of each server's own.

BentoML keeps every server's Prometheus files in ``$BENTOML_HOME/prometheus_multiproc_dir`` and
empties it when a server starts, so a second `lifecast serve` on the machine deleted the first
one's metrics. Two real servers: `test_service_integration.py`
(`test_a_second_server_leaves_the_first_ones_metrics_alone`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.bentoml_serve import METRICS_ROOT, main, metrics_folder, remove_abandoned


def test_each_server_gets_its_own_folder_removed_when_it_stops(tmp_path) -> None:
    root = tmp_path / METRICS_ROOT
    with metrics_folder(root) as first, metrics_folder(root) as second:
        assert first != second and first.parent == second.parent == root
        assert first.is_dir() and not any(first.iterdir())
        (first / "counter_1.db").write_bytes(b"x")
        # the other one starting does not touch it (its lock is held)
        assert remove_abandoned(root) == []
        assert (first / "counter_1.db").is_file()
    assert list(root.iterdir()) == []


def test_folders_of_killed_servers_are_removed_by_the_next_one(tmp_path) -> None:
    """A server killed outright (SIGKILL) leaves its folder; the next one removes it, and
    only it: a running server's folder stays."""
    root = tmp_path / METRICS_ROOT
    code = ("import os, signal, sys; from pathlib import Path; "
            "from serving.bentoml_serve import metrics_folder\n"
            "with metrics_folder(Path(sys.argv[1])) as f:\n"
            "    (f / 'counter_9.db').write_bytes(b'x'); print(f, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    left = Path(killed.stdout.strip())
    assert (left / "counter_9.db").is_file()
    with metrics_folder(root) as running:
        assert not left.exists() and not left.with_suffix(".lock").exists()
        assert running.is_dir()
    assert list(root.iterdir()) == []


def test_main_runs_bentoml_serve_with_its_own_folder(tmp_path, monkeypatch) -> None:
    """`main` points BentoML's Prometheus folder at its own before `bentoml serve` runs, in
    this process, and removes it afterwards (and on an error)."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    seen = {}

    def serve(args, prog_name):
        folder = BentoMLContainer.prometheus_multiproc_dir.get()
        seen.update(args=args, folder=folder, existed=os.path.isdir(folder))
        raise SystemExit(0)  # as click's standalone mode ends

    monkeypatch.setattr(cli, "main", serve)
    try:
        with BentoMLContainer.bentoml_home.patch(str(tmp_path)), pytest.raises(SystemExit):
            main(["serving.service:Lifecast", "--port", "3299"])
    finally:
        BentoMLContainer.prometheus_multiproc_dir.reset()
    assert seen["args"] == ["serve", "serving.service:Lifecast", "--port", "3299"]
    folder = Path(seen["folder"])
    assert seen["existed"] and folder.parent == tmp_path / METRICS_ROOT
    assert folder != tmp_path / "prometheus_multiproc_dir"  # not BentoML's shared one
    assert not folder.exists()
