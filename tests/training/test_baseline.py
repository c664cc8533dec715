"""BG/NBD and Gamma-Gamma baseline: published CDNOW estimates, lifetimes as a reference,
a Monte-Carlo check of the churn probability and input validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import quad
from scipy.stats import beta as beta_dist

from training import baseline as baseline_module
from training.baseline import BaselineCLV, BetaGeoModel, GammaGammaModel

# Fader, Hardie & Lee (2005a), CDNOW sample, times in weeks.
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_BGNBD_LL = -9582.4
# Fader, Hardie & Lee (2005b), the 946 repeat customers of the same sample.
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}


def _rft(df: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    return df["frequency"], df["recency"], df["T"]


@pytest.fixture(scope="module")
def bgnbd(cdnow_summary: pd.DataFrame) -> BetaGeoModel:
    return BetaGeoModel().fit(*_rft(cdnow_summary))


@pytest.fixture(scope="module")
def gamma_gamma(cdnow_summary_with_value: pd.DataFrame) -> GammaGammaModel:
    df = cdnow_summary_with_value
    return GammaGammaModel().fit(df["frequency"], df["monetary_value"])


@pytest.fixture(scope="module")
def cdnow_days(cdnow_summary_with_value: pd.DataFrame) -> pd.DataFrame:
    """The CDNOW summary in days (weeks * 7), indexed by customer ID."""
    df = cdnow_summary_with_value.set_index("ID")
    return df.assign(recency=df["recency"] * 7, T=df["T"] * 7)


# --------------------------------------------------------------------------------------------
# published estimates
# --------------------------------------------------------------------------------------------


def test_bgnbd_reproduces_published_cdnow_estimates(bgnbd: BetaGeoModel) -> None:
    for name, value in PUBLISHED_BGNBD.items():
        assert bgnbd.params_[name] == pytest.approx(value, abs=1e-3), name
    assert bgnbd.log_likelihood_ == pytest.approx(PUBLISHED_BGNBD_LL, abs=0.1)
    assert bgnbd.n_customers_ == 2357


def test_gamma_gamma_reproduces_published_cdnow_estimates(gamma_gamma: GammaGammaModel) -> None:
    assert gamma_gamma.n_customers_ == 946
    assert gamma_gamma.params_["p"] == pytest.approx(PUBLISHED_GAMMA_GAMMA["p"], abs=0.01)
    assert gamma_gamma.params_["q"] == pytest.approx(PUBLISHED_GAMMA_GAMMA["q"], abs=0.01)
    assert gamma_gamma.params_["v"] == pytest.approx(PUBLISHED_GAMMA_GAMMA["v"], abs=0.02)
    p, q, v = (gamma_gamma.params_[k] for k in ("p", "q", "v"))
    assert gamma_gamma.population_mean_ == pytest.approx(p * v / (q - 1))


def test_bgnbd_time_unit_only_rescales_alpha(cdnow_summary: pd.DataFrame, bgnbd) -> None:
    f, r, t = _rft(cdnow_summary)
    in_days = BetaGeoModel().fit(f, r * 7, t * 7)
    assert in_days.params_["alpha"] == pytest.approx(bgnbd.params_["alpha"] * 7, rel=1e-5)
    for name in ("r", "a", "b"):
        assert in_days.params_[name] == pytest.approx(bgnbd.params_[name], rel=1e-5)
    # the likelihood is a density in x purchase times: L_days = L_weeks / 7^x per customer
    shift = f.sum() * np.log(7)
    assert in_days.log_likelihood_ == pytest.approx(bgnbd.log_likelihood_ - shift, abs=1e-3)
    # the same customers, the same predictions (horizon in the matching unit)
    np.testing.assert_allclose(
        in_days.expected_purchases(70, f, r * 7, t * 7),
        bgnbd.expected_purchases(10, f, r, t),
        rtol=1e-4,
    )


def test_bgnbd_penalizer_shrinks_parameters(cdnow_summary: pd.DataFrame, bgnbd) -> None:
    penalized = BetaGeoModel(penalizer=0.1).fit(*_rft(cdnow_summary))
    # the penalty is on the internal parameters (alpha in units of max T); b is the largest
    assert penalized.params_["b"] < bgnbd.params_["b"]
    assert penalized.log_likelihood_ < bgnbd.log_likelihood_


def test_bgnbd_weights_equal_repeated_rows(cdnow_summary: pd.DataFrame, bgnbd) -> None:
    counts = cdnow_summary.groupby(["frequency", "recency", "T"]).size().reset_index(name="n")
    condensed = BetaGeoModel().fit(
        counts["frequency"], counts["recency"], counts["T"], weights=counts["n"]
    )
    assert len(counts) < len(cdnow_summary)
    assert condensed.n_customers_ == 2357
    for name in PUBLISHED_BGNBD:
        assert condensed.params_[name] == pytest.approx(bgnbd.params_[name], rel=1e-5)
    assert condensed.log_likelihood_ == pytest.approx(bgnbd.log_likelihood_, abs=1e-6)


# --------------------------------------------------------------------------------------------
# lifetimes as a reference implementation
# --------------------------------------------------------------------------------------------


def test_predictions_match_lifetimes(
    cdnow_summary_with_value: pd.DataFrame, bgnbd: BetaGeoModel, gamma_gamma: GammaGammaModel
) -> None:
    lifetimes = pytest.importorskip("lifetimes")
    df = cdnow_summary_with_value
    ref = lifetimes.BetaGeoFitter().fit(df["frequency"], df["recency"], df["T"])
    for name in PUBLISHED_BGNBD:
        assert bgnbd.params_[name] == pytest.approx(ref.params_[name], rel=1e-4)
    # compare the formulas at identical parameters
    ref.params_ = pd.Series(bgnbd.params_)[["r", "alpha", "a", "b"]]
    # a few customers: repeat buyers with early and late last purchases, and non-repeaters
    rows = df.iloc[[0, 1, 2, 10, 27, 100, 500, 1000, 1500, 2356]]
    f, r, t = rows["frequency"].to_numpy(), rows["recency"].to_numpy(), rows["T"].to_numpy()
    for horizon in (1.0, 10.0, 52.0):
        np.testing.assert_allclose(
            bgnbd.expected_purchases(horizon, f, r, t),
            ref.conditional_expected_number_of_purchases_up_to_time(horizon, f, r, t),
            rtol=1e-8,
        )
        np.testing.assert_allclose(
            bgnbd.expected_purchases_new(horizon),
            ref.expected_number_of_purchases_up_to_time(horizon),
            rtol=1e-8,
        )
    np.testing.assert_allclose(
        bgnbd.p_alive(f, r, t), ref.conditional_probability_alive(f, r, t), rtol=1e-10
    )
    gg_ref = lifetimes.GammaGammaFitter()
    gg_ref.params_ = pd.Series(gamma_gamma.params_)[["p", "q", "v"]]
    m = rows["monetary_value"].to_numpy()
    np.testing.assert_allclose(
        gamma_gamma.conditional_expected_value(f, m),
        gg_ref.conditional_expected_average_profit(f, m),
        rtol=1e-10,
    )


# --------------------------------------------------------------------------------------------
# model properties
# --------------------------------------------------------------------------------------------


def test_p_alive_is_one_without_repeat_purchases(bgnbd: BetaGeoModel) -> None:
    np.testing.assert_array_equal(bgnbd.p_alive([0, 0], [0, 0], [1.0, 38.0]), [1.0, 1.0])


@pytest.mark.parametrize(
    ("x", "t_x", "t_obs"),
    [(2, 30.43, 38.86), (0, 0.0, 38.86), (7, 20.0, 38.0)],
    ids=["customer-1", "no-repeat", "lapsed-frequent"],
)
def test_churn_probability_matches_monte_carlo(
    bgnbd: BetaGeoModel, x: int, t_x: float, t_obs: float
) -> None:
    """Simulate the fitted BG/NBD model for one customer (times in weeks; customer-1 is the
    first CDNOW customer).

    Draw (lambda, p) from the fitted population and weight each draw by the likelihood of the
    customer's history (importance sampling from prior to posterior). Given a draw, the
    customer is alive with probability (1-p)^x lambda^x e^(-lambda T) / L, where the dead part
    of L is p (1-p)^(x-1) lambda^x e^(-lambda t_x) for x > 0; an alive customer's next purchase
    comes after an Exponential(lambda) gap. P(no purchase in t) is the weighted share of draws
    that are dead or whose gap exceeds t.
    """
    r, alpha, a, b = (bgnbd.params_[k] for k in ("r", "alpha", "a", "b"))
    rng = np.random.default_rng(20240601)
    n = 400_000
    lam = rng.gamma(shape=r, scale=1 / alpha, size=n)
    p = rng.beta(a, b, size=n)
    alive_lik = (1 - p) ** x * lam**x * np.exp(-lam * t_obs)
    dead_lik = (x > 0) * p * (1 - p) ** max(x - 1, 0) * lam**x * np.exp(-lam * t_x)
    weight = alive_lik + dead_lik
    alive = rng.random(n) < alive_lik / weight
    gap = rng.exponential(1 / np.maximum(lam, 1e-300))
    mc_alive = np.sum(weight * alive) / weight.sum()
    assert bgnbd.p_alive(x, t_x, t_obs) == pytest.approx(mc_alive, abs=0.01)

    for horizon in (1.0, 10.0, 52.0):
        no_purchase = ~alive | (gap > horizon)
        mc_churn = np.sum(weight * no_purchase) / weight.sum()
        churn = bgnbd.probability_no_purchase(horizon, x, t_x, t_obs)
        assert churn == pytest.approx(mc_churn, abs=0.01), horizon
        # and the closed form written out
        p_alive = bgnbd.p_alive(x, t_x, t_obs)
        none_if_alive = ((alpha + t_obs) / (alpha + t_obs + horizon)) ** (r + x)
        assert churn == pytest.approx((1 - p_alive) + p_alive * none_if_alive, rel=1e-12)


def test_expected_purchases_when_a_plus_b_below_one() -> None:
    """Real data can give a + b < 1 (so a + b + x - 1 < 0 for x = 0, where 2F1 goes negative);
    check eq. 10 against direct integration: P(alive) E[(1 - e^(-lambda p t)) / p] over the
    posterior lambda ~ Gamma(r + x, alpha + T), p ~ Beta(a, b + x)."""
    model = BetaGeoModel()
    model.params_ = {"r": 0.74, "alpha": 50.6, "a": 0.055, "b": 0.75}  # an Online Retail fit
    r, alpha, a, b = 0.74, 50.6, 0.055, 0.75
    for x, t_x, t_obs, horizon in [
        (0, 0, 0, 90),
        (0, 0, 100, 90),
        (3, 50, 200, 90),
        (1, 1, 30, 365),
    ]:

        def integrand(
            p: float, x: int = x, t_obs: float = t_obs, horizon: float = horizon
        ) -> float:
            no_buy = -np.expm1(-(r + x) * np.log1p(p * horizon / (alpha + t_obs)))
            return beta_dist.pdf(p, a, b + x) * no_buy / p

        integral = quad(integrand, 0, 1, limit=200, points=[1e-8, 1e-4, 1e-2])[0]
        expected = model.p_alive(x, t_x, t_obs) * integral
        got = model.expected_purchases(horizon, x, t_x, t_obs)
        assert np.isfinite(got)
        assert got == pytest.approx(expected, rel=1e-6)
    assert model.expected_purchases_new(90) == pytest.approx(model.expected_purchases(90, 0, 0, 0))


def test_expected_purchases_without_rate_heterogeneity() -> None:
    """A log of Poisson buyers with one rate runs r and alpha up together (this fit is the
    one of a uniform random log: r ~ 5e6, alpha ~ 2.5e8, in days); 2F1 is then out of scipy's
    reach and every expectation was NaN, which stopped `train` with 'predicted contains
    NaN'. They are now the Poisson limit, continuous in r at the same rate r / alpha."""
    from training.baseline import _one_minus_confluent, _one_minus_scaled_hyp2f1

    fit = {"r": 4960471.415275247, "alpha": 253963746.6049179, "a": 3.4173974661703443e-05,
           "b": 848.9729920198813}
    x = np.array([0.0, 1.0, 4.0, 11.0])
    t_x = np.array([0.0, 40.0, 191.0, 265.0])
    t_obs = np.array([37.0, 120.0, 241.0, 270.0])
    rate = fit["r"] / fit["alpha"]
    got = {}
    for r in (1e4, fit["r"]):
        model = BetaGeoModel()
        model.params_ = {**fit, "r": r, "alpha": r / rate}
        got[r] = model.expected_purchases(30, x, t_x, t_obs)
        assert np.isfinite(got[r]).all()
        assert np.isfinite(model.expected_purchases_new(30))
    np.testing.assert_allclose(got[fit["r"]], got[1e4], rtol=1e-3)
    # with (almost) no drop-out, the expectation is the rate times the horizon
    np.testing.assert_allclose(got[fit["r"]], 30 * rate, rtol=1e-3)
    # where 2F1 works, the limit agrees with it
    r = 1e3
    k, b, c = r + x, fit["b"] + x, fit["a"] + fit["b"] + x - 1.0
    z = 30 / (r / rate + t_obs + 30)
    np.testing.assert_allclose(_one_minus_confluent(k, b, c, z),
                               _one_minus_scaled_hyp2f1(k, k, b, c, z), rtol=1e-6)


def test_vectorized_over_horizons_and_inputs(bgnbd: BetaGeoModel) -> None:
    f, r, t = np.array([0, 2, 5]), np.array([0.0, 30.43, 20.0]), np.array([38.0, 38.86, 30.0])
    horizons = np.array([1.0, 5.0, 50.0])
    together = bgnbd.expected_purchases(horizons, f, r, t)
    one_by_one = [bgnbd.expected_purchases(h, f[i], r[i], t[i]) for i, h in enumerate(horizons)]
    np.testing.assert_allclose(together, np.ravel(one_by_one))
    assert isinstance(together, np.ndarray)
    assert bgnbd.expected_purchases(0.0, f, r, t) == pytest.approx([0, 0, 0])
    assert bgnbd.probability_no_purchase(0.0, f, r, t) == pytest.approx([1, 1, 1])


# --------------------------------------------------------------------------------------------
# BaselineCLV
# --------------------------------------------------------------------------------------------


def test_baseline_clv_predict(cdnow_days: pd.DataFrame, bgnbd: BetaGeoModel) -> None:
    model = BaselineCLV().fit(cdnow_days)
    # fitted in days: alpha is per day, the rest unchanged
    assert model.bgnbd_.params_["alpha"] == pytest.approx(bgnbd.params_["alpha"] * 7, rel=1e-5)
    assert model.gamma_gamma_.params_["p"] == pytest.approx(PUBLISHED_GAMMA_GAMMA["p"], abs=0.01)

    out = model.predict(cdnow_days, horizon_days=90)
    assert list(out.columns) == [
        "expected_orders",
        "p_alive",
        "expected_order_value",
        "predicted_clv",
        "churn_probability",
    ]
    assert out.index.equals(cdnow_days.index)
    assert out.notna().all().all()
    np.testing.assert_allclose(
        out["predicted_clv"], out["expected_orders"] * out["expected_order_value"]
    )
    assert ((out["churn_probability"] >= 0) & (out["churn_probability"] <= 1)).all()
    # no purchase is at least as likely as being dead
    assert (out["churn_probability"] >= 1 - out["p_alive"] - 1e-12).all()
    # frequency 0: alive, population mean spend
    first_only = cdnow_days["frequency"] == 0
    assert (out.loc[first_only, "p_alive"] == 1.0).all()
    np.testing.assert_allclose(
        out.loc[first_only, "expected_order_value"], model.gamma_gamma_.population_mean_
    )
    # a longer horizon: more orders, less chance of none
    longer = model.predict(cdnow_days, horizon_days=365)
    assert (longer["expected_orders"] > out["expected_orders"]).all()
    assert (longer["churn_probability"] < out["churn_probability"]).all()


def test_baseline_clv_clips_negative_spend(cdnow_days: pd.DataFrame) -> None:
    df = cdnow_days.copy()
    df.loc[df.index[0], "monetary_value"] = -5.0  # net returns
    model = BaselineCLV().fit(df)
    out = model.predict(df.iloc[:1], horizon_days=30)
    p, q, v = (model.gamma_gamma_.params_[k] for k in ("p", "q", "v"))
    x = df["frequency"].iloc[0]
    assert out["expected_order_value"].iloc[0] == pytest.approx(p * v / (p * x + q - 1))


def test_baseline_clv_errors(cdnow_days: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="not fitted"):
        BaselineCLV().predict(cdnow_days, 90)
    with pytest.raises(ValueError, match="missing column.*monetary_value"):
        BaselineCLV().fit(cdnow_days.drop(columns="monetary_value"))
    with pytest.raises(ValueError, match="empty"):
        BaselineCLV().fit(cdnow_days.iloc[:0])
    model = BaselineCLV().fit(cdnow_days)
    with pytest.raises(ValueError, match="horizon_days"):
        model.predict(cdnow_days, 0)


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frequency", "recency", "T", "message"),
    [
        ([1, 2], [1.0], [2.0, 3.0], "same length"),
        ([], [], [], "empty"),
        ([-1, 2], [1.0, 1.0], [2.0, 3.0], "frequency must be non-negative"),
        ([1, 2], [-1.0, 1.0], [2.0, 3.0], "recency must be non-negative"),
        ([1, 2], [1.0, 1.0], [-2.0, 3.0], "T must be non-negative"),
        ([1, 2], [3.0, 1.0], [2.0, 3.0], "recency must not exceed T"),
        ([0, 2], [1.0, 1.0], [2.0, 3.0], "recency must be 0"),
        ([1.5, 2], [1.0, 1.0], [2.0, 3.0], "whole number"),
        ([1, np.nan], [1.0, 1.0], [2.0, 3.0], "NaN"),
    ],
)
def test_bgnbd_input_errors(frequency, recency, T, message: str, bgnbd: BetaGeoModel) -> None:
    with pytest.raises(ValueError, match=message):
        BetaGeoModel().fit(frequency, recency, T)
    with pytest.raises(ValueError, match=message):
        bgnbd.p_alive(frequency, recency, T)
    with pytest.raises(ValueError, match=message):
        bgnbd.expected_purchases(10, frequency, recency, T)


def test_bgnbd_other_errors(bgnbd: BetaGeoModel) -> None:
    with pytest.raises(ValueError, match="not fitted"):
        BetaGeoModel().p_alive([1], [1.0], [2.0])
    with pytest.raises(ValueError, match="no customer has a repeat purchase"):
        BetaGeoModel().fit([0, 0], [0, 0], [3.0, 5.0])
    with pytest.raises(ValueError, match="penalizer"):
        BetaGeoModel(penalizer=-1).fit([1, 2], [1.0, 1.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="all T are 0"):
        BetaGeoModel().fit([0, 0], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="weights"):
        BetaGeoModel().fit([1, 2], [1.0, 1.0], [2.0, 3.0], weights=[1.0])
    with pytest.raises(ValueError, match="horizon t must be non-negative"):
        bgnbd.expected_purchases(-1, [1], [1.0], [2.0])


def test_fit_that_does_not_converge_raises() -> None:
    def broken(log_params: np.ndarray) -> tuple[float, np.ndarray]:
        return float("nan"), np.zeros_like(log_params)

    with pytest.raises(ValueError, match="did not converge"):
        baseline_module._minimize_log_params(broken, np.zeros(2), "Test")


def test_fit_stopped_by_rounding_noise_is_kept() -> None:
    """An objective that is flat to within its own rounding noise near the optimum (as
    BG/NBD's is when a and b run off together): L-BFGS-B stops there with an abnormal line
    search and a gradient above the tolerance. A restart cannot lower it, so that point is
    the fit (it used to be an error, and the baseline features of a whole snapshot were
    left empty: Complete Journey at 2017-03-03)."""
    from scipy.optimize import minimize

    def noisy(log_params: np.ndarray) -> tuple[float, np.ndarray]:
        # a bowl at 1.0 with deterministic rounding-like noise: 1e-7 on the value, 1e-4
        # on the gradient (above the tolerance, so it never reads as converged)
        value = float(np.sum((log_params - 1.0) ** 2) + 1e-7 * np.sin(1e7 * log_params).sum())
        return value, 2.0 * (log_params - 1.0) + 1e-4 * np.cos(1e7 * log_params)

    plain = minimize(noisy, np.zeros(3), jac=True, method="L-BFGS-B",
                     bounds=[(-25.0, 25.0)] * 3,
                     options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-9})
    # the situation of the fix: the optimiser gives up short of the gradient tolerance
    assert not plain.success
    assert np.max(np.abs(noisy(plain.x)[1])) > baseline_module._GRAD_TOL
    fitted = baseline_module._minimize_log_params(noisy, np.zeros(3), "Test")
    np.testing.assert_allclose(fitted, 1.0, atol=1e-2)


def test_gamma_gamma_errors(gamma_gamma: GammaGammaModel) -> None:
    with pytest.raises(ValueError, match="no repeat customers with positive spend"):
        GammaGammaModel().fit([0, 0, 1, 2], [0.0, 0.0, 10.0, 0.0])
    with pytest.raises(ValueError, match="same length"):
        GammaGammaModel().fit([1, 2], [1.0])
    with pytest.raises(ValueError, match="monetary_value must be non-negative"):
        GammaGammaModel().fit([1, 2], [-1.0, 3.0])
    with pytest.raises(ValueError, match="empty"):
        gamma_gamma.conditional_expected_value([], [])
    with pytest.raises(ValueError, match="not fitted"):
        GammaGammaModel().conditional_expected_value([1], [1.0])


def test_gamma_gamma_shrinks_towards_population_mean(gamma_gamma: GammaGammaModel) -> None:
    mean = gamma_gamma.population_mean_
    values = gamma_gamma.conditional_expected_value([0, 1, 10, 1000], [100.0] * 4)
    assert values[0] == pytest.approx(mean)
    assert mean < values[1] < values[2] < values[3] < 100.0
    assert values[3] == pytest.approx(100.0, rel=0.01)


# --------------------------------------------------------------------------------------------
# large populations: condensed rows and factorised likelihoods (the same fit, less work)
# --------------------------------------------------------------------------------------------


def _population(n: int = 20_000, seed: int = 7) -> pd.DataFrame:
    """A BG/NBD population observed in whole days, as a feature build gives it, so many
    customers share (frequency, recency, T)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.6, 1 / 25, n)  # purchases per day while alive
    drop = rng.beta(0.8, 3.0, n)  # drop-out probability after each purchase
    t_obs = rng.integers(30, 700, n).astype(float)
    clock, last = np.zeros(n), np.zeros(n)
    frequency = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        clock = clock + rng.exponential(1 / lam)
        buys = alive & (clock <= t_obs)
        frequency[buys] += 1
        last[buys] = clock[buys]
        alive = buys & (rng.random(n) >= drop)
    recency = np.ceil(last)
    monetary = np.where(frequency > 0, rng.lognormal(3.0, 0.6, n), 0.0)
    return pd.DataFrame(
        {"frequency": frequency, "recency": recency, "T": t_obs, "monetary_value": monetary}
    )


def _reference_fit(objective, n_params: int, name: str) -> np.ndarray:  # noqa: ANN001
    return np.exp(baseline_module._minimize_log_params(objective, np.zeros(n_params), name))


def test_factorised_likelihoods_equal_the_per_customer_ones() -> None:
    df = _population()
    x, tx, t_obs = (df[c].to_numpy() for c in ("frequency", "recency", "T"))
    w = np.random.default_rng(1).integers(1, 4, x.size).astype(float)
    scale = t_obs.max()
    (cx, ctx, ct), cw = baseline_module._condense((x, tx, t_obs), w)
    assert cx.size < x.size and cw.sum() == w.sum()
    data = baseline_module._BGNBDData(cx, ctx / scale, ct / scale, cw)
    keep = x > 0
    m = df["monetary_value"].to_numpy()[keep]
    gg_data = baseline_module._GammaGammaData(x[keep], m / m.mean())
    rng = np.random.default_rng(2)
    for penalizer in (0.0, 0.01):
        for _ in range(5):
            lp = rng.normal(0.0, 1.0, 4)
            want = baseline_module._bgnbd_objective(lp, x, tx / scale, t_obs / scale, w,
                                                    penalizer)
            got = baseline_module._bgnbd_objective_factorised(lp, data, penalizer)
            assert got[0] == pytest.approx(want[0], rel=1e-12, abs=1e-12)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-12)
            lp3 = rng.normal(0.0, 1.0, 3)
            want = baseline_module._gamma_gamma_objective(lp3, x[keep], m / m.mean(), penalizer)
            got = baseline_module._gamma_gamma_objective_factorised(lp3, gg_data, penalizer)
            assert got[0] == pytest.approx(want[0], rel=1e-12, abs=1e-12)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-12)


def _central_difference(objective, lp: np.ndarray, step: float = 1e-6) -> np.ndarray:  # noqa: ANN001
    grad = np.empty_like(lp)
    for i in range(lp.size):
        e = np.zeros_like(lp)
        e[i] = step
        grad[i] = (objective(lp + e)[0] - objective(lp - e)[0]) / (2 * step)
    return grad


def test_analytic_gradients_equal_finite_differences() -> None:
    """The hand-derived gradients of both likelihoods (in log-parameters, with the penalty)
    agree with central differences of their values. `_minimize_log_params` keeps a point
    that no restart can lower even when the optimiser reports failure, so a wrong gradient
    would not make a fit fail: this test is what catches one. The factorised objectives
    equal these (`test_factorised_likelihoods_equal_the_per_customer_ones`)."""
    df = _population(n=3_000)
    x, tx, t_obs = (df[c].to_numpy() for c in ("frequency", "recency", "T"))
    scale = t_obs.max()
    w = np.random.default_rng(3).integers(1, 4, x.size).astype(float)
    keep = x > 0
    m = df["monetary_value"].to_numpy()[keep]
    rng = np.random.default_rng(4)
    for penalizer in (0.0, 0.05):
        def bgnbd(lp, pen=penalizer):  # noqa: ANN001, ANN202
            return baseline_module._bgnbd_objective(lp, x, tx / scale, t_obs / scale, w, pen)

        def gamma_gamma(lp, pen=penalizer):  # noqa: ANN001, ANN202
            return baseline_module._gamma_gamma_objective(lp, x[keep], m / m.mean(), pen)

        for objective, n_params in ((bgnbd, 4), (gamma_gamma, 3)):
            for _ in range(4):
                lp = rng.normal(0.0, 1.0, n_params)
                np.testing.assert_allclose(objective(lp)[1], _central_difference(objective, lp),
                                           rtol=1e-5, atol=1e-7)


def test_baseline_fit_on_condensed_rows_matches_the_per_customer_fit() -> None:
    """`BaselineCLV.fit` condenses identical (frequency, recency, T) rows into weights and
    factorises the likelihoods; the parameters equal those of a fit of the plain per-customer
    likelihood (the published formulas, one term per customer) to optimiser tolerance."""
    df = _population()
    fitted = BaselineCLV().fit(df)
    x, tx, t_obs = (df[c].to_numpy() for c in ("frequency", "recency", "T"))
    scale = t_obs.max()
    ones = np.ones_like(x)
    r, alpha_s, a, b = _reference_fit(
        lambda lp: baseline_module._bgnbd_objective(lp, x, tx / scale, t_obs / scale, ones,
                                                    0.0), 4, "BG/NBD")
    want = {"r": r, "alpha": alpha_s * scale, "a": a, "b": b}
    for name, value in want.items():
        assert fitted.bgnbd_.params_[name] == pytest.approx(value, rel=1e-5), name
    assert fitted.bgnbd_.n_customers_ == len(df)
    ll, *_ = baseline_module._bgnbd_loglik_terms(fitted.bgnbd_._param_array(), x, tx, t_obs)
    assert fitted.bgnbd_.log_likelihood_ == pytest.approx(ll.sum(), rel=1e-10)

    keep = x > 0
    m = df["monetary_value"].to_numpy()[keep]
    p, q, v_s = _reference_fit(
        lambda lp: baseline_module._gamma_gamma_objective(lp, x[keep], m / m.mean(), 0.0),
        3, "Gamma-Gamma")
    want_gg = {"p": p, "q": q, "v": v_s * m.mean()}
    for name, value in want_gg.items():
        assert fitted.gamma_gamma_.params_[name] == pytest.approx(value, rel=1e-5), name
    value, _ = baseline_module._gamma_gamma_objective(
        np.log(fitted.gamma_gamma_._param_array()), x[keep], m, 0.0)
    assert fitted.gamma_gamma_.log_likelihood_ == pytest.approx(-value * keep.sum(), rel=1e-10)


def test_the_fit_does_not_depend_on_the_row_order() -> None:
    """The same customers in another row order fit the very same parameters, and predict
    the very same values: `predict_customers` on a feature frame sorted by spend (or
    shuffled) gave other expected_orders and p_alive than on build_features' own order
    (in the 8th digit: the log-likelihood was summed in order of appearance)."""
    df = _population(3_000, seed=11)
    shuffled = df.sample(frac=1, random_state=3).reset_index(drop=True)
    a, b = BaselineCLV().fit(df), BaselineCLV().fit(shuffled)
    assert a.bgnbd_.params_ == b.bgnbd_.params_
    assert a.gamma_gamma_.params_ == b.gamma_gamma_.params_
    assert a.bgnbd_.log_likelihood_ == b.bgnbd_.log_likelihood_
    assert a.gamma_gamma_.log_likelihood_ == b.gamma_gamma_.log_likelihood_
    back = b.predict(shuffled, 90).set_axis(df.sample(frac=1, random_state=3).index)
    pd.testing.assert_frame_equal(a.predict(df, 90), back.sort_index(), check_exact=True)


def test_expected_purchases_per_distinct_pair_equals_per_customer(bgnbd: BetaGeoModel) -> None:
    df = _population(5_000)
    f, r, t = df["frequency"], df["recency"] / 7, df["T"] / 7
    once = bgnbd.expected_purchases(13.0, f, r, t)  # one horizon: 2F1 per (frequency, T)
    each = bgnbd.expected_purchases(np.full(len(df), 13.0), f, r, t)  # one per customer
    np.testing.assert_array_equal(once, each)


def test_baseline_round_trips_through_a_dict(cdnow_days: pd.DataFrame) -> None:
    """`to_dict` is what a scoring batch stores; `from_dict` must predict exactly the same."""
    import json

    fitted = BaselineCLV().fit(cdnow_days)
    saved = json.loads(json.dumps(fitted.to_dict()))  # as it travels through the store
    loaded = BaselineCLV.from_dict(saved)
    pd.testing.assert_frame_equal(loaded.predict(cdnow_days, 90), fitted.predict(cdnow_days, 90))
    assert loaded.bgnbd_.params_ == fitted.bgnbd_.params_
    assert loaded.gamma_gamma_.population_mean_ == pytest.approx(
        fitted.gamma_gamma_.population_mean_, rel=1e-15)


def test_data_no_model_can_fit_raises_baseline_fit_error_naming_the_model() -> None:
    """What the data cannot fit is a `BaselineFitError` (a ValueError) naming the model,
    which `add_baseline_features` tolerates; invalid input is a plain ValueError, which it
    does not."""
    from training.baseline import BaselineFitError

    cases = [
        (lambda: BetaGeoModel().fit([0, 0], [0, 0], [5, 9]), "BG/NBD", "no customer has a"),
        (lambda: BetaGeoModel().fit([0], [0], [0]), "BG/NBD", "all T are 0"),
        (lambda: GammaGammaModel().fit([1] * 9, [5.0] * 9), "Gamma-Gamma",
         "9 customer(s) with frequency > 0"),
        (lambda: baseline_module._minimize_log_params(
            lambda lp: (float("nan"), np.zeros_like(lp)), np.zeros(2), "BG/NBD"), "BG/NBD",
         "did not converge"),
    ]
    for fit, model, words in cases:
        with pytest.raises(BaselineFitError) as err:
            fit()
        assert isinstance(err.value, ValueError) and err.value.model == model
        assert words in str(err.value)
    with pytest.raises(ValueError, match="recency must not exceed T") as err:
        BetaGeoModel().fit([1], [9], [5])
    assert not isinstance(err.value, BaselineFitError)


def test_baseline_without_gamma_gamma_predicts_bgnbd_and_round_trips(
        cdnow_days: pd.DataFrame) -> None:
    """``gamma_gamma_optional``: a Gamma-Gamma the data cannot fit (here: 9 repeat buyers)
    leaves order value and CLV NaN and BG/NBD's predictions as they are; the batch stores
    it as ``gamma_gamma: None`` and `from_dict` reads that back."""
    import json

    from training.baseline import BaselineFitError

    few = cdnow_days[cdnow_days["frequency"] == 0].head(200)
    few = pd.concat([few, cdnow_days[cdnow_days["frequency"] > 0].head(9)])
    with pytest.raises(BaselineFitError, match="Gamma-Gamma model: 9 customer"):
        BaselineCLV().fit(few)
    fitted = BaselineCLV().fit(few, gamma_gamma_optional=True)
    assert fitted.gamma_gamma_ is None
    assert "9 customer(s)" in str(fitted.gamma_gamma_error_)
    out = fitted.predict(few, 90)
    assert out[["expected_order_value", "predicted_clv"]].isna().all().all()
    assert out[["expected_orders", "p_alive", "churn_probability"]].notna().all().all()
    bgnbd = BetaGeoModel().fit(few["frequency"], few["recency"], few["T"])
    np.testing.assert_array_equal(out["p_alive"], bgnbd.p_alive(few["frequency"],
                                                                few["recency"], few["T"]))
    saved = json.loads(json.dumps(fitted.to_dict()))
    assert saved["gamma_gamma"] is None
    pd.testing.assert_frame_equal(BaselineCLV.from_dict(saved).predict(few, 90), out)


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: d.pop("bgnbd"), "bgnbd"),
        (lambda d: d["gamma_gamma"]["params"].pop("q"), "'q'"),
        (lambda d: d["bgnbd"]["params"].update(r=-1.0), "['r']"),
        (lambda d: d["gamma_gamma"]["params"].update(q=0.5), "['q']"),
    ],
)
def test_baseline_from_a_bad_dict_names_the_field(cdnow_days: pd.DataFrame, mutate,  # noqa: ANN001
                                                  words: str) -> None:
    saved = BaselineCLV().fit(cdnow_days).to_dict()
    mutate(saved)
    with pytest.raises(ValueError, match="not a saved BaselineCLV") as err:
        BaselineCLV.from_dict(saved)
    assert words in str(err.value)


def test_unfitted_baseline_has_no_dict() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        BaselineCLV().to_dict()
