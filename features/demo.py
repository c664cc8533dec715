"""The feature part of the demo job: validate, build features and segments, summarize.

Transactions in; a `FeatureDemo` (validation report, features with segments and
lifecycle stages, segment summary) out. `lifecast demo` prints it; the training stage
extends the same job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.config import ColumnMapping, FeatureConfig
from features.contract import Transactions, ValidationReport, load_transactions, parse_cutoff
from features.pipeline import build_features, default_cutoff
from features.segments import RFMSegmenter, lifecycle_stage, segment_summary


@dataclass(frozen=True)
class FeatureDemo:
    report: ValidationReport
    cutoff: pd.Timestamp
    customers: pd.DataFrame  # features + rfm scores, segment, lifecycle_stage
    segments: pd.DataFrame  # segment summary
    segmenter: RFMSegmenter


def segment_customers(
    features: pd.DataFrame, segmenter: RFMSegmenter, config: FeatureConfig
) -> pd.DataFrame:
    """Features in, the same rows with RFM scores, segment and lifecycle stage added."""
    scores = segmenter.transform(features).drop(columns=["customer_id"])
    out = pd.concat([features.reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    out["lifecycle_stage"] = lifecycle_stage(
        out, churn_horizon_days=config.churn_horizon_days
    ).to_numpy()
    return out


def run_feature_demo(
    transactions: Any,
    mapping: ColumnMapping | None = None,
    cutoff: Any | None = None,
    config: FeatureConfig | None = None,
) -> FeatureDemo:
    """Validate, build features at the cutoff (default: the day after the last event),
    fit the RFM segmenter on that population and summarize the segments."""
    config = config or FeatureConfig()
    tx = transactions if isinstance(transactions, Transactions) else load_transactions(
        transactions, mapping
    )
    cut = parse_cutoff(cutoff) if cutoff is not None else default_cutoff(tx.report)
    feats = build_features(tx, cut, config=config)
    segmenter = RFMSegmenter().fit(feats)
    customers = segment_customers(feats, segmenter, config)
    return FeatureDemo(tx.report, cut, customers, segment_summary(customers), segmenter)
