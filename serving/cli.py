"""The `lifecast` command: one entry point assembling every stage's commands.

It lives in `serving` because imports go one way (serving -> training -> features) and
this is the only package allowed to see all three. Commands only parse and call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.cli import app as features_app
from features.cli import run_cli
from serving.keys_cli import keys_app
from training.cli import register as register_training

app = typer.Typer(
    name="lifecast",
    help="Churn probability and future customer value from a transaction log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(features_app, name="features")
app.add_typer(keys_app, name="keys")
register_training(app)


@app.command("demo")
@run_cli
def demo_cmd(
    transactions: Annotated[
        Path | None,
        typer.Option(help="Your own file instead of the bundled Online Retail extract "
                          "(then give --mapping)."),
    ] = None,
    mapping: Annotated[Path | None, typer.Option(help="YAML column mapping.")] = None,
    cutoff: Annotated[str | None, typer.Option(help="Default: the day after the last event.")]
    = None,
) -> None:
    """Run the main job on the bundled demo data: validate, features, segments, summary."""
    import pandas as pd

    from features import DEMO_MAPPING, ColumnMapping, demo_data_path
    from features.demo import run_feature_demo

    source = str(transactions) if transactions else demo_data_path()
    cmap = ColumnMapping.from_yaml(mapping) if mapping else (
        DEMO_MAPPING if transactions is None else ColumnMapping()
    )
    demo = run_feature_demo(source, cmap, cutoff)
    typer.echo(demo.report.format())
    typer.echo(f"\nFeatures at cutoff {demo.cutoff.date()}: {len(demo.customers):,} customers\n")
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        typer.echo(demo.segments.reset_index().to_string(index=False))
        stages = demo.customers["lifecycle_stage"].value_counts()
        typer.echo("\nLifecycle stages:\n" + stages.to_string())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
