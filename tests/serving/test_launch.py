"""The `lifecast` console script's entry point (`serving.launch`)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

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
    import os

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    for given, expected in ((None, "true"), ("false", "false")):
        if given is not None:
            env["MLFLOW_DISABLE_TELEMETRY"] = given
        proc = subprocess.run([sys.executable, "-c", _ENVIRONMENT_AFTER], env=env, text=True,
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == expected
