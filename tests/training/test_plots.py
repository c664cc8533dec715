"""Tests for training.plots: each plot returns its axis, draws the expected artists, accepts a
given axis, and rejects bad input with a ValueError naming the argument."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # tests only: the package itself never picks a backend

import os  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402

from training import plots  # noqa: E402
from training.metrics import capture_top_decile  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def churn() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1000 customers: labels, an informative score and a weaker baseline score."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=1000)
    y = (rng.random(1000) < 1 / (1 + np.exp(-2 * x))).astype(int)
    p = 1 / (1 + np.exp(-2 * x))
    p_base = 1 / (1 + np.exp(-(0.7 * x + rng.normal(scale=1.0, size=1000))))
    return y, p, p_base


@pytest.fixture(scope="module")
def value() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    predicted = rng.gamma(2.0, 50.0, size=1000)
    actual = predicted * rng.gamma(1.0, 1.0, size=1000) - 5.0
    return actual, predicted


def _lines(ax: Axes, label: str) -> list:
    return [line for line in ax.get_lines() if line.get_label() == label]


def _bars(ax: Axes) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _new_ax() -> Axes:
    _, ax = plt.subplots()
    return ax


# -- calibration ------------------------------------------------------------------------------


def test_calibration_curve_matches_sklearn(churn):
    y, p, _ = churn
    ax = plots.plot_calibration(y, p, n_bins=8)
    assert isinstance(ax, Axes)
    (curve,) = _lines(ax, "model")
    prob_true, prob_pred = calibration_curve(y, p, n_bins=8)
    np.testing.assert_allclose(curve.get_xdata(), prob_pred)
    np.testing.assert_allclose(curve.get_ydata(), prob_true)
    (diagonal,) = _lines(ax, "perfectly calibrated")
    np.testing.assert_allclose(diagonal.get_xydata(), [[0, 0], [1, 1]])
    assert len(ax.get_lines()) == 2
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    assert ax.get_legend() is not None


def test_calibration_bin_counts_on_twin_axis(churn):
    y, p, _ = churn
    ax = plots.plot_calibration(y, p, n_bins=10)
    (twin,) = [other for other in ax.figure.axes if other is not ax]
    heights = [bar.get_height() for bar in _bars(twin)]
    assert len(heights) == 10
    assert sum(heights) == len(y)
    expected = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
    np.testing.assert_array_equal(heights, expected)


def test_calibration_baseline_and_quantile_strategy(churn):
    y, p, p_base = churn
    ax = plots.plot_calibration(y, p, baseline=(p_base, "BG/NBD"), strategy="quantile", n_bins=5)
    (base,) = _lines(ax, "BG/NBD")
    b_true, b_pred = calibration_curve(y, p_base, n_bins=5, strategy="quantile")
    np.testing.assert_allclose(base.get_xdata(), b_pred)
    np.testing.assert_allclose(base.get_ydata(), b_true)
    assert len(ax.get_lines()) == 3
    legend_texts = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"model", "BG/NBD"} <= legend_texts


def test_calibration_accepts_given_ax(churn):
    y, p, _ = churn
    ax = _new_ax()
    assert plots.plot_calibration(y, p, ax=ax) is ax


def test_calibration_single_class_still_draws():
    ax = plots.plot_calibration(np.zeros(20), np.linspace(0, 1, 20))
    (curve,) = _lines(ax, "model")
    assert np.all(curve.get_ydata() == 0)
    assert "all labels are 0" in ax.get_title()


def test_calibration_fewer_rows_than_bins():
    ax = plots.plot_calibration([0, 1, 1], [0.2, 0.5, 0.9], n_bins=10)
    (curve,) = _lines(ax, "model")
    assert len(curve.get_xdata()) == 3


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([], [], "y_true"),
        ([0, 1], [0.1, np.nan], "p_pred"),
        ([0, np.nan], [0.1, 0.2], "y_true"),
        ([0, 1], [0.1], "length mismatch"),
        ([0, 2], [0.1, 0.2], "y_true"),
        ([0, 1], [0.1, 1.2], "p_pred"),
    ],
)
def test_calibration_rejects_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_calibration(y, p)


def test_calibration_rejects_bad_baseline_and_bins(churn):
    y, p, _ = churn
    with pytest.raises(ValueError, match="baseline"):
        plots.plot_calibration(y, p, baseline=(np.full(len(y), np.nan), "BG/NBD"))
    with pytest.raises(ValueError, match="baseline"):
        plots.plot_calibration(y, p, baseline=p)  # not a (values, label) pair
    with pytest.raises(ValueError, match="n_bins"):
        plots.plot_calibration(y, p, n_bins=0)
    with pytest.raises(ValueError, match="strategy"):
        plots.plot_calibration(y, p, strategy="kmeans")


# -- gains ------------------------------------------------------------------------------------


def test_gains_curve_shape_and_top_decile(churn):
    y, p, _ = churn
    ax = plots.plot_gains(y, p)
    assert isinstance(ax, Axes)
    (curve,) = _lines(ax, "model")
    xy = curve.get_xydata()
    np.testing.assert_allclose(xy[0], [0, 0])
    np.testing.assert_allclose(xy[-1], [1, 1])
    assert len(xy) == len(y) + 1
    assert np.all(np.diff(xy[:, 1]) >= 0)
    (random_line,) = _lines(ax, "random")
    np.testing.assert_allclose(random_line.get_xydata(), [[0, 0], [1, 1]])
    # the annotation states the same capture as training.metrics
    capture = capture_top_decile(y, p)
    np.testing.assert_allclose(xy[100, 1], capture)
    texts = [t.get_text() for t in ax.texts]
    assert any(f"{capture:.0%}" in t and "top 10%" in t for t in texts)


def test_gains_baseline_and_given_ax(churn):
    y, p, p_base = churn
    ax = _new_ax()
    assert plots.plot_gains(y, p, ax=ax, baseline=(p_base, "BG/NBD"), label="lgbm") is ax
    (base,) = _lines(ax, "BG/NBD")
    np.testing.assert_allclose(base.get_xydata()[-1], [1, 1])
    assert _lines(ax, "lgbm")
    # the informative model captures more in its top decile than the weaker baseline
    assert _lines(ax, "lgbm")[0].get_ydata()[100] > base.get_ydata()[100]


def test_gains_no_positives_notes_it_in_title():
    ax = plots.plot_gains(np.zeros(10), np.linspace(0, 1, 10))
    assert "no positives" in ax.get_title()
    assert not _lines(ax, "model")
    assert _lines(ax, "random")


def test_gains_perfect_score_reaches_one_at_positive_share():
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    ax = plots.plot_gains(y, y.astype(float))
    (curve,) = _lines(ax, "model")
    np.testing.assert_allclose(curve.get_ydata()[2], 1.0)


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([], [], "y_true"),
        ([0, 1], [np.nan, 0.3], "score"),
        ([0, 1, 1], [0.1, 0.2], "length mismatch"),
    ],
)
def test_gains_rejects_bad_input(y, s, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_gains(y, s)


# -- decile value -----------------------------------------------------------------------------


def test_decile_value_bars_and_line(value):
    actual, predicted = value
    ax = plots.plot_decile_value(actual, predicted)
    assert isinstance(ax, Axes)
    bars = _bars(ax)
    assert len(bars) == 10
    order = np.argsort(predicted, kind="stable")
    groups = np.array_split(order, 10)
    np.testing.assert_allclose([b.get_height() for b in bars], [actual[g].mean() for g in groups])
    (line,) = _lines(ax, "predicted (model)")
    np.testing.assert_allclose(line.get_ydata(), [predicted[g].mean() for g in groups])
    assert np.all(np.diff(line.get_ydata()) >= 0)
    assert ax.get_legend() is not None


def test_decile_value_baseline_uses_its_own_deciles(value):
    actual, predicted = value
    rng = np.random.default_rng(3)
    base = predicted * rng.uniform(0.5, 1.5, size=predicted.size)
    ax = _new_ax()
    assert plots.plot_decile_value(actual, predicted, ax=ax, baseline=(base, "BG/NBD")) is ax
    assert len(_bars(ax)) == 20
    (line,) = _lines(ax, "predicted (BG/NBD)")
    groups = np.array_split(np.argsort(base, kind="stable"), 10)
    np.testing.assert_allclose(line.get_ydata(), [base[g].mean() for g in groups])


def test_decile_value_fewer_rows_than_deciles():
    ax = plots.plot_decile_value([1.0, 2.0, 3.0], [1.5, 2.5, 0.5])
    assert len(_bars(ax)) == 3
    assert "group" in ax.get_xlabel()


@pytest.mark.parametrize(
    ("a", "s", "match"),
    [
        ([], [], "actual"),
        ([1.0, 2.0], [1.0, np.nan], "predicted"),
        ([1.0, np.inf], [1.0, 2.0], "actual"),
        ([1.0, 2.0], [1.0], "length mismatch"),
    ],
)
def test_decile_value_rejects_bad_input(a, s, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_decile_value(a, s)


# -- feature importance -----------------------------------------------------------------------


def test_feature_importance_sorted_largest_on_top():
    names = [f"f{i}" for i in range(30)]
    importances = np.random.default_rng(5).uniform(0, 100, size=30)
    ax = plots.plot_feature_importance(names, importances, top=12, kind="split")
    assert isinstance(ax, Axes)
    bars = _bars(ax)
    assert len(bars) == 12
    top_down = sorted(bars, key=lambda b: -b.get_y())  # visual order, top first
    widths = [b.get_width() for b in top_down]
    assert widths == sorted(widths, reverse=True)
    np.testing.assert_allclose(widths, np.sort(importances)[::-1][:12])
    tick_labels = [t.get_text() for t in ax.get_yticklabels()][::-1]  # top first
    assert tick_labels == [names[i] for i in np.argsort(-importances)[:12]]
    assert "split" in ax.get_xlabel()


def test_feature_importance_top_larger_than_features_and_given_ax():
    ax = _new_ax()
    assert plots.plot_feature_importance(["a", "b"], [1.0, 3.0], ax=ax) is ax
    assert len(_bars(ax)) == 2
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]  # b (largest) on top


def test_feature_importance_rejects_bad_input():
    with pytest.raises(ValueError, match="importances"):
        plots.plot_feature_importance([], [])
    with pytest.raises(ValueError, match="importances"):
        plots.plot_feature_importance(["a", "b"], [1.0, np.nan])
    with pytest.raises(ValueError, match="length mismatch"):
        plots.plot_feature_importance(["a"], [1.0, 2.0])
    with pytest.raises(ValueError, match="top"):
        plots.plot_feature_importance(["a"], [1.0], top=0)


# -- SHAP summary -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contributions() -> tuple[np.ndarray, pd.DataFrame]:
    """LightGBM pred_contrib on a small model: 300 rows x (4 features + bias)."""
    import lightgbm as lgb

    rng = np.random.default_rng(2)
    features = pd.DataFrame(
        {
            "recency": rng.exponential(50, 300),
            "frequency": rng.poisson(3, 300).astype(float),
            "noise": rng.normal(size=300),
            "channel": pd.Categorical(rng.choice(["web", "store"], 300)),
        }
    )
    features.loc[:20, "frequency"] = np.nan
    y = (features["recency"] > 50).astype(int)
    model = lgb.LGBMClassifier(n_estimators=10, min_child_samples=5, verbose=-1)
    model.fit(features, y)
    contrib = model.booster_.predict(features, pred_contrib=True)
    return np.asarray(contrib), features


def test_shap_summary_draws_one_swarm_per_feature(contributions):
    contrib, features = contributions
    ax = plots.plot_shap_summary(contrib, features, top=3)
    assert isinstance(ax, Axes)
    labels = [t.get_text() for t in ax.get_yticklabels()][::-1]  # top first
    ranking = np.argsort(-np.abs(contrib[:, :-1]).mean(axis=0), kind="stable")[:3]
    assert labels == [features.columns[j] for j in ranking]
    assert labels[0] == "recency"
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in scatters) == 3 * len(features)
    # x positions are the contributions (bias column dropped)
    xs = np.sort(np.concatenate([np.asarray(c.get_offsets())[:, 0] for c in scatters]))
    np.testing.assert_allclose(xs, np.sort(contrib[:, ranking].ravel()))
    colorbars = [other for other in ax.figure.axes if other is not ax]
    assert len(colorbars) == 1
    assert [t.get_text() for t in colorbars[0].get_yticklabels()] == ["low", "high"]


def test_shap_summary_missing_values_grey_and_deterministic(contributions):
    contrib, features = contributions
    first = plots.plot_shap_summary(contrib, features).collections
    second = plots.plot_shap_summary(contrib, features).collections
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.get_offsets(), b.get_offsets())  # same jitter
        np.testing.assert_array_equal(a.get_facecolors(), b.get_facecolors())
    ax = plots.plot_shap_summary(contrib, features)
    grey = [
        c
        for c in ax.collections
        if isinstance(c, PathCollection) and c.get_array() is None and len(c.get_offsets())
    ]
    assert sum(len(c.get_offsets()) for c in grey) == 21  # rows 0..20 of frequency


def test_shap_summary_array_features_given_ax_and_subsample(contributions):
    contrib, features = contributions
    ax = _new_ax()
    numeric = features[["recency", "frequency", "noise"]].to_numpy()
    out = plots.plot_shap_summary(contrib[:, [0, 1, 2, 4]], numeric, ax=ax, max_points=50)
    assert out is ax
    assert "feature_0" in [t.get_text() for t in ax.get_yticklabels()]
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in scatters) == 3 * 50


def test_shap_summary_rejects_bad_input(contributions):
    contrib, features = contributions
    with pytest.raises(ValueError, match="shape mismatch"):
        plots.plot_shap_summary(contrib[:, :-1], features)  # bias already dropped
    with pytest.raises(ValueError, match="contributions"):
        bad = contrib.copy()
        bad[0, 0] = np.nan
        plots.plot_shap_summary(bad, features)
    with pytest.raises(ValueError, match="empty"):
        plots.plot_shap_summary(np.zeros((0, 5)), features.iloc[:0])
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_shap_summary(contrib[:, 0], features)


# -- segments ---------------------------------------------------------------------------------


def _summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "segment": ["Champions", "At Risk", "Lost"],
            "customers": [120, 45, 300],
            "value_at_risk": [5000.0, 12000.0, 800.0],
            "mean_churn_probability": [0.05, 0.6, 0.9],
        }
    )


def test_segments_sizes_and_value():
    ax = plots.plot_segments(_summary())
    assert isinstance(ax, Axes)
    widths = [b.get_width() for b in _bars(ax)]
    assert widths == [120, 45, 300]
    ticks = dict(zip([t.get_text() for t in ax.get_yticklabels()], ax.get_yticks(), strict=True))
    assert ticks["Champions"] > ticks["At Risk"] > ticks["Lost"]  # row order, top-down
    (twin,) = [other for other in ax.figure.axes if other is not ax]
    assert [b.get_width() for b in _bars(twin)] == [5000.0, 12000.0, 800.0]
    texts = [t.get_text() for t in ax.texts]
    assert "45 · churn 60%" in texts
    legend_texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend_texts == ["customers", "value at risk"]


def test_segments_accepts_segment_summary_layout_and_given_ax():
    # features.segments.segment_summary: index "segment", column total_value_at_risk
    summary = (
        _summary().set_index("segment").rename(columns={"value_at_risk": "total_value_at_risk"})
    )
    ax = _new_ax()
    assert plots.plot_segments(summary, ax=ax) is ax
    (twin,) = [other for other in ax.figure.axes if other is not ax]
    assert [b.get_width() for b in _bars(twin)] == [5000.0, 12000.0, 800.0]


def test_segments_sizes_only():
    ax = plots.plot_segments(_summary()[["segment", "customers"]])
    assert len(ax.figure.axes) == 1
    assert len(_bars(ax)) == 3
    ax = plots.plot_segments(_summary(), value_col=None)
    assert len(ax.figure.axes) == 1


def test_segments_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        plots.plot_segments(_summary().iloc[:0])
    with pytest.raises(ValueError, match="segment"):
        plots.plot_segments(_summary().drop(columns="segment"))
    with pytest.raises(ValueError, match="customers"):
        plots.plot_segments(_summary().drop(columns="customers"))
    bad = _summary()
    bad.loc[0, "value_at_risk"] = np.nan
    with pytest.raises(ValueError, match="value_at_risk"):
        plots.plot_segments(bad)


# -- output -----------------------------------------------------------------------------------


def test_figure_to_png_from_axis_or_figure(churn):
    y, p, _ = churn
    ax = plots.plot_gains(y, p)
    from_ax = plots.figure_to_png(ax, dpi=20)
    assert from_ax.startswith(PNG_MAGIC)
    assert plots.figure_to_png(ax.figure, dpi=20) == from_ax
    with pytest.raises(TypeError):
        plots.figure_to_png("not a figure")  # type: ignore[arg-type]


def test_save_figure_is_atomic_and_leaves_no_temp_file(tmp_path: Path, churn):
    y, p, _ = churn
    ax = plots.plot_calibration(y, p)
    target = tmp_path / "calibration.png"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    assert plots.save_figure(ax, target, dpi=20) == target
    assert target.read_bytes().startswith(PNG_MAGIC)
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.png"]
    svg = plots.save_figure(ax.figure, str(tmp_path / "calibration.svg"), dpi=20)
    assert svg.read_text().lstrip().startswith("<?xml")


def test_save_figure_cleans_up_on_failure(tmp_path: Path, churn):
    y, p, _ = churn
    ax = plots.plot_gains(y, p)
    with pytest.raises(ValueError):
        plots.save_figure(ax, tmp_path / "gains.notaformat", dpi=20)
    assert list(tmp_path.iterdir()) == []


def test_plotting_does_not_switch_backend(churn):
    y, p, _ = churn
    backend = matplotlib.get_backend()
    plots.plot_calibration(y, p)
    assert matplotlib.get_backend() == backend
