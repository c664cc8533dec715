"""The `lifecast` console script's entry point, kept free of imports.

`serving.cli` imports pandas, DuckDB, Typer and every stage's commands (about a second). A
console script imports its target before it calls it, so Ctrl-C in that second used to end
in a traceback of whatever module was loading. Here the import runs inside the handler: a
Ctrl-C (or SIGTERM, see `features.cli.run_cli`) before a command starts prints the same
one line as one during it, and exits 130.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the `lifecast` command line (`serving.cli.main`)."""
    try:
        from serving.cli import main as cli_main
    except KeyboardInterrupt:
        # nothing has started: no file, store or run was touched
        sys.stderr.write("interrupted by Ctrl-C (SIGINT) while lifecast was starting: "
                         "nothing was done\n")
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
