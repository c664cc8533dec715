"""Evaluation plots of the churn and customer-value models, logged to MLflow, shown in notebooks.

Every ``plot_*`` function takes data plus an optional ``ax`` and returns the
:class:`~matplotlib.axes.Axes` it drew on. Without ``ax`` it creates a new figure with
``matplotlib.pyplot.subplots`` (so a notebook shows it); the caller owns that figure and closes it
(``plt.close(ax.figure)``) when done. Nothing here calls ``plt.show``, saves a file on its own,
chooses a backend or changes rcParams: the command line sets ``MPLBACKEND=Agg``. matplotlib is
imported inside the functions, so importing this module stays cheap.

Inputs are one value per customer (numpy arrays, lists or pandas Series of equal length).
Empty input, NaN or infinite values and length mismatches raise ``ValueError`` naming the
argument. Output is deterministic: the only randomness (the jitter and the subsample of
:func:`plot_shap_summary`) uses a fixed seed.

A ``baseline`` argument, where accepted, is a pair ``(values, label)``, e.g.
``(p_bgnbd, "BG/NBD")``; it is drawn as a second series in the baseline colour.

Deciles follow :mod:`training.metrics`: "top decile" is the ``ceil(n / 10)`` highest scores
(ties by input order) and decile groups are ``np.array_split`` of the stable ascending sort.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.metrics import _as_1d  # one input check for metrics and plots

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

__all__ = [
    "figure_to_png",
    "plot_calibration",
    "plot_decile_value",
    "plot_feature_importance",
    "plot_gains",
    "plot_segments",
    "plot_shap_summary",
    "save_figure",
]

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
Baseline = tuple[ArrayLike, str]

MODEL_COLOR = "C0"
BASELINE_COLOR = "C1"
REFERENCE_COLOR = "0.55"  # grey for the diagonal / random lines
NAN_COLOR = "0.75"  # light grey for missing feature values
SEED = 0  # fixed seed of the jitter and subsample in plot_shap_summary


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _new_ax(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.8)) -> Axes:
    """The given axis, or the single axis of a new figure."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new_ax = plt.subplots(figsize=figsize, layout="constrained")
    return new_ax




def _same_length(arr: FloatArray, name: str, ref: FloatArray, ref_name: str) -> None:
    if arr.size != ref.size:
        raise ValueError(
            f"length mismatch: {ref_name} has {ref.size} values, {name} has {arr.size}"
        )


def _binary(values: ArrayLike, name: str) -> FloatArray:
    arr = _as_1d(values, name)
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"{name} must contain only 0 and 1 (1 = positive, e.g. churned)")
    return arr


def _probabilities(values: ArrayLike, name: str, ref: FloatArray, ref_name: str) -> FloatArray:
    arr = _as_1d(values, name)
    _same_length(arr, name, ref, ref_name)
    if (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"{name} must be probabilities in [0, 1]")
    return arr


def _baseline(
    baseline: Baseline | None, ref: FloatArray, ref_name: str
) -> tuple[FloatArray, str] | None:
    """Validate ``(values, label)``; the values must match ``ref`` in length."""
    if baseline is None:
        return None
    if not isinstance(baseline, tuple | list) or len(baseline) != 2:
        raise ValueError('baseline must be a pair (values, label), e.g. (p_bgnbd, "BG/NBD")')
    values, label = baseline
    arr = _as_1d(values, "baseline")
    _same_length(arr, "baseline", ref, ref_name)
    return arr, str(label)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _root_figure(fig_or_ax: Figure | SubFigure | Axes) -> Figure:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

    if isinstance(fig_or_ax, Axes | SubFigure):
        fig = fig_or_ax.get_figure(root=True)
    elif isinstance(fig_or_ax, Figure):
        fig = fig_or_ax
    else:
        raise TypeError(f"expected a matplotlib Figure or Axes, got {type(fig_or_ax).__name__}")
    if fig is None:
        raise ValueError("the axis is not attached to a figure")
    return fig


def _top_k_order(score: FloatArray) -> npt.NDArray[np.intp]:
    """Indices by descending score, ties by input order (as in training.metrics)."""
    return np.argsort(-score, kind="stable")


# --------------------------------------------------------------------------------------------
# churn model
# --------------------------------------------------------------------------------------------


def _calibration_bins(p: FloatArray, n_bins: int, strategy: str) -> FloatArray:
    """Bin edges exactly as ``sklearn.calibration.calibration_curve`` computes them."""
    if strategy == "quantile":
        return np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
    return np.linspace(0.0, 1.0, n_bins + 1)


def plot_calibration(
    y_true: ArrayLike,
    p_pred: ArrayLike,
    n_bins: int = 10,
    ax: Axes | None = None,
    label: str = "model",
    baseline: Baseline | None = None,
    strategy: str = "uniform",
) -> Axes:
    """Reliability diagram: observed churn rate against mean predicted probability per bin.

    The curve is ``sklearn.calibration.calibration_curve(y_true, p_pred, n_bins=n_bins,
    strategy=strategy)`` (``"uniform"``: equal-width bins on [0, 1]; ``"quantile"``: bins of
    equal size); empty bins are left out, so fewer rows than bins simply give fewer points.
    The dashed diagonal is perfect calibration. Faint bars on a twin y axis (right) show how
    many customers fall in each bin of the model's predictions.

    Args:
        y_true: 0/1 outcome per customer (1 = churned). A single class is allowed (the title
            says so).
        p_pred: predicted probability per customer, in [0, 1].
        n_bins: number of bins.
        ax: axis to draw on; a new figure when None.
        label: legend label of the model curve.
        baseline: optional ``(p_baseline, label)`` drawn as a second curve.
        strategy: ``"uniform"`` or ``"quantile"``.

    Returns:
        The axis with the curves (the bin-count bars live on its twin).
    """
    from sklearn.calibration import calibration_curve

    n_bins = _positive_int(n_bins, "n_bins")
    if strategy not in ("uniform", "quantile"):
        raise ValueError(f'strategy must be "uniform" or "quantile", got {strategy!r}')
    y = _binary(y_true, "y_true")
    p = _probabilities(p_pred, "p_pred", y, "y_true")
    base = _baseline(baseline, y, "y_true")
    if base is not None:
        base = (_probabilities(base[0], "baseline", y, "y_true"), base[1])

    ax = _new_ax(ax)

    # bin counts of the model's predictions, as faint bars behind the curves
    edges = _calibration_bins(p, n_bins, strategy)
    bin_ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(bin_ids, minlength=len(edges) - 1)
    twin = ax.twinx()
    twin.bar(
        edges[:-1],
        counts,
        width=np.diff(edges),
        align="edge",
        color=MODEL_COLOR,
        alpha=0.15,
        edgecolor="none",
        label=f"{label}: customers per bin",
    )
    twin.set_ylim(0, max(int(counts.max()), 1) * 3.5)  # keep the bars in the lower part
    twin.set_ylabel("customers per bin", color="0.4")
    twin.tick_params(axis="y", colors="0.4")
    ax.set_zorder(twin.get_zorder() + 1)  # curves above the bars
    ax.patch.set_visible(False)

    ax.plot([0, 1], [0, 1], linestyle="--", color=REFERENCE_COLOR, label="perfectly calibrated")
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    ax.plot(prob_pred, prob_true, marker="o", color=MODEL_COLOR, label=label)
    if base is not None:
        b_true, b_pred = calibration_curve(y, base[0], n_bins=n_bins, strategy=strategy)
        ax.plot(b_pred, b_true, marker="s", color=BASELINE_COLOR, label=base[1])

    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed fraction of positives")
    title = f"Calibration ({n_bins} {strategy} bins, n = {y.size:,})"
    if np.unique(y).size < 2:
        title += f"\nnote: all labels are {int(y[0])}"
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    return ax


def _gains_curve(y: FloatArray, score: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(share targeted, share of positives captured), from (0, 0) to (1, 1)."""
    order = _top_k_order(score)
    captured = np.concatenate([[0.0], np.cumsum(y[order])]) / y.sum()
    targeted = np.arange(y.size + 1, dtype=float) / y.size
    return targeted, captured


def plot_gains(
    y_true: ArrayLike,
    score: ArrayLike,
    ax: Axes | None = None,
    label: str = "model",
    baseline: Baseline | None = None,
) -> Axes:
    """Cumulative gains: share of all positives captured when targeting the top share by score.

    Customers are sorted by ``score`` descending (ties by input order); the curve runs from
    (0, 0) to (1, 1). The dashed diagonal is random targeting. The top-decile capture (the
    ``ceil(n / 10)`` highest scores, as in :func:`training.metrics.capture_top_decile`) is
    marked on the model curve. Without any positive the curves are undefined: only the random
    line is drawn and the title says so.

    Args:
        y_true: 0/1 outcome per customer (1 = churned).
        score: ranking score per customer (higher = target first), e.g. churn probability.
        ax: axis to draw on; a new figure when None.
        label: legend label of the model curve.
        baseline: optional ``(score_baseline, label)`` drawn as a second curve.

    Returns:
        The axis drawn on.
    """
    y = _binary(y_true, "y_true")
    s = _as_1d(score, "score")
    _same_length(s, "score", y, "y_true")
    base = _baseline(baseline, y, "y_true")

    ax = _new_ax(ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color=REFERENCE_COLOR, label="random")
    title = f"Cumulative gains (n = {y.size:,}, positives = {int(y.sum()):,})"
    if y.sum() == 0:
        title += "\nnote: no positives in y_true, gains are undefined"
    else:
        x, g = _gains_curve(y, s)
        ax.plot(x, g, color=MODEL_COLOR, label=label)
        if base is not None:
            bx, bg = _gains_curve(y, base[0])
            ax.plot(bx, bg, color=BASELINE_COLOR, label=base[1])
        k = -(-y.size // 10)  # ceil(n / 10)
        capture = float(g[k])
        ax.axvline(x[k], color=REFERENCE_COLOR, linestyle=":", linewidth=1)
        ax.annotate(
            f"top {x[k]:.0%}: {capture:.0%} of positives",
            xy=(x[k], capture),
            xytext=(x[k] + 0.08, max(capture - 0.18, 0.05)),
            arrowprops={"arrowstyle": "->", "color": "0.3"},
            fontsize="small",
        )
        ax.plot([x[k]], [capture], marker="o", color=MODEL_COLOR, linestyle="none")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("share of customers targeted (highest score first)")
    ax.set_ylabel("share of positives captured")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return ax


# --------------------------------------------------------------------------------------------
# value model
# --------------------------------------------------------------------------------------------


def _decile_means(
    actual: FloatArray, predicted: FloatArray, n_groups: int
) -> tuple[FloatArray, FloatArray]:
    """Mean actual and mean predicted per group of the stable ascending sort of ``predicted``."""
    order = np.argsort(predicted, kind="stable")
    groups = np.array_split(order, n_groups)
    mean_actual = np.array([actual[g].mean() for g in groups])
    mean_pred = np.array([predicted[g].mean() for g in groups])
    return mean_actual, mean_pred


def plot_decile_value(
    actual: ArrayLike,
    predicted: ArrayLike,
    ax: Axes | None = None,
    baseline: Baseline | None = None,
    label: str = "model",
) -> Axes:
    """Mean actual (bars) and mean predicted (line) value per decile of predicted value.

    Customers are sorted by ``predicted`` ascending and split into 10 groups of equal size
    (as in :func:`training.metrics.decile_mape`; fewer rows than 10 give one group per row).
    With a ``baseline``, the baseline's own deciles are drawn beside the model's: a second set
    of bars (its groups' mean actual) and a second line (its mean prediction).

    Args:
        actual: realised value per customer (e.g. future net spend; negatives allowed).
        predicted: predicted value per customer.
        ax: axis to draw on; a new figure when None.
        baseline: optional ``(predicted_baseline, label)``.
        label: legend label of the model series.

    Returns:
        The axis drawn on.
    """
    a = _as_1d(actual, "actual")
    s = _as_1d(predicted, "predicted")
    _same_length(s, "predicted", a, "actual")
    base = _baseline(baseline, a, "actual")
    n_groups = min(10, a.size)

    ax = _new_ax(ax)
    x = np.arange(1, n_groups + 1)
    series: list[tuple[FloatArray, str, str, str]] = [(s, label, MODEL_COLOR, "o")]
    if base is not None:
        series.append((base[0], base[1], BASELINE_COLOR, "s"))
    width = 0.8 / len(series)
    for i, (pred, name, color, marker) in enumerate(series):
        mean_actual, mean_pred = _decile_means(a, pred, n_groups)
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(
            x + offset,
            mean_actual,
            width=width,
            color=color,
            alpha=0.35,
            label=f"actual (by {name} decile)",
        )
        ax.plot(
            x + offset,
            mean_pred,
            marker=marker,
            color=color,
            label=f"predicted ({name})",
        )
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xticks(x)
    group_word = "decile" if n_groups == 10 else "group"
    ax.set_xlabel(f"{group_word} of predicted value (1 = lowest)")
    ax.set_ylabel("mean value per customer")
    ax.set_title(f"Predicted vs actual value by {group_word} (n = {a.size:,})")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left")
    return ax


# --------------------------------------------------------------------------------------------
# explanations
# --------------------------------------------------------------------------------------------


def plot_feature_importance(
    names: Sequence[str],
    importances: ArrayLike,
    ax: Axes | None = None,
    top: int = 20,
    kind: str = "gain",
) -> Axes:
    """Horizontal bars of the ``top`` largest importances, the largest at the top.

    Ties keep input order. ``kind`` names the importance type in the axis label (LightGBM's
    ``importance_type``: ``"gain"`` or ``"split"``).

    Args:
        names: feature names.
        importances: one importance per name (e.g. ``booster.feature_importance("gain")``).
        ax: axis to draw on; a new figure (height growing with ``top``) when None.
        top: number of features shown.
        kind: importance type, for the label.

    Returns:
        The axis drawn on.
    """
    top = _positive_int(top, "top")
    imp = _as_1d(importances, "importances")
    labels = [str(n) for n in names]
    if len(labels) != imp.size:
        raise ValueError(
            f"length mismatch: names has {len(labels)} values, importances has {imp.size}"
        )
    order = _top_k_order(imp)[:top]
    shown = order[::-1]  # barh draws bottom-up: largest last = at the top

    ax = _new_ax(ax, figsize=(6.4, max(2.5, 0.3 * order.size + 1.2)))
    bars = ax.barh(np.arange(order.size), imp[shown], color=MODEL_COLOR)
    ax.set_yticks(np.arange(order.size), [labels[i] for i in shown])
    ax.bar_label(bars, labels=[_short_number(v) for v in imp[shown]], padding=2, fontsize="small")
    ax.margins(x=0.12)
    ax.set_xlabel(f"importance ({kind})")
    ax.set_title(f"Feature importance, top {order.size} of {imp.size}")
    ax.grid(True, axis="x", alpha=0.3)
    return ax


def _short_number(value: float) -> str:
    """1234567 -> '1,234,567'; 0.01234 -> '0.0123' (3 significant digits below 1000)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _feature_frame(features: Any) -> pd.DataFrame:
    if isinstance(features, pd.DataFrame):
        return features
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError("features must be a DataFrame or a 2-D array (rows x features)")
    return pd.DataFrame(arr, columns=[f"feature_{i}" for i in range(arr.shape[1])])


def _numeric_values(column: pd.Series) -> FloatArray:
    """Feature values as floats for colouring: category codes, booleans as 0/1, else NaN."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy(dtype=float)
        codes[codes < 0] = np.nan
        return codes
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.astype(float).to_numpy(dtype=float)
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _normalize(values: FloatArray) -> FloatArray:
    """Scale to [0, 1] between the 5th and 95th percentiles (clipped; robust to heavy tails),
    falling back to min/max; constant columns map to 0.5; NaN stays NaN."""
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    if not finite.any():
        return out
    v = values[finite]
    lo, hi = np.percentile(v, [5, 95])
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    out[finite] = 0.5 if hi <= lo else np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    return out


def _swarm_offsets(x: FloatArray, rng: np.random.Generator, width: float = 0.4) -> FloatArray:
    """Vertical jitter whose spread grows with the local density of ``x`` (a violin shape)."""
    if x.size == 0:
        return np.zeros(0)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        density = np.ones(x.size)
    else:
        n_bins = 50
        ids = np.minimum(((x - lo) / (hi - lo) * n_bins).astype(int), n_bins - 1)
        counts = np.bincount(ids, minlength=n_bins)
        density = np.sqrt(counts[ids] / counts.max())
    return rng.uniform(-1.0, 1.0, x.size) * width * density


def plot_shap_summary(
    contributions: ArrayLike,
    features: pd.DataFrame | ArrayLike,
    ax: Axes | None = None,
    top: int = 15,
    max_points: int = 10_000,
) -> Axes:
    """Beeswarm-like summary of per-customer feature contributions (SHAP values).

    ``contributions`` is LightGBM's ``booster.predict(X, pred_contrib=True)``: rows x
    (features + 1), the last column the bias (expected value), which is dropped. Features are
    ranked by mean |contribution|; the ``top`` ones are drawn top-down, each as a jittered
    scatter of its contribution (x) coloured by the feature's own value scaled to [0, 1]
    (low = blue, high = red; between its 5th and 95th percentiles, clipped), missing or
    non-numeric values in grey. Category columns colour by their code. More rows than
    ``max_points`` are subsampled (same rows for every feature). Jitter and subsample use a
    fixed seed, so the picture is deterministic. The ``shap`` package is not needed.

    Args:
        contributions: (n_rows, n_features + 1) matrix from ``pred_contrib=True``.
        features: the feature matrix the contributions were computed on, (n_rows,
            n_features); a DataFrame gives the feature names.
        ax: axis to draw on; a new figure (height growing with ``top``) when None. A colorbar
            is added beside it.
        top: number of features shown.
        max_points: largest number of rows drawn.

    Returns:
        The axis with the scatter (the colorbar is a separate axis of the same figure).
    """
    import matplotlib as mpl

    top = _positive_int(top, "top")
    max_points = _positive_int(max_points, "max_points")
    try:
        contrib = np.asarray(contributions, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError("contributions must be numeric") from exc
    if contrib.ndim != 2:
        raise ValueError("contributions must be 2-D: rows x (features + 1), bias last")
    if contrib.shape[0] == 0:
        raise ValueError("empty input: contributions has no rows")
    if contrib.shape[1] < 2:
        raise ValueError("contributions needs at least one feature column before the bias")
    if not np.isfinite(contrib).all():
        raise ValueError("contributions contains NaN or infinite values")
    frame = _feature_frame(features)
    if frame.shape != (contrib.shape[0], contrib.shape[1] - 1):
        raise ValueError(
            f"shape mismatch: contributions is {contrib.shape} (bias last), so features must be "
            f"{(contrib.shape[0], contrib.shape[1] - 1)}, got {frame.shape}"
        )
    contrib = contrib[:, :-1]

    rng = np.random.default_rng(SEED)
    rows = np.arange(contrib.shape[0])
    if rows.size > max_points:
        rows = np.sort(rng.choice(rows.size, size=max_points, replace=False))
    order = _top_k_order(np.abs(contrib).mean(axis=0))[:top]

    ax = _new_ax(ax, figsize=(7.2, max(2.5, 0.4 * order.size + 1.4)))
    cmap = mpl.colormaps["coolwarm"]
    for rank, j in enumerate(order):
        y0 = order.size - 1 - rank  # most important at the top
        x = contrib[rows, j]
        colour_values = _normalize(_numeric_values(frame.iloc[rows, j]))
        y = y0 + _swarm_offsets(x, rng)
        missing = np.isnan(colour_values)
        if missing.any():
            ax.scatter(x[missing], y[missing], s=8, color=NAN_COLOR, linewidths=0, alpha=0.8)
        ax.scatter(
            x[~missing],
            y[~missing],
            s=8,
            c=colour_values[~missing],
            cmap=cmap,
            vmin=0.0,
            vmax=1.0,
            linewidths=0,
            alpha=0.8,
        )
    ax.axvline(0, color="0.4", linewidth=0.8, zorder=0)
    ax.set_yticks(np.arange(order.size), [str(frame.columns[j]) for j in order[::-1]])
    ax.set_ylim(-0.7, order.size - 0.3)
    ax.set_xlabel("contribution to the raw prediction (SHAP value)")
    ax.set_title(
        f"Feature contributions, top {order.size} of {contrib.shape[1]} "
        f"(n = {rows.size:,}{' sampled' if rows.size < contrib.shape[0] else ''})"
    )
    ax.grid(True, axis="x", alpha=0.3)

    mappable = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0.0, 1.0), cmap=cmap)
    fig = ax.get_figure(root=False)
    cbar = fig.colorbar(mappable, ax=ax, ticks=[0.0, 1.0], aspect=30, pad=0.02)
    cbar.ax.set_yticklabels(["low", "high"])
    cbar.set_label("feature value (grey = missing)")
    return ax


# --------------------------------------------------------------------------------------------
# marketing
# --------------------------------------------------------------------------------------------


def plot_segments(
    summary_df: pd.DataFrame,
    ax: Axes | None = None,
    value_col: str | None = "value_at_risk",
) -> Axes:
    """Segment sizes (bars) with total value at risk as a second series, for marketing.

    ``summary_df`` has one row per segment: the name in a ``segment`` column (or an index
    named ``segment``, as :func:`features.segments.segment_summary` returns), ``customers``,
    and optionally ``value_col`` (falling back to ``total_<value_col>``, segment_summary's
    name) and ``mean_churn_probability``. Segments keep the row order, drawn top-down.
    Customer counts are labelled on their bars, with the mean churn probability when present;
    value at risk is drawn as bars on a second x axis (top).

    Args:
        summary_df: per-segment summary.
        ax: axis to draw on; a new figure when None.
        value_col: value column of the second series; None (or absent) draws sizes only.

    Returns:
        The axis with the customer bars (the value bars live on its twin).
    """
    from matplotlib.ticker import StrMethodFormatter

    if not isinstance(summary_df, pd.DataFrame):
        raise ValueError("summary_df must be a pandas DataFrame")
    if summary_df.empty:
        raise ValueError("empty input: summary_df has no rows")
    df = summary_df
    if "segment" not in df.columns:
        if df.index.name != "segment":
            raise ValueError("summary_df needs a 'segment' column (or an index named 'segment')")
        df = df.reset_index()
    if "customers" not in df.columns:
        raise ValueError("summary_df needs a 'customers' column")
    customers = _as_1d(df["customers"], "customers")
    if (customers < 0).any():
        raise ValueError("customers must not be negative")
    names = df["segment"].astype(str).tolist()

    value_name = None
    if value_col is not None:
        for candidate in (value_col, f"total_{value_col}"):
            if candidate in df.columns:
                value_name = candidate
                break
    values = _as_1d(df[value_name], value_name) if value_name is not None else None
    churn = None
    if "mean_churn_probability" in df.columns:
        churn = pd.to_numeric(df["mean_churn_probability"], errors="coerce").to_numpy(float)

    ax = _new_ax(ax, figsize=(7.2, max(3.0, 0.45 * len(names) + 1.4)))
    y = np.arange(len(names))[::-1]  # first row at the top
    height = 0.4 if values is not None else 0.7
    offset = height / 2 if values is not None else 0.0
    bars = ax.barh(y + offset, customers, height=height, color=MODEL_COLOR, label="customers")
    bar_text = [f"{int(c):,}" for c in customers]
    if churn is not None:
        bar_text = [
            t if np.isnan(c) else f"{t} · churn {c:.0%}"
            for t, c in zip(bar_text, churn, strict=True)
        ]
    ax.bar_label(bars, labels=bar_text, padding=2, fontsize="small")
    ax.set_yticks(y, names)
    ax.set_xlabel("customers", color=MODEL_COLOR)
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.margins(x=0.3)
    ax.set_xlim(left=0)
    ax.grid(True, axis="x", alpha=0.3)
    handles, legend_labels = ax.get_legend_handles_labels()

    if values is not None:
        twin = ax.twiny()
        value_bars = twin.barh(
            y - offset,
            values,
            height=height,
            color=BASELINE_COLOR,
            label=value_name.replace("_", " "),
        )
        twin.bar_label(value_bars, fmt="{:,.0f}", padding=2, fontsize="small")
        twin.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        twin.set_xlabel(value_name.replace("_", " "), color=BASELINE_COLOR)
        twin.margins(x=0.3)
        if (values >= 0).all():
            twin.set_xlim(left=0)
        h2, l2 = twin.get_legend_handles_labels()
        handles, legend_labels = handles + h2, legend_labels + l2
        ax.set_title(f"Segments: size and {value_name.replace('_', ' ')}")
    else:
        ax.set_title("Segments: size")
    # below the axes: inside, the twin's bars would cover it
    ax.legend(
        handles,
        legend_labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncols=len(handles),
        frameon=False,
    )
    return ax


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def figure_to_png(fig_or_ax: Figure | SubFigure | Axes, dpi: int = 100) -> bytes:
    """The whole figure holding ``fig_or_ax`` as PNG bytes (tight bounding box)."""
    fig = _root_figure(fig_or_ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def save_figure(
    fig_or_ax: Figure | SubFigure | Axes, path: str | os.PathLike[str], dpi: int = 100
) -> Path:
    """Write the figure to ``path`` atomically; the format follows the suffix (png, svg, pdf...).

    The image is written to a temporary file in the same folder, then moved over ``path``
    with ``os.replace``, so a reader never sees a half-written file. The folder must exist.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    fig = _root_figure(fig_or_ax)
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format=fmt, dpi=dpi, bbox_inches="tight")
        # mkstemp makes the file private (0600); keep an existing file's mode, else 0644
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
