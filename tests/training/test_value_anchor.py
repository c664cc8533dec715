"""The value model's anchor to the population it scores (`training.models.ValueModel.anchor`):
after training, its predictions for the population at as_of sum to the baseline's total for
that population times the baseline's ratio of actual to predicted spend on the validation
snapshot; without a usable baseline it is not anchored; it survives save and load."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import build_features
from training.models import ValueModel, add_baseline_features


@pytest.fixture(scope="module")
def population(demo_train_result, demo_transactions) -> pd.DataFrame:
    """The customers at the training run's as_of, with the baseline features."""
    result = demo_train_result
    feats = build_features(demo_transactions, result.models.as_of,
                           config=result.models.config.features)
    return add_baseline_features(feats, result.models.config.features)


def _model(demo_train_result) -> ValueModel:
    """A copy: the session's trained models are shared by other tests."""
    return copy.copy(demo_train_result.models.value)


def test_baseline_ratio_is_measured_on_the_validation_snapshot(demo_train_result) -> None:
    value = demo_train_result.models.value
    frame = demo_train_result.frame
    valid = frame[frame["cutoff"] == pd.Timestamp(value.valid_cutoff_)]
    assert len(valid) > 0
    expected = valid["future_value"].sum() / valid["bg_clv"].sum()
    assert value.baseline_ratio_ == pytest.approx(expected, rel=1e-12)


def test_trained_model_is_anchored_to_the_population_at_as_of(demo_train_result,
                                                              population) -> None:
    value = demo_train_result.models.value
    total = value.predict(population).sum()
    assert total == pytest.approx(value.baseline_ratio_ * population["bg_clv"].sum(),
                                  rel=1e-9)
    assert value.anchor_ != 1.0  # the demo's population drifts: the anchor did something
    assert value.anchored_ is True
    # anchoring scales every prediction by one factor: the ranking is the model's own
    unanchored = _model(demo_train_result)
    unanchored.anchor_ = 1.0
    np.testing.assert_allclose(value.predict(population),
                               unanchored.predict(population) * value.anchor_, rtol=1e-12)


def test_evaluation_anchors_to_the_evaluation_snapshot(demo_train_result) -> None:
    """The logged evaluation is of the model anchored where it is evaluated, from that
    snapshot's features alone (its outcomes are not used)."""
    result = demo_train_result
    ev = result.frame[result.frame["cutoff"] == result.eval_cutoffs["value"]]
    evaluated = result.eval_models["value"]  # fit as of the evaluation cutoff
    ratio = evaluated.baseline_ratio_
    assert result.eval_predictions["value"]["model"].sum() == pytest.approx(
        ratio * ev["bg_clv"].sum(), rel=1e-9)
    # the same with the outcomes scrambled: they play no part
    scrambled = ev.assign(future_value=ev["future_value"].to_numpy()[::-1] * 3)
    again = copy.copy(evaluated).anchor(scrambled).predict(scrambled)
    np.testing.assert_allclose(again, result.eval_predictions["value"]["model"], rtol=1e-12)


@pytest.mark.parametrize("broken", ["missing", "nan", "zero"])
def test_without_a_usable_baseline_it_is_not_anchored(demo_train_result, population,
                                                      broken: str) -> None:
    if broken == "missing":
        pop = population.drop(columns=["bg_clv"])
    elif broken == "nan":
        pop = population.assign(bg_clv=population["bg_clv"].where(
            np.arange(len(population)) != 0))
    else:
        pop = population.assign(bg_clv=0.0)
    model = _model(demo_train_result).anchor(pop)
    assert model.anchor_ == 1.0
    assert model.scale == model.level_
    if broken != "missing":  # (without bg_clv, a frame cannot be scored at all)
        # anchor_predict: the same state, and the unanchored predictions
        np.testing.assert_array_equal(_model(demo_train_result).anchor_predict(pop),
                                      model.predict(pop))


def test_a_model_without_a_baseline_ratio_is_not_anchored(demo_train_result,
                                                          population) -> None:
    model = _model(demo_train_result)
    model.baseline_ratio_ = None
    assert model.anchor(population).anchor_ == 1.0
    assert model.anchored_ is False


def test_anchor_survives_save_and_load(demo_train_result, population,
                                       tmp_path: Path) -> None:
    value = demo_train_result.models.value
    back = ValueModel.load(value.save(tmp_path / "clv"))
    assert (back.level_, back.anchor_, back.baseline_ratio_, back.anchored_) == (
        value.level_, value.anchor_, value.baseline_ratio_, True)
    np.testing.assert_array_equal(back.predict(population), value.predict(population))


def test_a_model_saved_before_the_anchor_loads_unanchored(demo_train_result,
                                                          tmp_path: Path) -> None:
    folder = demo_train_result.models.value.save(tmp_path / "clv")
    meta = json.loads((folder / "model.json").read_text())
    del meta["anchor"], meta["baseline_ratio"]
    (folder / "model.json").write_text(json.dumps(meta))
    back = ValueModel.load(folder)
    assert (back.anchor_, back.baseline_ratio_, back.anchored_) == (1.0, None, False)
    assert back.scale == back.level_
