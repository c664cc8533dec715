"""The `lifecast` console script's entry point (`serving.launch`)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

#: A Ctrl-C that lands while `serving.cli` (pandas, DuckDB, every command) is importing:
#: a finder raises KeyboardInterrupt at that import, as the signal would.
_CTRL_C_WHILE_IMPORTING = """
import sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "duckdb":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv[0] = "lifecast"
from serving.launch import main
main()
"""


def test_the_console_script_is_the_launcher():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "lifecast"]
    assert script.value == "serving.launch:main"


def test_ctrl_c_while_starting_says_so_in_one_line_and_exits_130():
    """Before, the script imported `serving.cli` before calling it, so Ctrl-C in that
    second printed a traceback of whatever module was loading, and exited 1."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_IMPORTING, "--version"],
                          text=True, capture_output=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == ("interrupted by Ctrl-C (SIGINT) while lifecast was starting: "
                           "nothing was done\n")
    assert proc.stdout == ""


def test_the_launcher_runs_the_command_line():
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'lifecast'; "
                           "from serving.launch import main; main()", "--version"],
                          text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("lifecast ")


_ENVIRONMENT_AFTER = """
import os, sys
sys.argv = ["lifecast", "--version"]
from serving.launch import main
try:
    main()
except SystemExit:
    pass
print(os.environ.get("MLFLOW_DISABLE_TELEMETRY"))
"""


def test_commands_send_no_mlflow_telemetry_unless_asked():
    """MLflow 3 sends usage events by default; lifecast's commands turn that off (as
    `lifecast serve` sets BENTOML_DO_NOT_TRACK), and the user's own setting wins."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    for given, expected in ((None, "true"), ("false", "false")):
        if given is not None:
            env["MLFLOW_DISABLE_TELEMETRY"] = given
        proc = subprocess.run([sys.executable, "-c", _ENVIRONMENT_AFTER], env=env, text=True,
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == expected


_DRAW_AFTER = """
import sys
sys.argv = ["lifecast", "--version"]
from serving.launch import main
try:
    main()
except SystemExit:
    pass
import matplotlib
import matplotlib.font_manager  # loads, or builds and saves, the font cache
print(matplotlib.get_cachedir())
"""


def _draw(home: Path, tmp: Path, **env: str) -> tuple[Path, str]:
    """The folder matplotlib used after `lifecast`'s entry point ran, and the stderr."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    proc = subprocess.run([sys.executable, "-c", _DRAW_AFTER], text=True, capture_output=True,
                          timeout=300, env={**base, "HOME": str(home), "TMPDIR": str(tmp), **env})
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.splitlines()[-1]), proc.stderr


def test_a_home_matplotlib_cannot_write_gets_a_kept_folder_and_no_warnings(tmp_path: Path):
    """With a read-only or missing HOME, matplotlib printed two 'WARNING matplotlib:' lines
    in `lifecast train` / `demo` and rebuilt its font cache in a temporary folder deleted at
    exit, on every run. The entry point now gives it the user's own folder under the
    temporary folder: nothing on stderr, and the second run reuses the first's cache. (A
    HOME below a regular file: root ignores permission bits, not that.)"""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    first, stderr = _draw(blocker / "home", tmp)
    assert stderr == ""
    assert first == tmp / f"lifecast-matplotlib-{os.getuid()}"
    (cache,) = first.glob("fontlist-*.json")
    before = cache.stat()
    again, stderr = _draw(blocker / "home", tmp)
    assert (again, stderr) == (first, "")
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # the user's own MPLCONFIGDIR wins; a writable HOME keeps matplotlib's own folder
    mine = tmp_path / "mine"
    assert _draw(blocker / "home", tmp, MPLCONFIGDIR=str(mine)) == (mine, "")
    home = tmp_path / "home"
    assert _draw(home, tmp) == (home / ".cache" / "matplotlib", "")


def test_a_kept_matplotlib_folder_someone_else_can_write_is_not_used(tmp_path: Path):
    """The folder sits in a temporary folder other users share: one they could have made or
    can write (its settings could name code for matplotlib to load) is left alone, and
    matplotlib does as it did before."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    tmp = tmp_path / "tmp"
    (tmp / f"lifecast-matplotlib-{os.getuid()}").mkdir(parents=True)
    (tmp / f"lifecast-matplotlib-{os.getuid()}").chmod(0o777)
    used, _ = _draw(blocker / "home", tmp)
    assert used.parent == tmp and used.name.startswith("matplotlib-")
