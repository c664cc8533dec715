"""Model behaviour tests: properties a trained model must have, whatever the data."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _eval_rows(result) -> pd.DataFrame:
    cut = result.eval_cutoffs["churn"]
    return result.frame[result.frame["cutoff"] == cut].reset_index(drop=True)


def test_churn_probability_never_falls_as_days_since_last_grows(demo_train_result):
    churn = demo_train_result.models.churn
    rows = _eval_rows(demo_train_result).head(300)
    previous = churn.predict_proba(rows)
    for extra in (1, 7, 30, 90, 365, 3000):
        grown = rows.copy()
        grown["days_since_last"] = rows["days_since_last"].astype("float64") + extra
        now = churn.predict_proba(grown)
        assert (now >= previous - 1e-12).all(), f"fell after +{extra} days"
        previous = now


def test_churn_probability_with_reasons_never_falls_on_the_tabulated_path(demo_train_result):
    """The same property through `predict_with_reasons` on more than `_TABULATE_ROWS` rows,
    where the scores come from the per-tree tables (what `lifecast score` uses), not from
    LightGBM's own prediction."""
    import pickle

    from training.models import _TABULATE_ROWS

    # a copy: the tables are cached on the model, and the shared fixture must stay as trained
    churn = pickle.loads(pickle.dumps(demo_train_result.models.churn))
    rows = _eval_rows(demo_train_result).head(300)
    steps = -(-_TABULATE_ROWS // len(rows)) + 1  # enough copies to pass the threshold
    grown = pd.concat(
        [rows.assign(days_since_last=rows["days_since_last"].astype("float64") + 10 * s)
         for s in range(steps)], ignore_index=True)
    assert len(grown) >= _TABULATE_ROWS
    p, reasons = churn.predict_with_reasons(grown)
    assert len(reasons) == len(grown)
    np.testing.assert_allclose(p, churn.predict_proba(grown), rtol=0, atol=1e-9)
    by_step = p.reshape(steps, len(rows))
    assert (np.diff(by_step, axis=0) >= -1e-12).all()


def test_churn_probabilities_are_calibrated_probabilities(demo_train_result):
    p = demo_train_result.models.churn.predict_proba(_eval_rows(demo_train_result))
    assert ((p > 0) & (p < 1)).all()
    # calibration in the large on the held-out snapshot: mean prediction near the churn rate
    y = _eval_rows(demo_train_result)["churned"].astype(float)
    assert abs(p.mean() - y.mean()) < 0.1


def test_value_predictions_are_non_negative_and_rank_spenders(demo_train_result):
    rows = _eval_rows(demo_train_result)
    v = demo_train_result.models.value.predict(rows)
    assert (v >= 0).all()
    high = rows["monetary_total"] > rows["monetary_total"].quantile(0.9)
    low = rows["monetary_total"] < rows["monetary_total"].quantile(0.5)
    assert v[high.to_numpy()].mean() > 3 * v[low.to_numpy()].mean()


def test_reasons_explain_the_score(demo_train_result):
    churn = demo_train_result.models.churn
    rows = _eval_rows(demo_train_result).head(5)
    reasons = churn.reasons(rows)
    assert len(reasons) == 5 and all(len(r) == churn.config_.top_reasons for r in reasons)
    for r in reasons:
        contribs = [abs(x["contribution"]) for x in r]
        assert contribs == sorted(contribs, reverse=True)
        assert all(x["direction"] in ("raises", "lowers") for x in r)
        assert all(x["feature"] in churn.feature_names_ for x in r)


def test_same_input_and_seed_same_model(demo_transactions, demo_config):
    import warnings

    from training.pipeline import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = train(demo_transactions, config=demo_config)
        b = train(demo_transactions, config=demo_config)
    rows = _eval_rows(a)
    np.testing.assert_array_equal(a.models.churn.predict_proba(rows),
                                  b.models.churn.predict_proba(rows))
    np.testing.assert_array_equal(a.models.value.predict(rows), b.models.value.predict(rows))
