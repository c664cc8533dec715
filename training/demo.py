"""The main job end to end, as `lifecast demo` runs it: one function returning its text.

Validate -> features and segments -> train and evaluate (time-based, against the
BG/NBD + Gamma-Gamma baseline) -> log and register in MLflow -> score every customer
into the customer store -> summary for a person to read.
"""

from __future__ import annotations

from pathlib import Path

from features.config import ColumnMapping, FeatureConfig
from features.contract import load_transactions
from features.demo import run_feature_demo
from training.models import TrainConfig


def run_demo(source: str, mapping: ColumnMapping, workdir: str | Path = "lifecast_work",
             churn_horizon_days: int = 90, clv_horizon_days: int = 90) -> str:
    """Run the whole job in ``workdir`` and return the summary text."""
    from training.metrics import format_table
    from training.pipeline import evaluation_heading, train
    from training.scoring import score, scores_summary
    from training.store import CustomerStore
    from training.tracking import configure, log_training

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    configure(workdir)
    config = TrainConfig(features=FeatureConfig(churn_horizon_days=churn_horizon_days,
                                                clv_horizon_days=clv_horizon_days))
    tx = load_transactions(source, mapping)
    feats = run_feature_demo(tx, config=config.features)
    result = train(tx, config=config)
    run = log_training(result, source=source)
    store_url = CustomerStore.default_url(workdir)
    from training.tracking import load_champions

    # as of the day just trained on, named: a second demo in the same folder rescoring that
    # day is meant, not the unchanged nightly export `score` warns about
    scored = score(tx, as_of=result.models.as_of, models=load_champions(),
                   store_url=store_url)
    lines = [tx.report.format(), ""]
    lines.append(f"Features at {feats.cutoff.date()}: {len(feats.customers):,} customers "
                 f"with a purchase ({tx.report.customers - len(feats.customers):,} others "
                 f"only returned goods)")
    for kind, table in result.evaluation.items():
        cut = result.eval_cutoffs[kind]
        lines += ["", evaluation_heading(kind, cut) + ":",
                  format_table(table)]
    lines += ["", f"MLflow run {run.run_id} ({configure(workdir)})"]
    for kind, version in run.versions.items():
        lines.append(f"  lifecast-{kind} v{version}: {run.decision[kind]['message']}")
    s = scored.scores
    lines += ["", f"Scored {len(s):,} customers as of {scored.as_of.date()} into "
                  f"{scored.store_url}: churn_probability = no purchase in the next "
                  f"{churn_horizon_days} days, predicted_clv = net spend in the next "
                  f"{clv_horizon_days} days", "", scores_summary(s)]
    return "\n".join(lines)
