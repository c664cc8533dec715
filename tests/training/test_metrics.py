"""Metrics checked against small hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training import metrics as M

# A 4-customer churn example used by several tests.
Y4 = [0, 0, 1, 1]
P4 = [0.1, 0.4, 0.35, 0.8]


# --------------------------------------------------------------------------------------------
# churn metrics
# --------------------------------------------------------------------------------------------


def test_roc_auc_hand() -> None:
    # (positive, negative) pairs: (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, 0.1) win,
    # (0.8, 0.4) win -> 3 / 4
    assert M.roc_auc(Y4, P4) == pytest.approx(0.75)


def test_roc_auc_ties_count_half() -> None:
    # all scores equal: every pair is a tie worth 1/2 -> 0.5
    assert M.roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_pr_auc_hand() -> None:
    # ranked by p: 0.8 (1), 0.4 (0), 0.35 (1), 0.1 (0)
    # precision at each positive: 1/1 at rank 1, 2/3 at rank 3 -> AP = (1 + 2/3) / 2 = 5/6
    assert M.pr_auc(Y4, P4) == pytest.approx(5 / 6)


def test_pr_auc_tied_scores_are_one_threshold() -> None:
    # y [1, 1, 0, 0], p [0.9, 0.5, 0.5, 0.1]: thresholds 0.9 (P 1, R 1/2), 0.5 (the tied
    # pair enters together: P 2/3, R 1), 0.1 (R unchanged): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert M.pr_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(5 / 6)
    # a positive and a negative tied at the top: P 1/2 at R 1/2 and at R 1 -> AP = 1/2
    assert M.pr_auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.3]) == pytest.approx(0.5)


def test_brier_hand() -> None:
    # (0.1 - 0)^2 + (0.4 - 0)^2 + (0.35 - 1)^2 + (0.8 - 1)^2 = 0.01 + 0.16 + 0.4225 + 0.04
    # = 0.6325; / 4 = 0.158125
    assert M.brier(Y4, P4) == pytest.approx(0.158125)


def test_brier_single_class_is_fine() -> None:
    # (0.2^2 + 0.4^2) / 2 = (0.04 + 0.16) / 2 = 0.1
    assert M.brier([0, 0], [0.2, 0.4]) == pytest.approx(0.1)


def test_log_loss_hand() -> None:
    # -(ln(1 - 0.1) + ln(1 - 0.4) + ln(0.35) + ln(0.8)) / 4
    # = -(-0.10536 - 0.51083 - 1.04982 - 0.22314) / 4 = 1.88915 / 4 = 0.47229
    expected = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert expected == pytest.approx(0.47229, abs=1e-5)
    assert M.log_loss(Y4, P4) == pytest.approx(expected)


def test_log_loss_single_class_and_extremes_are_finite() -> None:
    # -(ln 0.5 + ln 0.5) / 2 = ln 2
    assert M.log_loss([1, 1], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert math.isfinite(M.log_loss([1, 0], [0.0, 1.0]))


def test_ece_hand_two_bins() -> None:
    # bins [0, 0.5) and [0.5, 1]
    # bin 0: p = 0.1, 0.4, 0.35 with y = 0, 0, 1: mean y = 1/3, mean p = 0.85/3
    #        gap = |1/3 - 0.85/3| = 0.15/3 = 0.05, weight 3/4 -> 0.0375
    # bin 1: p = 0.8 with y = 1: gap 0.2, weight 1/4 -> 0.05
    # ECE = 0.0875
    assert M.expected_calibration_error(Y4, P4, n_bins=2) == pytest.approx(0.0875)


def test_ece_hand_ten_bins() -> None:
    # 10 bins: each p alone in its bin (0.1 -> bin 1, 0.35 -> 3, 0.4 -> 4, 0.8 -> 8)
    # gaps 0.1, 0.4, 0.65, 0.2, each weight 1/4 -> 1.35 / 4 = 0.3375
    assert M.expected_calibration_error(Y4, P4) == pytest.approx(0.3375)


def test_ece_bin_edges() -> None:
    # p = 0.3 belongs to [0.3, 0.4), p = 1.0 to the last bin [0.9, 1.0]
    # bin 3: y = 0, p = 0.3 -> gap 0.3; bin 9: y = 1, p = 1.0 -> gap 0; ECE = 0.3 / 2 = 0.15
    assert M.expected_calibration_error([0, 1], [0.3, 1.0]) == pytest.approx(0.15)
    # perfectly calibrated within one bin: y mean 0.5, p mean 0.5 -> 0
    assert M.expected_calibration_error([0, 1], [0.5, 0.5]) == pytest.approx(0.0)


def test_lift_and_capture_top_decile_hand() -> None:
    # n = 20 -> top decile = ceil(20 / 10) = 2 customers: the ones with p = 0.95 and 0.9
    # their labels: 1 and 0 -> churn rate 1/2; overall 5 churners / 20 = 1/4
    # lift = (1/2) / (1/4) = 2; capture = 1 of 5 churners = 0.2
    y = [1, 0] + [1, 1, 1, 1] + [0] * 14
    p = [0.95, 0.9] + [0.5] * 4 + [0.1] * 14
    assert M.lift_top_decile(y, p) == pytest.approx(2.0)
    assert M.capture_top_decile(y, p) == pytest.approx(0.2)


def test_top_decile_size_is_ceil_and_ties_are_stable() -> None:
    # n = 30 -> top decile = 3 customers (not 4, as ceil(30 * 0.1) would give in floats)
    # all p equal -> the first three in input order: labels 1, 1, 1 of 6 churners
    # capture = 3 / 6 = 0.5; lift = (3/3) / (6/30) = 5
    y = [1, 1, 1, 0] + [1, 1, 1] + [0] * 23
    p = [0.5] * 30
    assert M.capture_top_decile(y, p) == pytest.approx(0.5)
    assert M.lift_top_decile(y, p) == pytest.approx(5.0)
    # n = 11 -> ceil(1.1) = 2
    assert M.capture_top_decile([1] * 11, [0.5] * 11) == pytest.approx(2 / 11)


def test_churn_metrics_keys_and_values() -> None:
    out = M.churn_metrics(Y4, P4)
    assert list(out) == [
        "roc_auc",
        "pr_auc",
        "brier",
        "log_loss",
        "ece",
        "lift_top_decile",
        "capture_top_decile",
    ]
    assert all(isinstance(v, float) for v in out.values())
    assert out["roc_auc"] == pytest.approx(0.75)
    # n = 4 -> top decile is 1 customer: p = 0.8 with y = 1
    # lift = 1 / (2/4) = 2; capture = 1/2
    assert out["lift_top_decile"] == pytest.approx(2.0)
    assert out["capture_top_decile"] == pytest.approx(0.5)


def test_churn_metrics_accept_pandas_and_booleans() -> None:
    y = pd.Series([False, False, True, True], index=[10, 11, 12, 13])
    p = pd.Series(P4, index=[3, 2, 1, 0])  # indexes are ignored: position matters
    assert M.roc_auc(y, p) == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------
# value metrics
# --------------------------------------------------------------------------------------------

A4 = [1.0, 2.0, 3.0, 4.0]
S4 = [0.1, 0.4, 0.3, 0.2]


def test_normalized_gini_hand() -> None:
    # sorted by predicted descending: actual [2, 3, 4, 1]; cumsum [2, 5, 9, 10], sum 26
    # gini = (26 / 10 - (4 + 1) / 2) / 4 = (2.6 - 2.5) / 4 = 0.025
    # perfect order [4, 3, 2, 1]: cumsum [4, 7, 9, 10], sum 30 -> (3.0 - 2.5) / 4 = 0.125
    # normalized = 0.025 / 0.125 = 0.2
    assert M.normalized_gini(A4, S4) == pytest.approx(0.2)
    assert M.normalized_gini(A4, A4) == pytest.approx(1.0)
    # reversed ranking: actual [1, 2, 3, 4] cumsum [1, 3, 6, 10] = 20 -> (2 - 2.5) / 4 = -0.125
    assert M.normalized_gini(A4, [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_normalized_gini_ties_are_stable() -> None:
    # ties kept in input order: sorted by predicted descending, actual [3, 4, 1, 2];
    # cumsum [3, 7, 8, 10] = 28 -> (2.8 - 2.5) / 4 = 0.075; / 0.125 = 0.6
    assert M.normalized_gini(A4, [1, 1, 2, 2]) == pytest.approx(0.6)
    # and the same call twice gives the same answer
    assert M.normalized_gini(A4, [1, 1, 2, 2]) == M.normalized_gini(A4, [1, 1, 2, 2])


def test_normalized_gini_of_a_constant_prediction_is_undefined() -> None:
    """Under the tie rule a constant prediction would score the input order's Gini (-1 for
    A4 as given, +1 reversed): a number that measures the row order, not the model."""
    for actual in (A4, A4[::-1]):
        with pytest.raises(M.UndefinedMetricError, match="predicted is constant"):
            M.normalized_gini(actual, [7, 7, 7, 7])


def test_spearman_hand() -> None:
    # ranks of predicted: [1, 4, 3, 2]; of actual: [1, 2, 3, 4]; d = [0, -2, 0, 2]
    # rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 8 / (4 * 15) = 1 - 0.8 = 0.2
    assert M.spearman(A4, S4) == pytest.approx(0.2)


def test_spearman_ties_take_average_ranks() -> None:
    # actual [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4]; predicted ranks [1, 2, 3, 4]; centred:
    # [-1.5, 0, 0, 1.5] and [-1.5, -0.5, 0.5, 1.5]: rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert M.spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(3 / math.sqrt(10))


def test_decile_mape_hand() -> None:
    # predicted = 0..19 shuffled; actual = 2 * predicted. Groups by predicted: {0,1}, {2,3}, ...
    # group g: mean predicted 2g + 0.5, mean actual 4g + 1 -> |2g + 0.5 - 4g - 1| / (4g + 1) = 0.5
    rng = np.random.default_rng(0)
    perm = rng.permutation(20)
    predicted = np.arange(20.0)[perm]
    actual = 2 * predicted
    assert M.decile_mape(actual, predicted) == pytest.approx(0.5)


def test_decile_mape_skips_zero_actual_groups() -> None:
    # as above but group {0, 1} has actual 0 -> skipped; the other 9 groups have error 0.5 ...
    predicted = np.arange(20.0)
    actual = 2 * predicted
    actual[:2] = 0.0
    # average of nine 0.5 = 0.5
    assert M.decile_mape(actual, predicted) == pytest.approx(0.5)
    # group {18, 19}: predicted mean 18.5; set actual to [37, 0] (mean 18.5) -> error 0
    actual[18:] = [37.0, 0.0]
    # eight groups at 0.5 and one at 0 -> 4 / 9
    assert M.decile_mape(actual, predicted) == pytest.approx(4 / 9)


def test_decile_mape_unequal_group_sizes() -> None:
    # n = 11: groups of sizes 2, 1, 1, ..., 1 in ascending predicted order
    # predicted 0..10; actual = predicted + 1
    # group {0, 1}: mean p 0.5, mean a 1.5 -> 1/1.5 = 2/3; group {k}: 1 / (k + 1) for k = 2..10
    predicted = np.arange(11.0)
    actual = predicted + 1
    expected = (2 / 3 + sum(1 / (k + 1) for k in range(2, 11))) / 10
    assert M.decile_mape(actual, predicted) == pytest.approx(expected)


def test_top_decile_capture_hand() -> None:
    # n = 10 -> top decile = 1 customer: the highest prediction (index 9, actual 7)
    # total actual = 5 + 8 * 1 + 7 = 20 -> 7 / 20 = 0.35
    actual = [5, 1, 1, 1, 1, 1, 1, 1, 1, 7]
    predicted = [0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9]
    assert M.top_decile_capture(actual, predicted) == pytest.approx(0.35)


def test_mae_and_aggregate_bias_hand() -> None:
    # |1.5 - 1| + |1 - 2| + |3 - 3| + |6 - 4| = 0.5 + 1 + 0 + 2 = 3.5; / 4 = 0.875
    predicted = [1.5, 1.0, 3.0, 6.0]
    assert M.mae(A4, predicted) == pytest.approx(0.875)
    # sum predicted 11.5 / sum actual 10 - 1 = 0.15
    assert M.aggregate_bias(A4, predicted) == pytest.approx(0.15)


def test_value_metrics_keys() -> None:
    actual = np.arange(1.0, 21.0)
    predicted = actual * 1.1
    out = M.value_metrics(actual, predicted)
    assert list(out) == [
        "normalized_gini",
        "spearman",
        "decile_mape",
        "top_decile_capture",
        "mae",
        "aggregate_bias",
    ]
    assert out["normalized_gini"] == pytest.approx(1.0)
    assert out["spearman"] == pytest.approx(1.0)
    # every group over-predicted by 10 %
    assert out["decile_mape"] == pytest.approx(0.1)
    # top 2 of 20: (20 + 19) / 210
    assert out["top_decile_capture"] == pytest.approx(39 / 210)
    # mean of 0.1 * (1..20) = 0.1 * 10.5
    assert out["mae"] == pytest.approx(1.05)
    assert out["aggregate_bias"] == pytest.approx(0.1)


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------


def test_compare_table() -> None:
    model = {"roc_auc": 0.8, "brier": 0.2, "aggregate_bias": -0.05, "mae": 3.0}
    baseline = {"roc_auc": 0.7, "brier": 0.1, "aggregate_bias": 0.05, "mae": 4.0}
    table = M.compare_table(model, baseline)
    assert list(table.columns) == ["metric", "model", "baseline", "better"]
    assert list(table["metric"]) == ["roc_auc", "brier", "aggregate_bias", "mae"]
    assert list(table["better"]) == ["model", "baseline", "tie", "model"]
    assert table.loc[0, "model"] == 0.8
    # closer to 0 wins for the bias
    table = M.compare_table({"aggregate_bias": -0.01}, {"aggregate_bias": 0.2})
    assert table.loc[0, "better"] == "model"


def test_compare_table_on_full_metric_dicts() -> None:
    y = np.array([0, 1] * 10)
    good = np.where(y == 1, 0.8, 0.2)
    bad = np.full(20, 0.5)
    better = M.compare_table(M.churn_metrics(y, good), M.churn_metrics(y, bad)).set_index("metric")[
        "better"
    ]
    # the sharp model ranks perfectly; the constant 0.5 is perfectly calibrated here
    # (ECE 0 vs |1 - 0.8| = |0 - 0.2| = 0.2 for the sharp one)
    assert better["roc_auc"] == "model"
    assert better["lift_top_decile"] == "model"
    assert better["brier"] == "model"  # 0.04 vs 0.25
    assert better["ece"] == "baseline"


def test_compare_table_without_a_baseline_says_n_a() -> None:
    """A baseline that could not be evaluated (None) gives NaN baseline values, shown as
    n/a by `format_table`; the model's metrics are still checked."""
    table = M.compare_table({"roc_auc": 0.8, "brier": 0.2}, None)
    assert list(table.columns) == ["metric", "model", "baseline", "better"]
    assert table["baseline"].isna().all() and list(table["better"]) == ["n/a", "n/a"]
    assert M.format_table(table).splitlines() == [
        " metric  model  baseline better",
        "roc_auc 0.8000       n/a    n/a",
        "  brier 0.2000       n/a    n/a",
    ]
    with pytest.raises(ValueError, match="unknown metric"):
        M.compare_table({"accuracy": 0.8}, None)


def test_compare_table_marks_a_metric_undefined_on_either_side_n_a() -> None:
    nan = float("nan")
    table = M.compare_table({"roc_auc": nan, "brier": 0.2, "mae": 3.0},
                            {"roc_auc": nan, "brier": 0.25, "mae": nan})
    assert list(table["better"]) == ["n/a", "model", "n/a"]
    assert M.format_table(table).splitlines() == [
        " metric  model  baseline better",
        "roc_auc    n/a       n/a    n/a",
        "  brier 0.2000    0.2500  model",
        "    mae 3.0000       n/a    n/a",
    ]
    with pytest.raises(ValueError, match="unknown metric"):
        M.compare_table({"accuracy": nan}, {"accuracy": nan})


def test_compare_table_errors() -> None:
    with pytest.raises(ValueError, match="differ"):
        M.compare_table({"roc_auc": 0.8}, {"brier": 0.1})
    with pytest.raises(ValueError, match="unknown metric"):
        M.compare_table({"accuracy": 0.8}, {"accuracy": 0.7})


# --------------------------------------------------------------------------------------------
# error cases
# --------------------------------------------------------------------------------------------

CHURN_FUNCS = [
    M.roc_auc,
    M.pr_auc,
    M.brier,
    M.log_loss,
    M.expected_calibration_error,
    M.lift_top_decile,
    M.capture_top_decile,
    M.churn_metrics,
]
VALUE_FUNCS = [
    M.normalized_gini,
    M.spearman,
    M.decile_mape,
    M.top_decile_capture,
    M.mae,
    M.aggregate_bias,
    M.value_metrics,
]


@pytest.mark.parametrize("func", CHURN_FUNCS + VALUE_FUNCS)
def test_length_mismatch(func) -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        func([0, 1, 1], [0.1, 0.2])


@pytest.mark.parametrize("func", CHURN_FUNCS + VALUE_FUNCS)
def test_empty(func) -> None:
    with pytest.raises(ValueError, match="empty"):
        func([], [])


@pytest.mark.parametrize("func", CHURN_FUNCS + VALUE_FUNCS)
def test_nan(func) -> None:
    with pytest.raises(ValueError, match="NaN"):
        func([0, 1, 1, 0], [0.1, float("nan"), 0.3, 0.4])
    with pytest.raises(ValueError, match="NaN"):
        func([0, np.nan, 1, 0], [0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("func", [M.roc_auc, M.pr_auc, M.churn_metrics])
def test_single_class(func) -> None:
    with pytest.raises(M.UndefinedMetricError, match="single class: all 3 labels are 0"):
        func([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(M.UndefinedMetricError, match="single class: all 2 labels are 1"):
        func([1, 1], [0.1, 0.2])
    assert issubclass(M.UndefinedMetricError, ValueError)


def test_churn_metrics_report_undefined_ones_as_nan_with_the_reason() -> None:
    """Nobody churned: the ranking metrics and lift have no value, the others do."""
    y, p = [0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4]
    why: dict[str, str] = {}
    out = M.churn_metrics(y, p, undefined=why)
    assert sorted(k for k, v in out.items() if np.isnan(v)) == sorted(why) == [
        "capture_top_decile", "lift_top_decile", "pr_auc", "roc_auc"]
    assert why["roc_auc"] == "roc_auc is undefined when y has a single class: all 4 labels are 0"
    # brier = (0.01 + 0.04 + 0.09 + 0.16) / 4
    assert out["brier"] == pytest.approx(0.075)
    # invalid input is still an error, not n/a
    with pytest.raises(ValueError, match="NaN"):
        M.churn_metrics(y, [0.1, np.nan, 0.3, 0.4], undefined={})


def test_value_metrics_of_a_constant_model_report_the_rank_metrics_n_a() -> None:
    why: dict[str, str] = {}
    actual = [0.0, 5.0, 10.0, 1.0, 0.0, 3.0, 8.0, 2.0, 0.0, 1.0]
    out = M.value_metrics(actual, [3.0] * 10, undefined=why)
    assert sorted(why) == ["normalized_gini", "spearman"]
    assert "predicted is constant" in why["spearman"]
    # sum actual 30, predicted 30: no bias; every error |3 - a|: 3+2+7+2+3+0+5+1+3+2 = 28
    assert out["aggregate_bias"] == pytest.approx(0.0)
    assert out["mae"] == pytest.approx(2.8)


@pytest.mark.parametrize("func", [M.lift_top_decile, M.capture_top_decile])
def test_no_churners(func) -> None:
    with pytest.raises(ValueError, match="no positives"):
        func([0, 0, 0], [0.1, 0.2, 0.3])


def test_churn_input_domain() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.brier([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        M.brier([0, 1], [0.1, 1.2])
    with pytest.raises(ValueError, match="one-dimensional"):
        M.brier([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="n_bins"):
        M.expected_calibration_error([0, 1], [0.1, 0.2], n_bins=0)


def test_value_undefined_cases() -> None:
    with pytest.raises(ValueError, match="all actual values are equal"):
        M.normalized_gini([2, 2, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="sum to 0"):
        M.normalized_gini([-1, 1], [1, 2])
    with pytest.raises(ValueError, match="sum to 0"):
        M.top_decile_capture([0, 0], [1, 2])
    with pytest.raises(ValueError, match="sum to 0"):
        M.aggregate_bias([0, 0], [1, 2])
    with pytest.raises(ValueError, match="predicted is constant"):
        M.spearman([1, 2, 3], [5, 5, 5])
    with pytest.raises(ValueError, match="at least 10 customers"):
        M.decile_mape([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="mean actual value of 0"):
        M.decile_mape(np.zeros(10), np.arange(10.0))
