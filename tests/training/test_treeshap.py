"""`training.treeshap.TreeContributions` against LightGBM's own ``pred_contrib``."""

from __future__ import annotations

import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from training import models as tm
from training import treeshap
from training.treeshap import NotTabulable, TreeContributions


def _awkward_matrix(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns with NaN, exact zeros, values in LightGBM's zero range, negatives, ties."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([
        rng.normal(size=n),
        rng.integers(0, 5, size=n).astype(float),  # many ties and zeros
        np.where(rng.random(n) < 0.3, np.nan, rng.gamma(2.0, 3.0, size=n)),
        np.where(rng.random(n) < 0.4, 0.0, rng.normal(size=n)),
        np.where(rng.random(n) < 0.05, 1e-40 * rng.choice([-1, 1], size=n), rng.normal(size=n)),
        rng.choice([-2.0, 0.0, 2.0, np.nan], size=n),
    ])
    logit = X[:, 0] + 0.5 * X[:, 1] - 0.3 * np.nan_to_num(X[:, 2]) + np.nan_to_num(X[:, 5])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return X, y


@pytest.mark.parametrize("params", [
    {},
    {"zero_as_missing": True},
    {"use_missing": False},
    {"max_depth": 4, "num_leaves": 15},
])
def test_contributions_and_raw_scores_equal_lightgbm(params):
    X, y = _awkward_matrix(3000, 0)
    booster = lgb.train({"objective": "binary", "num_leaves": 7, "max_depth": 3,
                         "min_child_samples": 20, "verbosity": -1, "num_threads": 1, **params},
                        lgb.Dataset(X, y), num_boost_round=60)
    tables = TreeContributions().fit(booster)
    Xt, _ = _awkward_matrix(2000, 1)  # other rows than the training rows
    Xt[:5] = np.nan  # wholly missing rows
    Xt[5:10] = 0.0
    expected = booster.predict(Xt, pred_contrib=True)
    np.testing.assert_allclose(tables.predict(Xt, n_jobs=1), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tables.predict(Xt, n_jobs=2), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tables.predict_raw(Xt), booster.predict(Xt, raw_score=True),
                               rtol=0, atol=1e-12)


def test_num_iteration_and_single_leaf_trees(monkeypatch):
    X, y = _awkward_matrix(500, 2)
    # min_child_samples above the row count: every tree is a single leaf
    stumps = lgb.train({"objective": "binary", "min_child_samples": 1000, "verbosity": -1},
                       lgb.Dataset(X, y), num_boost_round=3)
    np.testing.assert_allclose(TreeContributions().fit(stumps).predict(X),
                               stumps.predict(X, pred_contrib=True), atol=1e-12)
    booster = lgb.train({"objective": "binary", "num_leaves": 7, "verbosity": -1},
                        lgb.Dataset(X, y), num_boost_round=30)
    whole = TreeContributions().fit(booster)
    assert whole.predict(X[:0]).shape == (0, X.shape[1] + 1)
    assert whole.predict_raw(X[:0]).shape == (0,)
    monkeypatch.setattr(treeshap, "BLOCK", 50)  # several blocks per thread
    for n in (1, 3, 257):  # blocks split evenly over the threads, whatever the row count
        np.testing.assert_allclose(whole.predict(X[:n], n_jobs=2),
                                   booster.predict(X[:n], pred_contrib=True), atol=1e-12)
    part = TreeContributions(num_iteration=10).fit(booster)
    np.testing.assert_allclose(part.predict(X),
                               booster.predict(X, num_iteration=10, pred_contrib=True),
                               atol=1e-12)


def test_what_it_cannot_tabulate_is_refused():
    X, y = _awkward_matrix(500, 3)
    Xc = X.copy()
    Xc[:, 1] = np.nan_to_num(Xc[:, 1])
    cat = lgb.train({"objective": "binary", "verbosity": -1, "min_data_per_group": 5,
                     "cat_smooth": 1},
                    lgb.Dataset(Xc, y, categorical_feature=[1]), num_boost_round=5)
    with pytest.raises(NotTabulable, match="split type"):
        TreeContributions().fit(cat)
    multi = lgb.train({"objective": "multiclass", "num_class": 3, "verbosity": -1},
                      lgb.Dataset(X, (np.arange(500) % 3).astype(float)), num_boost_round=2)
    with pytest.raises(NotTabulable, match="several trees"):
        TreeContributions().fit(multi)
    with pytest.raises(ValueError, match="6 columns"):
        TreeContributions().fit(lgb.train({"objective": "binary", "verbosity": -1},
                                          lgb.Dataset(X, y), num_boost_round=2)
                                ).predict(X[:, :3])


def test_models_give_the_same_answers_tabulated(demo_train_result, monkeypatch):
    models = demo_train_result.models
    cut = demo_train_result.eval_cutoffs["churn"]
    rows = demo_train_result.frame[demo_train_result.frame["cutoff"] == cut]
    rows = rows.reset_index(drop=True)
    p_direct, reasons_direct = models.churn.predict_with_reasons(rows)
    v_direct = models.value.predict(rows)
    assert getattr(models.churn, "_tables", None) is None  # a small batch: no tables
    np.testing.assert_allclose(p_direct, models.churn.predict_proba(rows), rtol=1e-12)

    monkeypatch.setattr(tm, "_TABULATE_ROWS", 1)
    p_tab, reasons_tab = models.churn.predict_with_reasons(rows)
    v_tab = models.value.predict(rows)
    assert models.churn._tables[0] is models.churn.booster_
    assert isinstance(models.churn._tables[1], TreeContributions)
    assert isinstance(models.value._tables[1], TreeContributions)
    np.testing.assert_allclose(p_tab, p_direct, rtol=1e-12, atol=0)
    np.testing.assert_allclose(v_tab, v_direct, rtol=1e-9, atol=0)
    assert [[r["feature"] for r in x] for x in reasons_tab] == \
        [[r["feature"] for r in x] for x in reasons_direct]
    flat_tab = [r["contribution"] for x in reasons_tab for r in x]
    flat_direct = [r["contribution"] for x in reasons_direct for r in x]
    np.testing.assert_allclose(flat_tab, flat_direct, rtol=0, atol=1e-12)
    # the tables are a cache: not pickled (MLflow, the bench), rebuilt when needed
    copy = pickle.loads(pickle.dumps(models.churn))
    assert "_tables" not in copy.__dict__
    np.testing.assert_allclose(copy.predict_with_reasons(rows)[0], p_direct, rtol=1e-12)
    # a new booster (a refit) gets new tables, never the old ones
    first = models.churn._tables[1]
    monkeypatch.setattr(models.churn, "booster_",
                        lgb.Booster(model_str=models.churn.booster_.model_to_string()))
    np.testing.assert_allclose(models.churn.predict_with_reasons(rows)[0], p_direct, rtol=1e-12)
    assert models.churn._tables[1] is not first
    models.churn.__dict__.pop("_tables")
    models.value.__dict__.pop("_tables")


def test_value_model_falls_back_when_the_tables_disagree(demo_train_result, monkeypatch,
                                                         caplog):
    value = demo_train_result.models.value
    rows = demo_train_result.frame.head(100)
    expected = value.predict(rows)
    monkeypatch.setattr(tm, "_TABULATE_ROWS", 1)
    wrong = TreeContributions().fit(value.booster_)
    wrong.constant_ += 1.0  # every tabulated prediction off by a factor e
    monkeypatch.setitem(value.__dict__, "_tables", (value.booster_, wrong))
    with caplog.at_level("WARNING"):
        got = value.predict(rows)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert "differs from LightGBM" in caplog.text
    assert isinstance(pd.Series(got), pd.Series)


def test_reasons_give_predict_probas_probability_bit_for_bit(demo_train_result, monkeypatch):
    """The probability with reasons was the sum of the SHAP contributions, equal to the
    booster's raw score only up to the last bits: rows the trees score alike were ranked
    by rounding, and `backtest` printed other rank metrics than `train`'s evaluation."""
    models = demo_train_result.models
    rows = demo_train_result.frame.reset_index(drop=True)
    expected = models.churn.predict_proba(rows)
    assert np.array_equal(models.churn.predict_with_reasons(rows)[0], expected)
    monkeypatch.setattr(tm, "_TABULATE_ROWS", 1)
    models.churn.__dict__.pop("_tables", None)
    assert np.array_equal(models.churn.predict_with_reasons(rows)[0], expected)
    models.churn.__dict__.pop("_tables", None)
