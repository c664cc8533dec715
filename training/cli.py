"""`lifecast train | backtest | score | promote | models`: parse flags, call one function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.cli import fail, run_cli, with_mapping
from features.config import ColumnMapping

ChurnH = Annotated[int, typer.Option("--churn-horizon-days", help="Churn outcome window.")]
ClvH = Annotated[int, typer.Option("--clv-horizon-days", help="Future-value outcome window.")]
AsOf = Annotated[str | None, typer.Option(
    "--as-of", help="Use only events before this instant (default: the day after the last).")]
Tune = Annotated[int, typer.Option("--tune", help="Optuna trials (0: use the defaults).")]


def _config(churn_h: int, clv_h: int):  # noqa: ANN202
    from features.config import FeatureConfig
    from training.models import TrainConfig

    return TrainConfig(features=FeatureConfig(churn_horizon_days=churn_h,
                                              clv_horizon_days=clv_h))


def register(app: typer.Typer) -> None:
    """Add the training commands to the root `lifecast` app."""

    @app.command("train")
    @run_cli
    @with_mapping
    def train_cmd(
        *, source: str, table: str | None, mapping: ColumnMapping, as_of: AsOf = None,
        churn_h: ChurnH = 90, clv_h: ClvH = 365,
        promote: Annotated[str, typer.Option(
            help="auto: only if it beats the champion; always; never.")] = "auto",
        tune: Tune = 0,
    ) -> None:
        """Train both models on events before --as-of, evaluate, log to MLflow, register."""
        from training.pipeline import train
        from training.tracking import configure, log_training

        configure(".")
        config = _config(churn_h, clv_h)
        if tune:
            from training.tuning import tune_config

            config = tune_config(source, mapping, as_of, config, n_trials=tune, table=table)
        result = train(source, mapping, as_of, config, table=table)
        summary = log_training(result, source=source, promote=promote)
        typer.echo(format_evaluation(result.evaluation))
        typer.echo(f"\nMLflow run {summary.run_id}")
        for kind, version in summary.versions.items():
            typer.echo(f"  lifecast-{kind} v{version}: {summary.decision[kind]['message']}")

    @app.command("backtest")
    @run_cli
    @with_mapping
    def backtest_cmd(
        *, source: str, table: str | None, mapping: ColumnMapping,
        cutoff: Annotated[str, typer.Option(help="Train as if today were this instant.")],
        out: Annotated[Path, typer.Option(help="Per-customer predictions (.parquet/.csv).")],
        churn_h: ChurnH = 90, clv_h: ClvH = 365,
    ) -> None:
        """Train as of --cutoff, score every customer, compare with the real outcome and
        the BG/NBD + Gamma-Gamma baseline when the data covers it."""
        from features.storage import write_frame
        from training.pipeline import backtest

        result = backtest(source, cutoff, mapping, _config(churn_h, clv_h), table=table)
        write_frame(result.predictions, out)
        typer.echo(f"wrote {len(result.predictions):,} customers to {out}")
        if result.metrics is None:
            typer.echo("the data does not cover the outcome windows: no metrics")
        else:
            typer.echo(result.metrics.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    @app.command("score")
    @run_cli
    @with_mapping
    def score_cmd(
        *, source: str, table: str | None, mapping: ColumnMapping, as_of: AsOf = None,
        store: Annotated[str | None, typer.Option(
            help="Customer store URL (default sqlite:///./lifecast_store.db).")] = None,
    ) -> None:
        """Score every customer with the champion models into the customer store."""
        from training.scoring import score
        from training.tracking import configure

        configure(".")
        result = score(source, mapping, as_of, store_url=store, table=table)
        typer.echo(
            f"scored {len(result.scores):,} customers as of {result.as_of.date()} with "
            f"churn v{result.versions.get('churn')} / clv v{result.versions.get('clv')} "
            f"into {result.store_url} (batch {result.batch_id})"
        )

    @app.command("promote")
    @run_cli
    def promote_cmd(run: Annotated[str, typer.Option("--run", help="MLflow run id.")]) -> None:
        """Make the models registered by a run the champions."""
        from training.tracking import configure, promote_run

        configure(".")
        for kind, version in promote_run(run).items():
            typer.echo(f"lifecast-{kind} v{version} is now champion")

    @app.command("models")
    @run_cli
    def models_cmd() -> None:
        """List registered model versions with their aliases and scores."""
        from training.tracking import configure, list_models

        configure(".")
        table = list_models()
        if table.empty:
            raise fail("no models registered yet: run `lifecast train` first")
        typer.echo(table.to_string(index=False))


def format_evaluation(evaluation: dict) -> str:
    """Model vs baseline tables as text."""
    parts = []
    for kind, frame in evaluation.items():
        parts.append(f"{kind} (model vs BG/NBD + Gamma-Gamma on the evaluation snapshot)")
        parts.append(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return "\n".join(parts)
