"""RFM scores, named segments and lifecycle stages.

Everything here works on the per-customer feature frame of `features.build_features`
(one row per customer) and returns frames or series indexed like it, one row per customer.

RFM scores
----------
`RFMSegmenter.fit` learns quintile edges (``np.quantile`` at 0.2, 0.4, 0.6, 0.8, the default
linear method) for three columns of the population:

| score | column            | direction                               |
|-------|-------------------|-----------------------------------------|
| R     | `days_since_last` | lower is better: 5 = most recent        |
| F     | `n_orders`        | higher is better: 5 = most orders       |
| M     | `monetary_total`  | higher is better: 5 = largest net spend |

`RFMSegmenter.transform` applies the saved edges with ``np.searchsorted(edges, x, "left")``:
a value's *bin* is ``1 + (number of edges strictly below it)``, so the bins are closed on the
right, as in ``pandas.qcut``, and a value equal to an edge falls into the lower bin. F and M
scores are the bin; the R score is ``6 - bin``. The score depends only on the value and the
edges, so the same value always gets the same score, online and in batch, whatever else is in
the frame.

Ties. A tied mass of values (most customers have ``n_orders == 1``) that spans several
quantiles makes several edges equal; the whole mass lands in the lowest bin it reaches, and the
bins between equal edges go unused. So one-order customers all score F = 1 (never "frequent"),
a population where everyone has one order scores F = 1 throughout, and a population of one
customer scores R = 5, F = 1, M = 1. Unused scores are expected and harmless.

``rfm_score`` is the three digits as a string (``"545"``); ``fm_score`` is the mean of F and
M rounded half up (``(F + M + 1) // 2``: F = 1, M = 2 gives 2).

Named segments
--------------
The widely used 11-segment map on (R, FM), made total and exclusive: every one of the 25 cells
belongs to exactly one segment. It lives in one constant, `SEGMENT_GRID`, which is this table
(rows FM = 5 down to 1, columns R = 1 to 5; a test keeps the two identical):

| FM  | R=1             | R=2         | R=3            | R=4                | R=5                |
|-----|-----------------|-------------|----------------|--------------------|--------------------|
| 5   | Can't Lose Them | At Risk     | Loyal          | Champions          | Champions          |
| 4   | Can't Lose Them | At Risk     | Loyal          | Champions          | Champions          |
| 3   | At Risk         | At Risk     | Need Attention | Potential Loyalist | Potential Loyalist |
| 2   | Lost            | Hibernating | About to Sleep | Potential Loyalist | Potential Loyalist |
| 1   | Lost            | Hibernating | About to Sleep | Promising          | New                |

In words: Champions R 4-5 & FM 4-5; Loyal R 3 & FM 4-5; Potential Loyalist R 4-5 & FM 2-3;
New R 5 & FM 1; Promising R 4 & FM 1; Need Attention R 3 & FM 3; About to Sleep R 3 & FM 1-2;
At Risk R 1 & FM 3 or R 2 & FM 3-5; Can't Lose Them R 1 & FM 4-5; low-FM customers (FM 1-2)
split by recency into Hibernating (R 2) and Lost (R 1). `SEGMENTS` lists the names in order.
The map (with the edge rule above) is versioned by `RFM_RULES_VERSION`, saved with the edges.

Lifecycle stages
----------------
`lifecycle_stage` judges each customer against their own cadence; with H the churn horizon,
``new_days`` defaulting to ``min(H * new_fraction, new_max_days)`` (30 days for H = 90) and the
thresholds of `LifecycleRules`, the first matching rule wins:

| order | stage       | rule                                                               |
|-------|-------------|--------------------------------------------------------------------|
| 1     | churned     | `days_since_last >= H`, whatever the cadence                       |
| 2     | new         | one purchase day (`frequency == 0`) and `T <= new_days`            |
| 3     | reactivated | repeat customer whose last gap was a churn (`gap_last >= H`) and   |
|       |             | whose return is recent (`days_since_last <= new_days`)             |
| 4     | active      | repeat customer, `overdue <= active_max_overdue` (1.5)             |
| 5     | cooling     | repeat customer, `overdue <= cooling_max_overdue` (3.0)            |
| 6     | lapsed      | repeat customer, more overdue than that (and not churned)          |
| 7     | active      | one purchase day, `days_since_last < single_active_fraction * H`   |
|       |             | (1/3 of H)                                                         |
| 8     | cooling     | one purchase day, `days_since_last < single_cooling_fraction * H`  |
|       |             | (2/3 of H)                                                         |
| 9     | lapsed      | one purchase day, otherwise (still `< H`)                          |

``overdue = days_since_last / max(gap_mean, min_cadence_days)``: the feature frame's
``overdue_ratio``, except that a cadence shorter than ``min_cadence_days`` (7) is read as 7, so
two purchases on consecutive days do not make a customer "lapsed" after four quiet days. A repeat
customer without a usable ``gap_mean`` (NaN) is judged by the one-purchase-day rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

__all__ = [
    "RFM_RULES_VERSION",
    "RISK_BANDS",
    "SEGMENTS",
    "SEGMENT_GRID",
    "STAGES",
    "LifecycleRules",
    "RFMSegmenter",
    "lifecycle_stage",
    "segment_for",
    "segment_summary",
]

#: Version of the scoring and segment rules (edge rule + `SEGMENT_GRID`). Bump it whenever either
#: changes; a saved segmenter of another version refuses to load.
RFM_RULES_VERSION: int = 1

#: Segment names, best first; the order of `segment_summary` and of `/segments` (the CLI's
#: summary after `score` and `demo` ranks them by value at risk instead).
SEGMENTS: tuple[str, ...] = (
    "Champions",
    "Loyal",
    "Potential Loyalist",
    "New",
    "Promising",
    "Need Attention",
    "About to Sleep",
    "At Risk",
    "Can't Lose Them",
    "Hibernating",
    "Lost",
)

#: The segment map: ``SEGMENT_GRID[5 - fm][r - 1]`` is the segment of (r_score, fm_score).
#: Rows are FM = 5, 4, 3, 2, 1; columns are R = 1..5 (the table of the module docstring).
SEGMENT_GRID: tuple[tuple[str, ...], ...] = (
    ("Can't Lose Them", "At Risk", "Loyal", "Champions", "Champions"),
    ("Can't Lose Them", "At Risk", "Loyal", "Champions", "Champions"),
    ("At Risk", "At Risk", "Need Attention", "Potential Loyalist", "Potential Loyalist"),
    ("Lost", "Hibernating", "About to Sleep", "Potential Loyalist", "Potential Loyalist"),
    ("Lost", "Hibernating", "About to Sleep", "Promising", "New"),
)

#: Churn risk bands, lowest first: the per-customer ``churn_risk`` beside the segment and the
#: stage (`training.models.risk_band` assigns them: low < 0.3 <= medium < 0.6 <= high by
#: default).
RISK_BANDS: tuple[str, ...] = ("low", "medium", "high")

#: Lifecycle stages, from the start of a relationship to its end.
STAGES: tuple[str, ...] = ("new", "active", "cooling", "lapsed", "churned", "reactivated")

_N_SCORES = 5
_QUANTILES = np.array([0.2, 0.4, 0.6, 0.8])  # quintile edges
_RFM_COLUMNS: dict[str, str] = {"r": "days_since_last", "f": "n_orders", "m": "monetary_total"}
_OUTPUT_COLUMNS = [
    "customer_id",
    "r_score",
    "f_score",
    "m_score",
    "rfm_score",
    "fm_score",
    "segment",
]


# Derived lookups (pure data, no side effects): segment name per (r-1, fm-1) and the 125
# rfm strings per (r-1)*25 + (f-1)*5 + (m-1).
def _segment_lookup() -> np.ndarray:
    lookup = np.empty((_N_SCORES, _N_SCORES), dtype=object)
    for fm_row, names in enumerate(SEGMENT_GRID):
        for r_col, name in enumerate(names):
            lookup[r_col, _N_SCORES - 1 - fm_row] = name
    return lookup


_SEGMENT_BY_R_FM = _segment_lookup()
_RFM_STRINGS = np.array(
    [f"{r}{f}{m}" for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)], dtype=object
)
_STAGE_NAMES = np.array(STAGES, dtype=object)


def segment_for(r_score: int, fm_score: int) -> str:
    """The segment name of one (r_score, fm_score) pair, both in 1..5."""
    if not (1 <= int(r_score) <= _N_SCORES and 1 <= int(fm_score) <= _N_SCORES):
        raise ValueError(f"scores must be in 1..5, got r_score={r_score}, fm_score={fm_score}")
    return str(_SEGMENT_BY_R_FM[int(r_score) - 1, int(fm_score) - 1])


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} expects a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")


def _numeric(df: pd.DataFrame, column: str, *, finite: bool) -> np.ndarray:
    """One column as a float64 array; raises ValueError naming it if it is not numeric."""
    try:
        values = pd.to_numeric(df[column]).to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"column {column} must be numeric: {exc}") from None
    if finite and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise ValueError(f"column {column} has {bad} missing or infinite value(s)")
    return values


def _check_edges(name: str, edges: Any) -> np.ndarray:
    try:
        arr = np.asarray(edges, dtype="float64")
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of {_N_SCORES - 1} numbers") from None
    if arr.shape != (_N_SCORES - 1,) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a list of {_N_SCORES - 1} finite numbers, got {edges!r}")
    if (np.diff(arr) < 0).any():
        raise ValueError(f"{name} must be non-decreasing, got {edges!r}")
    return arr


class RFMSegmenter(BaseEstimator):
    """Quintile RFM scores and the named segment map, learned on a population.

    ``fit`` learns the edges (``r_edges_``, ``f_edges_``, ``m_edges_``: four floats each) and
    ``n_customers_``; ``transform`` maps a feature frame (one row per customer) to a frame with
    the same index and the columns ``customer_id, r_score, f_score, m_score, rfm_score,
    fm_score, segment``. See the module docstring for the edge and tie rules.
    """

    def __init__(self) -> None:
        pass

    # -- learning and applying -------------------------------------------------------------

    def fit(self, features_df: pd.DataFrame, y: Any = None) -> RFMSegmenter:
        """Learn quintile edges from the population; (n_customers, k) -> self."""
        _require_columns(features_df, _RFM_COLUMNS.values(), "RFMSegmenter.fit")
        if len(features_df) == 0:
            raise ValueError("RFMSegmenter.fit: the population is empty")
        edges = {
            key: np.quantile(_numeric(features_df, col, finite=True), _QUANTILES)
            for key, col in _RFM_COLUMNS.items()
        }
        self.r_edges_ = edges["r"].astype("float64")
        self.f_edges_ = edges["f"].astype("float64")
        self.m_edges_ = edges["m"].astype("float64")
        self.n_customers_ = int(len(features_df))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "r_edges_"):
            raise NotFittedError(
                "this RFMSegmenter is not fitted yet: call fit() on the population first, "
                "or load() a saved one"
            )

    def transform(self, features_df: pd.DataFrame) -> pd.DataFrame:
        """Score and segment customers; (n, k) -> (n, 7) with the input's index."""
        self._check_fitted()
        _require_columns(
            features_df, ["customer_id", *_RFM_COLUMNS.values()], "RFMSegmenter.transform"
        )
        r_bin = np.searchsorted(
            self.r_edges_, _numeric(features_df, _RFM_COLUMNS["r"], finite=True), side="left"
        )
        f_bin = np.searchsorted(
            self.f_edges_, _numeric(features_df, _RFM_COLUMNS["f"], finite=True), side="left"
        )
        m_bin = np.searchsorted(
            self.m_edges_, _numeric(features_df, _RFM_COLUMNS["m"], finite=True), side="left"
        )
        r = (_N_SCORES - r_bin).astype("int64")  # bins are 0-based here: 6 - (bin + 1)
        f = (f_bin + 1).astype("int64")
        m = (m_bin + 1).astype("int64")
        fm = (f + m + 1) // 2
        return pd.DataFrame(
            {
                "customer_id": features_df["customer_id"].to_numpy(),
                "r_score": r,
                "f_score": f,
                "m_score": m,
                "rfm_score": _RFM_STRINGS[(r - 1) * 25 + (f - 1) * 5 + (m - 1)],
                "fm_score": fm,
                "segment": _SEGMENT_BY_R_FM[r - 1, fm - 1],
            },
            index=features_df.index,
            columns=_OUTPUT_COLUMNS,
        )

    def fit_transform(self, features_df: pd.DataFrame, y: Any = None) -> pd.DataFrame:
        """``fit`` then ``transform`` on the same frame; (n, k) -> (n, 7)."""
        return self.fit(features_df).transform(features_df)

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The learned state as plain JSON-serializable data (lists of floats)."""
        self._check_fitted()
        return {
            "kind": "RFMSegmenter",
            "rules_version": RFM_RULES_VERSION,
            "quantiles": [float(q) for q in _QUANTILES],
            "r_edges": [float(v) for v in self.r_edges_],
            "f_edges": [float(v) for v in self.f_edges_],
            "m_edges": [float(v) for v in self.m_edges_],
            "n_customers": self.n_customers_,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RFMSegmenter:
        """A fitted segmenter from `to_dict` output; refuses other rule versions."""
        if not isinstance(data, Mapping) or data.get("kind") != "RFMSegmenter":
            raise ValueError("not a saved RFMSegmenter (missing kind='RFMSegmenter')")
        version = data.get("rules_version")
        if version != RFM_RULES_VERSION:
            raise ValueError(
                f"saved RFMSegmenter uses rules version {version!r}, this code uses "
                f"{RFM_RULES_VERSION}; refit it on the population"
            )
        seg = cls()
        seg.r_edges_ = _check_edges("r_edges", data.get("r_edges"))
        seg.f_edges_ = _check_edges("f_edges", data.get("f_edges"))
        seg.m_edges_ = _check_edges("m_edges", data.get("m_edges"))
        seg.n_customers_ = int(data.get("n_customers", 0))
        return seg

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `to_dict` as JSON, atomically (temp file in the same folder, then replace)."""
        payload = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RFMSegmenter:
        """Read a segmenter written by `save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not a valid saved RFMSegmenter: {exc}") from None
        return cls.from_dict(data)


# -- lifecycle stages ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LifecycleRules:
    """Thresholds of `lifecycle_stage` (see the table in the module docstring).

    Overdue thresholds are multiples of the customer's own cadence; fractions are of the churn
    horizon; days are days.
    """

    active_max_overdue: float = 1.5
    cooling_max_overdue: float = 3.0
    min_cadence_days: float = 7.0
    single_active_fraction: float = 1 / 3
    single_cooling_fraction: float = 2 / 3
    new_fraction: float = 1 / 3
    new_max_days: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.active_max_overdue <= self.cooling_max_overdue:
            raise ValueError("need 0 < active_max_overdue <= cooling_max_overdue")
        if not 0 < self.single_active_fraction <= self.single_cooling_fraction <= 1:
            raise ValueError("need 0 < single_active_fraction <= single_cooling_fraction <= 1")
        if not 0 <= self.new_fraction <= 1:
            raise ValueError("need 0 <= new_fraction <= 1")
        if self.min_cadence_days < 0 or self.new_max_days < 0:
            raise ValueError("min_cadence_days and new_max_days must be >= 0")

    def new_days(self, churn_horizon_days: float) -> float:
        """The default ``new_days`` for a horizon: ``min(H * new_fraction, new_max_days)``."""
        return min(churn_horizon_days * self.new_fraction, self.new_max_days)


_LIFECYCLE_COLUMNS = ("days_since_last", "frequency", "T", "gap_mean", "gap_last")


def lifecycle_stage(
    features_df: pd.DataFrame,
    churn_horizon_days: float = 90,
    new_days: float | None = None,
    rules: LifecycleRules | None = None,
) -> pd.Series:
    """Each customer's lifecycle stage, one of `STAGES`; (n, k) -> Series (n,) with the index.

    Needs ``days_since_last, frequency, T, gap_mean, gap_last``; the rules are the table of the
    module docstring, evaluated vectorized (first matching rule wins).
    """
    rules = LifecycleRules() if rules is None else rules
    if not churn_horizon_days > 0:
        raise ValueError(f"churn_horizon_days must be > 0, got {churn_horizon_days}")
    horizon = float(churn_horizon_days)
    new_days = rules.new_days(horizon) if new_days is None else float(new_days)
    if new_days < 0:
        raise ValueError(f"new_days must be >= 0, got {new_days}")
    _require_columns(features_df, _LIFECYCLE_COLUMNS, "lifecycle_stage")

    dsl = _numeric(features_df, "days_since_last", finite=True)
    freq = _numeric(features_df, "frequency", finite=True)
    tenure = _numeric(features_df, "T", finite=True)
    gap_mean = _numeric(features_df, "gap_mean", finite=False)
    gap_last = _numeric(features_df, "gap_last", finite=False)

    with np.errstate(divide="ignore", invalid="ignore"):
        overdue = dsl / np.fmax(gap_mean, rules.min_cadence_days)  # NaN where gap_mean is NaN
    repeat = (freq > 0) & np.isfinite(overdue)
    single = ~repeat

    code = {name: i for i, name in enumerate(STAGES)}
    conditions = [
        dsl >= horizon,
        (freq == 0) & (tenure <= new_days),
        repeat & (gap_last >= horizon) & (dsl <= new_days),
        repeat & (overdue <= rules.active_max_overdue),
        repeat & (overdue <= rules.cooling_max_overdue),
        repeat,
        single & (dsl < rules.single_active_fraction * horizon),
        single & (dsl < rules.single_cooling_fraction * horizon),
    ]
    choices = [
        code["churned"],
        code["new"],
        code["reactivated"],
        code["active"],
        code["cooling"],
        code["lapsed"],
        code["active"],
        code["cooling"],
    ]
    stage_codes = np.select(conditions, choices, default=code["lapsed"])
    return pd.Series(_STAGE_NAMES[stage_codes], index=features_df.index, name="lifecycle_stage")


# -- summary -------------------------------------------------------------------------------


def segment_summary(
    features_df_with_segment: pd.DataFrame, value_col: str | None = None
) -> pd.DataFrame:
    """Per-segment sizes and value; (n customers, k) -> (11 segments, m), in `SEGMENTS` order.

    Index ``segment`` (every segment, empty ones with 0 customers); columns ``customers``,
    ``share`` (of all customers), and when the input has them ``mean_churn_probability``,
    ``total_value_at_risk`` and, for ``value_col``, ``total_<value_col>``.
    """
    df = features_df_with_segment
    _require_columns(df, ["segment"], "segment_summary")
    if value_col is not None:
        _require_columns(df, [value_col], "segment_summary")
    segments = df["segment"].astype("object")
    unknown = sorted({str(s) for s in pd.unique(segments) if s not in SEGMENTS})
    if unknown:
        raise ValueError(f"segment_summary: unknown segment name(s) {unknown}; known: {SEGMENTS}")

    keys = pd.Categorical(segments, categories=list(SEGMENTS))
    counts = pd.Series(keys).value_counts(sort=False).reindex(list(SEGMENTS), fill_value=0)
    total = int(counts.sum())
    out = pd.DataFrame(
        {
            "customers": counts.to_numpy(dtype="int64"),
            "share": counts.to_numpy(dtype="float64") / total if total else 0.0,
        },
        index=pd.Index(list(SEGMENTS), name="segment"),
    )

    aggregations: list[tuple[str, str, str]] = []
    if "churn_probability" in df.columns:
        aggregations.append(("mean_churn_probability", "churn_probability", "mean"))
    if "value_at_risk" in df.columns:
        aggregations.append(("total_value_at_risk", "value_at_risk", "sum"))
    if value_col is not None and value_col != "value_at_risk":
        aggregations.append((f"total_{value_col}", value_col, "sum"))
    for out_col, in_col, how in aggregations:
        values = pd.Series(_numeric(df, in_col, finite=False), index=df.index)
        grouped = values.groupby(keys, observed=False).agg(how)
        out[out_col] = grouped.reindex(list(SEGMENTS)).to_numpy(dtype="float64")
    return out
