"""`training.rowpredict.RowPredictor` (LightGBM's single-row fast path) against
``Booster.predict``."""

from __future__ import annotations

import threading

import lightgbm as lgb
import numpy as np
import pytest

from training.rowpredict import RowPredictor


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack([
        rng.normal(size=n),
        np.where(rng.random(n) < 0.3, np.nan, rng.gamma(2.0, 3.0, size=n)),
        np.where(rng.random(n) < 0.4, 0.0, rng.normal(size=n)),
        rng.integers(0, 4, size=n).astype(float),
    ])
    y = X[:, 0] + np.nan_to_num(X[:, 1]) * 0.2 + rng.normal(size=n)
    return X, y


@pytest.fixture(scope="module")
def boosters() -> dict[str, lgb.Booster]:
    X, y = _data(2000, 0)
    common = {"num_leaves": 7, "max_depth": 3, "verbosity": -1, "num_threads": 1}
    return {
        "binary": lgb.train({"objective": "binary", **common},
                            lgb.Dataset(X, (y > 0.5).astype(float)), num_boost_round=40),
        "tweedie": lgb.train({"objective": "tweedie", **common},
                             lgb.Dataset(X, np.maximum(y, 0.0)), num_boost_round=40),
    }


@pytest.mark.parametrize("objective", ["binary", "tweedie"])
@pytest.mark.parametrize("num_iteration", [None, 25])
def test_equals_booster_predict(boosters, objective, num_iteration) -> None:
    booster = boosters[objective]
    X, _ = _data(300, 1)
    X[:3] = np.nan  # wholly missing rows
    X[3:6] = 0.0
    for kind, flags in (("normal", {}), ("raw", {"raw_score": True}),
                        ("contrib", {"pred_contrib": True})):
        expected = booster.predict(X, num_iteration=num_iteration, **flags)
        got = RowPredictor(booster, kind, num_iteration).predict(X)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    # a single row, a Fortran-ordered and a float32 matrix are converted, not misread
    row = RowPredictor(booster, "contrib", num_iteration)
    np.testing.assert_array_equal(row.predict(X[:1]),
                                  booster.predict(X[:1], num_iteration=num_iteration,
                                                  pred_contrib=True))
    np.testing.assert_array_equal(row.predict(np.asfortranarray(X)),
                                  booster.predict(X, num_iteration=num_iteration,
                                                  pred_contrib=True))
    X32 = X.astype(np.float32)
    np.testing.assert_array_equal(row.predict(X32),
                                  booster.predict(X32.astype(np.float64),
                                                  num_iteration=num_iteration,
                                                  pred_contrib=True))
    assert row.predict(X[:0]).shape == (0, X.shape[1] + 1)


def test_shared_by_threads(boosters) -> None:
    booster = boosters["binary"]
    X, _ = _data(400, 2)
    row = RowPredictor(booster, "contrib")
    expected = booster.predict(X, pred_contrib=True)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(row.predict(X))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    for got in results:
        np.testing.assert_array_equal(got, expected)


def test_bad_shapes_and_kinds(boosters) -> None:
    row = RowPredictor(boosters["binary"], "normal")
    with pytest.raises(ValueError, match=r"\(n, 4\) array"):
        row.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(n, 4\) array"):
        row.predict(np.zeros(4))
    with pytest.raises(ValueError, match="kind must be one of"):
        RowPredictor(boosters["binary"], "leaf")  # type: ignore[arg-type]
    X, _ = _data(300, 3)
    multi = lgb.train({"objective": "multiclass", "num_class": 3, "verbosity": -1},
                      lgb.Dataset(X, np.arange(300) % 3), num_boost_round=2)
    with pytest.raises(ValueError, match="multiclass"):
        RowPredictor(multi, "normal")
