"""The `lifecast` command: one entry point assembling every stage's commands.

It lives in `serving` because imports go one way (serving -> training -> features) and
this is the only package allowed to see all three. Commands only parse and call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.cli import app as features_app
from serving.keys_cli import keys_app
from training.cli import command
from training.cli import register as register_training

app = typer.Typer(
    name="lifecast",
    help="Churn probability and future customer value from a transaction log.\n\nExit "
         "codes: 0 done; 1 a bug (please report it); 2 fix the input or configuration the "
         "error names; 75 temporary, e.g. a database or MLflow server that does not answer "
         "(retry later); 130 and 143 interrupted (Ctrl-C, SIGTERM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from features.registry import DEFINITIONS_VERSION

        typer.echo(f"lifecast {version('lifecast')} (feature definitions "
                   f"v{DEFINITIONS_VERSION})")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print lifecast's version and its feature definitions' version, then exit.")]
        = False) -> None:
    """Churn probability and future customer value from a transaction log."""


app.add_typer(features_app, name="features")
app.add_typer(keys_app, name="keys")
register_training(app)
__import__("serving.serve_cli").serve_cli.register(app)  # `lifecast serve`


@command(app, "demo", mlflow=True)
def demo_cmd(
    transactions: Annotated[
        Path | None,
        typer.Option(help="Your own file instead of the bundled Online Retail extract "
                          "(then give --mapping)."),
    ] = None,
    mapping: Annotated[Path | None, typer.Option(help="YAML column mapping.")] = None,
    workdir: Annotated[Path, typer.Option(
        help="Folder for the MLflow store, the artifacts and the customer store.")]
    = Path("lifecast_work"),
    churn_h: Annotated[int, typer.Option(
        "--churn-horizon-days",
        help="Churn outcome window, in days: a customer with no purchase in this many "
             "days from the cutoff on counts as churned.")] = 90,
    clv_h: Annotated[int, typer.Option(
        "--clv-horizon-days",
        help="Future-value outcome window, in days: predicted_clv is the net spend in this "
             "many days from the cutoff on (90, not train's 365: the demo extract "
             "covers 373 days, and training with its out-of-time evaluation needs about "
             "twice the horizon plus 61 days of history).")] = 90,
) -> None:
    """Run the whole job on the bundled demo data and print a summary.

    Validate the data, build features and segments, train both models and evaluate them
    against BG/NBD + Gamma-Gamma on a past snapshot, log them to MLflow, and score every
    customer into the customer store."""
    from features import DEMO_MAPPING, ColumnMapping, demo_data_path
    from training.cli import train_config
    from training.demo import run_demo

    train_config(churn_h, clv_h)  # bad flags fail before the work folder is made

    source = str(transactions) if transactions else demo_data_path()
    cmap = ColumnMapping.from_yaml(mapping) if mapping else (
        DEMO_MAPPING if transactions is None else ColumnMapping()
    )
    typer.echo(run_demo(source, cmap, workdir, churn_h, clv_h))


def _matplotlib_folder() -> str | None:
    """A folder for matplotlib's settings and font cache when its own is not writable (a
    read-only, missing or unset HOME: a container, a scheduler's user), else None.

    There matplotlib logged two warnings in every command's output and made a temporary
    folder that it deletes at exit, so it rebuilt its font cache (seconds) on every run. This
    one is the user's own under the temporary folder (``lifecast-matplotlib-<uid>``), kept
    between runs, so the cache is reused; one that is not a folder the user owns and only
    the user can write (another user's, a link) is not used. matplotlib's rule for its
    folders is repeated here rather than asked: importing matplotlib looks at them (and
    warns) at once, and most commands never draw."""
    import os
    import stat
    import sys
    import tempfile

    if not hasattr(os, "getuid"):
        return None  # Windows: matplotlib's own folders, as they are
    try:
        home: Path | None = Path.home()
    except RuntimeError:  # no HOME and no entry for this user
        home = None

    def xdg(variable: str, default: str) -> Path | None:
        base = os.environ.get(variable) or (home / default if home else None)
        return Path(base, "matplotlib") if base else None

    if sys.platform.startswith(("linux", "freebsd")):  # settings, then the font cache
        wanted = [xdg("XDG_CONFIG_HOME", ".config"), xdg("XDG_CACHE_HOME", ".cache")]
    else:  # macOS and other systems: one folder for both
        wanted = [home / ".matplotlib" if home else None]
    if all(folder is not None and _can_make(folder) for folder in wanted):
        return None
    try:
        own = Path(tempfile.gettempdir()) / f"lifecast-matplotlib-{os.getuid()}"
        own.mkdir(mode=0o700, exist_ok=True)
        info = own.lstat()
    except OSError:
        return None  # matplotlib then does as before
    mine = (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    return str(own) if mine else None


def _can_make(folder: Path) -> bool:
    """Whether ``folder`` is, or can be made as, a writable folder (matplotlib makes its
    folders with their parents), found without making anything."""
    import os

    try:
        for path in (folder, *folder.parents):
            if path.exists():
                return path.is_dir() and os.access(path, os.W_OK)
    except OSError:  # a parent the user may not enter
        return False
    return False


def main() -> None:
    """Console entry point: the only place that configures logging."""
    import logging
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    if not os.environ.get("MPLCONFIGDIR"):  # the user's own setting wins
        folder = _matplotlib_folder()
        if folder is not None:
            os.environ["MPLCONFIGDIR"] = folder
    # `import mlflow` (lazy, after this) sets its logger to this level, INFO when unset
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow 3 sends usage events to its makers by default (and fetches their config on a
    # machine that may have no internet); lifecast's commands do not, as `lifecast serve`
    # sets BENTOML_DO_NOT_TRACK. MLFLOW_DISABLE_TELEMETRY=false in the environment keeps it
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic", "bentoml"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # the stages of train / backtest / score as they finish, e.g. "training frame: 12.3 s"
    progress = logging.getLogger("lifecast.progress")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("  %(message)s"))
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    app()


if __name__ == "__main__":
    main()
