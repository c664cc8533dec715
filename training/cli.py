"""`lifecast train | backtest | score | promote | models`: parse flags, call one function."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from features.cli import checked_instant, disk_full, echo_err, fail, run_cli, with_mapping
from features.config import ColumnMapping
from features.naming import counted

if TYPE_CHECKING:
    import pandas as pd

    from features.config import FeatureConfig

ChurnH = Annotated[int, typer.Option(
    "--churn-horizon-days",
    help="Churn outcome window, in days: a customer with no purchase in this many days "
         "from the cutoff on counts as churned.")]
ClvH = Annotated[int, typer.Option(
    "--clv-horizon-days",
    help="Future-value outcome window, in days: predicted_clv is the net spend in this "
         "many days from the cutoff on.")]
AsOf = Annotated[str | None, typer.Option(
    "--as-of", help="Use only events before this instant (default: the day after the last).",
    callback=checked_instant)]
Tune = Annotated[int, typer.Option("--tune", min=0,
                                   help="Optuna trials (0: use the defaults).")]
Threads = Annotated[int, typer.Option(
    "--threads", min=0,
    help="CPU threads LightGBM uses (0: all cores). On a machine other work shares, give "
         "it the cores that are free: with fewer free than it uses, fitting slows down many "
         "times over.")]

#: Config fields that command-line flags set, with the flag that sets each: a config error
#: names the flag the user typed, not the field.
CONFIG_FLAGS: dict[str, str] = {
    "churn_horizon_days": "--churn-horizon-days",
    "clv_horizon_days": "--clv-horizon-days",
}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def config_error_message(exc: ValidationError) -> str:
    """One line per invalid value of a pydantic config, naming the flag that set it
    (`CONFIG_FLAGS`; the field's path for the others), e.g. ``--churn-horizon-days must be
    a whole number of days > 0, got 0``."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        field = loc[-1] if loc else ""
        name = CONFIG_FLAGS.get(field, ".".join(loc) or "config")
        ctx = err.get("ctx") or {}
        bounds = [f"{op} {ctx[key]}" for key, op in _BOUNDS.items() if key in ctx]
        value = err.get("input")
        if bounds:
            what = "a whole number of days " if field.endswith("_days") else ""
            parts.append(f"{name} must be {what}{' and '.join(bounds)}, got {value!r}")
        else:
            parts.append(f"{name}: {err['msg']}")
    return "; ".join(parts)


def flag_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a pydantic ValidationError raised by a command (a flag building an invalid
    config) into a ValueError whose message names the flag (`config_error_message`), and a
    customer store error into a ValueError of its message; `run_cli` then prints it as one
    line and exits 2. A store error that is temporary (`StoreUnreachableError`) passes as it
    is, for `run_cli` to exit 75."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ValidationError as exc:
            raise ValueError(config_error_message(exc)) from None
        except RuntimeError as exc:
            from features.errors import TemporaryFailure
            from training.store import StoreError  # imported only on an error

            if isinstance(exc, StoreError) and not isinstance(exc, TemporaryFailure):
                raise ValueError(str(exc)) from None  # the customer store: refused, no driver
            raise

    return wrapper


def reflowed_help(doc: str | None) -> str:
    """A docstring as help text: each paragraph on one line. Typer's rich help keeps the
    single line breaks of a docstring, so a wrapped docstring would split sentences
    wherever its source lines end, whatever the terminal's width."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def command(app: typer.Typer, name: str, *, mlflow: bool = False
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as ``lifecast <name>``: its docstring (reflowed) is the help,
    errors exit 2 with one line naming the flag (`flag_errors`, `run_cli`) and, with
    ``mlflow=True``, MLflow's progress lines are off while it runs (`quiet_mlflow`)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        body = _quietly(func) if mlflow else func
        return app.command(name, help=reflowed_help(func.__doc__))(run_cli(flag_errors(body)))

    return decorate


def _quietly(func: Callable[..., Any]) -> Callable[..., Any]:
    """MLflow's progress lines off (`quiet_mlflow`), and an error MLflow raises (a tracking
    server that answers but fails the request, a URL that is no MLflow server) turned into
    one line naming the tracking store instead of its traceback with exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import mlflow
        from mlflow.exceptions import MlflowException

        from features.urls import masked_url
        from training.tracking import (  # imports mlflow: only when run
            TrackingServerUnreachableError,
            is_tracking_server,
            quiet_mlflow,
            unanswered_reason,
        )

        try:
            with quiet_mlflow():
                return func(*args, **kwargs)
        except MlflowException as exc:
            if disk_full(exc) is not None:  # `run_cli` says so and what to do
                raise
            uri = masked_url(mlflow.get_tracking_uri())
            reason = unanswered_reason(exc)  # the server went away after it answered
            if reason is not None:
                # a tracking store that is no server (SQLite, PostgreSQL) keeps its artifacts
                # on one that is: an artifact server, or an artifact store over HTTP
                server = (f"the MLflow tracking server at {uri}" if is_tracking_server(uri)
                          else f"the artifact server of the MLflow tracking store {uri}")
                raise TrackingServerUnreachableError(
                    f"{server} stopped answering: {reason}") from None
            first = (exc.message or str(exc)).strip().splitlines()[0]
            raise ValueError(f"the MLflow tracking store {uri} failed: {first}. "
                             f"Check MLFLOW_TRACKING_URI (it must name an MLflow tracking "
                             f"server or database) and that store's own log") from None

    return wrapper


def train_config(churn_h: int, clv_h: int, threads: int = 0):  # noqa: ANN202
    from features.config import FeatureConfig
    from training.models import TrainConfig

    return TrainConfig(features=FeatureConfig(churn_horizon_days=churn_h,
                                              clv_horizon_days=clv_h),
                       num_threads=threads)


def _when(ts: pd.Timestamp) -> str:
    return str(ts.date()) if ts == ts.normalize() else f"{ts:%Y-%m-%d %H:%M}"


def uncovered_message(cutoff: Any, last_event: Any, first_event: Any,
                      features: FeatureConfig, evaluated: tuple[str, ...] = ()) -> str:
    """Why a backtest has no metrics, or none for a label (``evaluated`` names those it
    has): for each horizon whose outcome window (cutoff + horizon) runs past the last
    event, until when the data would need to reach; and the latest cutoff that would give
    every metric with these horizons.

    The rule is `training.pipeline.window_observed`, the one `backtest` applies.
    """
    import pandas as pd

    from training.models import TrainConfig
    from training.pipeline import history_needed_days, window_observed

    cut, last = pd.Timestamp(cutoff), pd.Timestamp(last_event)
    missing = [k for k in ("churn", "value") if k not in evaluated]
    what = "metrics" if not evaluated else f"{' or '.join(missing)} metrics"
    lines = [f"no {what}: the data does not cover the outcome windows after the cutoff "
             f"{_when(cut)}:"]
    horizons = (("--churn-horizon-days", features.churn_horizon_days),
                ("--clv-horizon-days", features.clv_horizon_days))
    for flag, days in horizons:
        until = cut + pd.Timedelta(days=days)
        if not window_observed(last, cut, days):
            lines.append(f"  {flag} {days}: needs data until {_when(until)} (cutoff + "
                         f"{counted(days, 'day')}); the data ends {_when(last)}")
    if len(lines) == 1:  # every window covered: not reached when backtest had no metrics
        lines[0] += f" the data ends {_when(last)}"
    longest = max(days for _, days in horizons)
    latest = (last + pd.Timedelta(days=1) - pd.Timedelta(days=longest)).normalize()
    need = history_needed_days(TrainConfig(features=features))
    earliest = (pd.Timestamp(first_event) + pd.Timedelta(days=need)).normalize()
    if latest >= earliest:
        lines.append(f"for metrics, use --cutoff {latest.date()} or earlier, or shorter "
                     f"horizons")
    else:
        span = (last - pd.Timestamp(first_event)).days
        lines.append(f"no cutoff gives metrics with these horizons: the data spans "
                     f"{counted(span, 'day')}, and a backtest needs {need} days of "
                     f"history before the cutoff plus {longest} after it; use shorter "
                     f"horizons or a longer history")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the training commands to the root `lifecast` app."""

    @command(app, "train", mlflow=True)
    @with_mapping
    def train_cmd(
        *, source: str, table: str | None, mapping: ColumnMapping, as_of: AsOf = None,
        churn_h: ChurnH = 90, clv_h: ClvH = 365,
        promote: Annotated[str, typer.Option(
            help="auto: only if it beats the champion; always; never.")] = "auto",
        tune: Tune = 0, threads: Threads = 0,
        experiment: Annotated[str | None, typer.Option(
            help="MLflow experiment for the run (default: $MLFLOW_EXPERIMENT_NAME, else "
                 "lifecast). The registered models are shared by all experiments.")] = None,
        run_name: Annotated[str | None, typer.Option(
            help="MLflow run name (default: 'train <as-of> churn <N>d clv <N>d', numbered "
                 "'#2', '#3' ... when the experiment has one).")] = None,
    ) -> None:
        """Train both models, evaluate them, log to MLflow and register them.

        Uses the events before --as-of. The new versions become the champions as --promote
        says (auto: only where they beat the current champion on this run's evaluation
        snapshot)."""
        from training.pipeline import train
        from training.tracking import (
            check_promote,
            check_tracking_store,
            configure,
            experiment_name,
            log_training,
            tree_cap_note,
        )

        check_promote(promote, "--promote")  # before the training, not after it
        config = train_config(churn_h, clv_h, threads)  # bad flags fail before anything
        experiment = experiment_name(experiment)
        if run_name is not None and not run_name.strip():
            raise ValueError("--run-name is blank: give a name, or leave it out for the "
                             "default 'train <as-of> churn <N>d clv <N>d'")
        check_tracking_store(".")  # the store can be written: say so before the fit
        tune_run = None
        if tune:  # the trials are runs in the store: it is made first
            from training.tuning import last_tune_run_id, tune_config

            configure(".", experiment)
            config = tune_config(source, mapping, as_of, config, n_trials=tune, table=table,
                                 experiment=experiment,
                                 progress=lambda line: typer.echo(line, err=True))
            tune_run = last_tune_run_id()
        try:
            result = train(source, mapping, as_of, config, table=table)
            # made only now, so bad data or a horizon too long leaves no empty mlflow.db
            configure(".", experiment)
            summary = log_training(result, source=source, promote=promote,
                                   tune_run_id=tune_run, experiment=experiment,
                                   run_name=run_name)
        except BaseException:  # Ctrl-C too: the command leaves no run, its search's neither
            if tune_run is not None:
                from training.tuning import delete_tune_run

                delete_tune_run(tune_run)
            raise
        typer.echo(format_evaluation(result.evaluation, result.eval_cutoffs))
        capped = tree_cap_note(result)  # was only the run's tag: nobody at a terminal saw it
        if capped is not None:
            echo_err(f"warning: {capped}", typer.colors.YELLOW)
        typer.echo(f"\nMLflow run {summary.run_id} in experiment {experiment!r}"
                   + (f" (parameters from the --tune run {tune_run})" if tune_run else ""))
        for kind, version in summary.versions.items():
            typer.echo(f"  lifecast-{kind} v{version}: {summary.decision[kind]['message']}")
        if any(summary.promoted.values()):
            typer.echo(RESCORE_HINT)

    @command(app, "backtest")
    @with_mapping
    def backtest_cmd(
        *, source: str, table: str | None, mapping: ColumnMapping,
        cutoff: Annotated[str, typer.Option(help="Train as if today were this instant.",
                                            callback=checked_instant)],
        out: Annotated[Path, typer.Option(
            help="Per-customer predictions (.parquet, .csv or .csv.gz).")],
        churn_h: ChurnH = 90, clv_h: ClvH = 365, threads: Threads = 0,
    ) -> None:
        """Train as of a past --cutoff and score every customer into --out.

        When the data covers the outcome windows after the cutoff, compare with the real
        outcome and with the BG/NBD + Gamma-Gamma baseline."""
        from features.contract import load_transactions
        from features.storage import check_frame_path, write_frame
        from training.pipeline import backtest

        check_frame_path(out)  # a folder or an unwritable name: say so before any work
        config = train_config(churn_h, clv_h, threads)
        tx = load_transactions(source, mapping, table=table)
        result = backtest(tx, cutoff, config=config)
        write_frame(result.predictions, out)
        typer.echo(f"wrote {counted(len(result.predictions), 'customer')} to {out}")
        if result.metrics is not None:
            from training.metrics import format_table

            typer.echo(format_table(result.metrics))
        if not result.observed:
            typer.echo(uncovered_message(result.cutoff, tx.report.last_event,
                                         tx.report.first_event, config.features,
                                         result.evaluated))

    @command(app, "score", mlflow=True)
    @with_mapping
    def score_cmd(
        *, source: str, table: str | None, mapping: ColumnMapping, as_of: AsOf = None,
        store: Annotated[str | None, typer.Option(
            help="Customer store URL (default: $LIFECAST_STORE_URL, else "
                 "sqlite:///./lifecast_store.db).")] = None,
    ) -> None:
        """Score every customer with the champions into the customer store.

        The champions come from this folder's MLflow store (./mlflow.db) or
        MLFLOW_TRACKING_URI; the customer store is --store, else LIFECAST_STORE_URL, else
        ./lifecast_store.db (the service reads the same one)."""
        from training.scoring import score, scores_summary
        from training.tracking import configure

        configure(".", create=False)
        result = score(source, mapping, as_of, store_url=store, table=table)
        typer.echo(
            f"scored {counted(len(result.scores), 'customer')} as of {result.as_of.date()} with "
            f"churn v{result.versions.get('churn')} / clv v{result.versions.get('clv')} "
            f"into {result.store_url} (batch {result.batch_id}): every customer with a "
            f"purchase before {result.as_of.date()} (customers who only returned goods are "
            f"not scored)"
        )
        typer.echo(f"\n{scores_summary(result.scores)}")

    @command(app, "promote", mlflow=True)
    def promote_cmd(run: Annotated[str, typer.Option(
        "--run", help="MLflow run id (`lifecast models` lists them), or its first 6 or more "
        "characters.")]) -> None:
        """Make the models registered by a run the champions.

        In this folder's MLflow store (./mlflow.db) or MLFLOW_TRACKING_URI."""
        from training.tracking import (
            champion_versions,
            check_tracking_store,
            configure,
            promote_run,
        )

        check_tracking_store(".", create=False, write=True)  # promote sets the aliases
        configure(".", create=False)
        before = champion_versions()
        changed = False
        for kind, version in promote_run(run).items():
            if before[kind] == version:
                typer.echo(f"lifecast-{kind} v{version} is already champion: nothing changed")
                continue
            changed = True
            if before[kind] is None:
                typer.echo(f"lifecast-{kind} v{version} is now champion")
            else:
                typer.echo(f"lifecast-{kind} v{version} is now champion (was v{before[kind]})")
        if changed:
            typer.echo(RESCORE_HINT)

    @command(app, "models", mlflow=True)
    def models_cmd(
        wide: Annotated[bool, typer.Option(
            "--wide", help="Every column: full run ids, all aliases, evaluation cutoffs, "
            "horizons, feature definitions, training times to the second.")] = False,
        as_json: Annotated[bool, typer.Option(
            "--json", help="One JSON object per version (list_models' columns), for "
            "scripts.")] = False,
    ) -> None:
        """List registered model versions, their runs and their metrics.

        Per model: * marks the champion; then each version's run id, data as-of, when it
        was trained, whether --tune chose its parameters, the metrics the champion rule
        decides by and its run name. They are read from this folder's MLflow store (./mlflow.db) or
        MLFLOW_TRACKING_URI."""
        import shutil

        from training.tracking import configure, list_models

        if wide and as_json:
            raise ValueError("--wide and --json are two forms of the listing: give one")
        uri = configure(".", create=False)
        table = list_models()
        if table.empty:
            raise fail(f"no models registered yet in {uri}: run `lifecast train` first")
        if as_json:
            typer.echo(table.to_json(orient="records", date_format="iso", indent=1))
            return
        width = shutil.get_terminal_size((100, 24)).columns
        typer.echo(format_models(table, width=max(width, 60), wide=wide))


def _shorten(text: str, room: int) -> str:
    """``text`` in at most ``room`` characters: its end kept (a run name's ``tuned #3``),
    its start elided with ``…``."""
    return text if len(text) <= room else "…" + text[len(text) - room + 1:]


def _versions_table(group: pd.DataFrame, wide: bool, width: int) -> str:
    """One model's versions as text (`format_models`)."""
    import pandas as pd

    from features.registry import DEFINITIONS_VERSION

    group = group.reset_index(drop=True)
    champion = group["aliases"].fillna("").str.split(",").map(lambda a: "champion" in a)
    trials = group["tune_trials"]
    # a search whose run is gone: tuned, its trials unknown
    tuned = [("yes" if pd.isna(n) else "no" if n == 0 else counted(int(n), "trial"))
             for n in trials]
    shown = pd.DataFrame({
        "version": [f"{'* ' if c else ''}{v}" for c, v in zip(champion, group["version"],
                                                             strict=True)],
    })
    if wide:
        shown["aliases"] = group["aliases"].fillna("")
    shown["run id"] = group["run_id"] if wide else group["run_id"].str[:8]
    shown["as of"] = [("n/a" if pd.isna(t) else f"{t:%Y-%m-%d}" if t == t.normalize()
                       else f"{t:%Y-%m-%d %H:%M}") for t in group["as_of"]]
    if wide:
        shown["eval cutoff"] = [("n/a" if pd.isna(t) else str(t.date()) if t == t.normalize()
                                 else str(t)) for t in group["eval_cutoff"]]
    created = group["created"].dt.strftime("%Y-%m-%d %H:%M:%S" if wide else "%Y-%m-%d %H:%M")
    shown["trained"] = created
    # shown when they tell the versions apart or one cannot score here; always with --wide
    if wide or group["horizon_days"].nunique(dropna=False) > 1:
        shown["horizon"] = [("n/a" if pd.isna(d) else f"{d}d") for d in group["horizon_days"]]
    defs = group["feature_definitions"]
    if wide or defs.nunique(dropna=False) > 1 or (defs != DEFINITIONS_VERSION).any():
        shown["definitions"] = ["n/a" if pd.isna(d) else str(d) for d in defs]
    shown["tuned"] = tuned
    metric = group["primary_metric"].iloc[0]
    shown[metric] = [("n/a" if pd.isna(v) else f"{v:.4f}") for v in group["score"]]
    tie = group["tie_break_metric"].fillna("").iloc[0]
    if tie:
        shown[tie] = [("n/a" if pd.isna(v) else f"{v:.4f}") for v in group["tie_break_score"]]
    names = group["run_name"].fillna("").replace("", "(run deleted)").tolist()
    right = {"version", metric, tie}  # numbers line up on the right, text on the left
    if not wide:  # the run name gives way to fit, not the facts before it
        fixed = max(map(len, _text_table(shown, right).splitlines()))
        room = max(width - fixed - 2, 20)
        names = [_shorten(n, room) for n in names]
    shown["run name"] = names
    return _text_table(shown, right)


def _text_table(frame: pd.DataFrame, right: set) -> str:
    """``frame`` as lines of columns two spaces apart, the ``right`` ones right-aligned,
    with no trailing spaces."""
    cells = [[str(c) for c in frame.columns]] + [[str(v) for v in row]
                                                 for row in frame.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(frame.columns))]
    lines = ["  ".join(v.rjust(w) if c in right else v.ljust(w)
                       for v, w, c in zip(row, widths, frame.columns, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def format_models(table: pd.DataFrame, width: int = 100, wide: bool = False) -> str:
    """`training.tracking.list_models` as text, one table per model: ``*`` marks the
    champion; each version's run id (its first 8 characters, as `lifecast promote --run`
    takes it), data as-of, when it was trained, whether its parameters came from a
    ``--tune`` search (how many trials), the metrics the champion rule decides by and its
    run name (shortened from the start to fit ``width``). Horizons and feature definitions
    show when they differ between versions or from this lifecast's; ``wide`` shows every
    column and never shortens. Then each version's decision on lines of its own, wrapped
    to ``width``."""
    import textwrap

    from training.tracking import TIE_BREAK_METRIC

    lines: list[str] = []
    for name, group in table.groupby("model", sort=False):
        metric = group["primary_metric"].iloc[0]
        tie = group["tie_break_metric"].fillna("").iloc[0] if "tie_break_metric" in group \
            else TIE_BREAK_METRIC.get(str(name).removeprefix("lifecast-"))
        rule = (f"champion rule: higher {metric} wins" + (f", then lower {tie}" if tie else "")
                + "; * = champion")
        if lines:
            lines.append("")
        lines += [f"{name} ({rule})", _versions_table(group, wide, width)]
    # a column of numbers invites ranking them: say when that would mislead
    mixed = [m for m, g in table.groupby("model", sort=False)
             if g["eval_cutoff"].nunique() > 1 or g["horizon_days"].nunique() > 1]
    if mixed:
        lines += ["", textwrap.fill(
            f"note: the scores are each version's {'/'.join(dict.fromkeys(table.primary_metric))} "
            f"on its own run's evaluation snapshot; the versions of {' and '.join(mixed)} "
            f"were evaluated at other cutoffs or horizons (`lifecast models --wide` shows "
            f"them), so their scores do not rank them. The champion rule compares settings "
            f"on one snapshot (decisions below).", width=width, subsequent_indent="      ")]
    decisions = [textwrap.fill(row.decision, width=width,
                               initial_indent=f"  {row.model} v{row.version}: ",
                               subsequent_indent="      ")
                 for row in table.itertuples(index=False) if row.decision]
    if decisions:
        lines += ["", "decisions:", *decisions]
    return "\n".join(lines)


#: Printed when a new champion is made: the customer store and a running service still
#: use the previous champions' scores and models until these two steps.
RESCORE_HINT = ("next: `lifecast score` to rescore the customer store with the new champions "
                "(/high_risk and /segments read it), and restart `lifecast serve` (it keeps "
                "the models it started with)")


def format_evaluation(evaluation: dict, cutoffs: dict) -> str:
    """Model vs baseline tables as text, each with its evaluation snapshot's date."""
    from training.metrics import format_table
    from training.pipeline import evaluation_heading

    parts = []
    for kind, frame in evaluation.items():
        parts.append(evaluation_heading(kind, cutoffs[kind]))
        parts.append(format_table(frame))
    return "\n".join(parts)
