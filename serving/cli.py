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


def main() -> None:
    """Console entry point: the only place that configures logging."""
    import logging
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
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
