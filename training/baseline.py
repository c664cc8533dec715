"""Probabilistic CLV baseline: BG/NBD for purchase counts and Gamma-Gamma for order value.

These are hand-written maximum-likelihood implementations of

- the BG/NBD model of Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way:
  An Alternative to the Pareto/NBD Model", Marketing Science 24(2), 275-284; and
- the Gamma-Gamma spend model of Fader, Hardie & Lee (2005), "RFM and CLV: Using Iso-Value
  Curves for Customer Base Analysis", Journal of Marketing Research 42(4), 415-430.

Why not a library: ``lifetimes`` is unmaintained, pinned to old pandas and autograd, and the
package must not depend on it (it is used only in the tests, as a reference); PyMC-Marketing
pulls in PyMC and a compiler tool chain for a four-parameter maximum-likelihood fit. The models
below need numpy and scipy only: ``scipy.optimize.minimize`` over log-parameters with analytic
gradients, ``scipy.special`` (``gammaln``, ``digamma``, ``hyp2f1``, ``expit``) and log-sum-exp
forms for numerical stability.

Inputs, one row per customer (arrays, lists or pandas Series, all of the same length):

- ``frequency``: number of repeat purchases (purchase periods after the first one; with daily
  data, the number of distinct purchase days minus one), a non-negative integer;
- ``recency``: time from the first to the last purchase (0 when ``frequency`` is 0);
- ``T``: time from the first purchase to the end of the observation period (``recency <= T``);
- ``monetary_value``: mean value of the repeat purchases (first purchase excluded).

All times must be in the same unit, and the fitted BG/NBD ``alpha`` (and every ``t`` passed to
the prediction methods) is in that unit. Internally the optimiser divides all times by the
largest ``T`` (so they lie in [0, 1]) and the monetary values by their mean, which makes the
problem well conditioned whatever the unit; the parameters are converted back before being
stored, so ``params_`` always refers to the caller's units. :class:`BaselineCLV` works in days.

Scikit-learn conventions: ``__init__`` only stores its arguments, learned state ends in ``_``,
``fit`` returns ``self``. Nothing here keeps global state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import minimize
from scipy.special import digamma, expit, gammaln, hyp1f1, hyp2f1

__all__ = ["BaselineCLV", "BaselineFitError", "BetaGeoModel", "GammaGammaModel"]

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]

# Bounds on the log-parameters (in the internal, rescaled units) that keep exp() finite.
_LOG_BOUND = 25.0
# A fit whose optimiser reports failure is still accepted when the gradient of the mean
# negative log-likelihood (w.r.t. the log-parameters) is this small: L-BFGS-B often stops with
# "ABNORMAL_TERMINATION_IN_LNSRCH" at the optimum once it hits floating-point precision.
_GRAD_TOL = 1e-5
# Restarts of L-BFGS-B from where it stopped without converging (`_minimize_log_params`).
_RESTARTS = 3
_MIN_GAMMA_GAMMA_CUSTOMERS = 10


class BaselineFitError(ValueError):
    """Valid input on which a model cannot be fitted: a property of the data, not a mistake
    in it. BG/NBD with no repeat purchase (or no observation time), Gamma-Gamma with fewer
    than 10 repeat customers with positive spend or a spend so heavy-tailed that its mean
    is infinite (``q <= 1``), and an optimiser that does not converge. ``model`` names the
    model (``"BG/NBD"`` or ``"Gamma-Gamma"``). A ValueError, as these always were; invalid
    input (NaN, recency > T, ...) raises a plain ValueError."""

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message)
        self.model = model


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _as_float_array(values: ArrayLike, name: str) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric") from exc
    if arr.ndim > 1:
        raise ValueError(f"{name} must be one-dimensional (one value per customer)")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values")
    return arr


def _dot(a: ArrayLike, b: ArrayLike) -> float:
    """Sum of the elementwise product, without BLAS.

    ``np.dot`` on float vectors goes to OpenBLAS, whose threaded ``ddot`` stalls when the
    cores are busy: on a loaded 2-core machine one ``np.dot`` of 50k elements took ~40 ms
    against ~0.05 ms for this, and the likelihoods below take several per evaluation.
    """
    return float(np.multiply(a, b).sum())


def _check_rft(
    frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Validate and convert (frequency, recency, T); returns three arrays of equal shape."""
    x = _as_float_array(frequency, "frequency")
    tx = _as_float_array(recency, "recency")
    t_obs = _as_float_array(T, "T")
    if not (x.shape == tx.shape == t_obs.shape):
        raise ValueError(
            "frequency, recency and T must have the same length, got "
            f"{x.size}, {tx.size} and {t_obs.size}"
        )
    if x.size == 0:
        raise ValueError("empty input: need at least one customer")
    if (x < 0).any():
        raise ValueError("frequency must be non-negative")
    if (x != np.round(x)).any():
        raise ValueError("frequency must be a whole number of repeat purchases")
    if (tx < 0).any():
        raise ValueError("recency must be non-negative")
    if (t_obs < 0).any():
        raise ValueError("T must be non-negative")
    if (tx > t_obs).any():
        n_bad = int((tx > t_obs).sum())
        raise ValueError(f"recency must not exceed T ({n_bad} customer(s) with recency > T)")
    if ((x == 0) & (tx != 0)).any():
        raise ValueError("recency must be 0 for customers with frequency 0")
    return x, tx, t_obs


def _check_horizon(t: ArrayLike) -> FloatArray:
    arr = _as_float_array(t, "t")
    if (arr < 0).any():
        raise ValueError("the prediction horizon t must be non-negative")
    return arr


def _single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to one thread for the block (threadpoolctl, a scikit-learn dependency)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn always brings it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _minimize_log_params(
    objective: Callable[[FloatArray], tuple[float, FloatArray]],
    x0: FloatArray,
    model_name: str,
) -> FloatArray:
    """Minimise ``objective`` (value and gradient) over bounded log-parameters.

    L-BFGS-B also stops with ``ABNORMAL_TERMINATION_IN_LNSRCH`` where the objective is flat
    to within its own rounding error, with a gradient above ``_GRAD_TOL``: BG/NBD on a
    population whose drop-out shows no heterogeneity, where ``a`` and ``b`` run off
    together to large values (only ``a / (a + b)`` is identified) and the log-likelihood's
    terms lose precision (Complete Journey at 2017-03-03: a ~ e^15, b ~ e^24, finite
    differences of the objective dominated by rounding noise of ~1e-5). Then the fit is
    restarted from where it stopped, up to ``_RESTARTS`` times; a restart that cannot lower
    the objective at all means no better point can be told apart numerically, and that
    point is the fit. A restart that does lower it continues; if the restarts run out the
    fit fails as before."""
    # L-BFGS-B calls BLAS on vectors of 3-4 parameters: threads only add synchronisation,
    # which costs milliseconds per iteration when the cores are busy (see `_dot`).
    def run(start: FloatArray) -> Any:
        with _single_threaded_blas():
            return minimize(
                objective,
                start,
                jac=True,
                method="L-BFGS-B",
                bounds=[(-_LOG_BOUND, _LOG_BOUND)] * len(start),
                options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-9},
            )

    def converged(result: Any, grad: FloatArray) -> bool:
        return bool(result.success) or np.max(np.abs(grad)) <= _GRAD_TOL

    res = run(x0)
    value, grad = objective(res.x)
    done = converged(res, grad)
    for _ in range(_RESTARTS):
        if done or not np.isfinite(value):
            break
        again = run(res.x)
        value_again, grad_again = objective(again.x)
        if not value_again < value:  # no lower point found: the optimum, numerically
            done = True
            break
        res, value, grad = again, value_again, grad_again
        done = converged(res, grad)
    if not np.isfinite(value) or not np.all(np.isfinite(grad)):
        raise BaselineFitError(f"{model_name} fit did not converge: non-finite "
                               f"log-likelihood", model_name)
    if not done:
        raise BaselineFitError(f"{model_name} fit did not converge: {res.message}", model_name)
    return np.asarray(res.x, dtype=float)


# --------------------------------------------------------------------------------------------
# BG/NBD
# --------------------------------------------------------------------------------------------


def _bgnbd_loglik_terms(
    params: FloatArray, x: FloatArray, tx: FloatArray, t_obs: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per-customer BG/NBD log-likelihood and the pieces its gradient needs.

    Eq. (6) of Fader, Hardie & Lee (2005a), written as log-sum-exp:
    ``ll = A1 + A2 + log(exp(A3) + [x > 0] exp(A4))`` with
    ``A1 = lnG(r+x) - lnG(r) + r ln(alpha)``,
    ``A2 = lnB(a, b+x) - lnB(a, b)``,
    ``A3 = -(r+x) ln(alpha+T)``,
    ``A4 = ln(a) - ln(b+x-1) - (r+x) ln(alpha+t_x)``.
    Returns (ll, A1 + A2, w3, w4, A4 - A3) where w3, w4 are the softmax weights of A3, A4.
    """
    r, alpha, a, b = params
    has_repeat = x > 0
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + t_obs)
    a4 = np.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0) - (r + x) * np.log(alpha + tx)
    diff = np.where(has_repeat, a4 - a3, -np.inf)
    # log(exp(A3) + exp(A4)) = A3 + log1p(exp(A4 - A3)) = A3 + logaddexp(0, diff)
    ll = a1 + a2 + a3 + np.logaddexp(0.0, diff)
    w4 = expit(diff)
    w3 = 1.0 - w4
    return ll, a1 + a2, w3, w4, diff


def _bgnbd_objective(
    log_params: FloatArray,
    x: FloatArray,
    tx: FloatArray,
    t_obs: FloatArray,
    weights: FloatArray,
    penalizer: float,
) -> tuple[float, FloatArray]:
    """Mean weighted negative log-likelihood plus L2 penalty, and its gradient."""
    params = np.exp(log_params)
    r, alpha, a, b = params
    ll, _, w3, w4, _ = _bgnbd_loglik_terms(params, x, tx, t_obs)
    log_alpha_t = np.log(alpha + t_obs)
    log_alpha_tx = np.log(alpha + tx)
    d_r = digamma(r + x) - digamma(r) + np.log(alpha) - w3 * log_alpha_t - w4 * log_alpha_tx
    d_alpha = r / alpha - (r + x) * (w3 / (alpha + t_obs) + w4 / (alpha + tx))
    d_a = digamma(a + b) - digamma(a + b + x) + w4 / a
    d_b = (
        digamma(a + b)
        + digamma(b + x)
        - digamma(b)
        - digamma(a + b + x)
        - w4 / (b + np.maximum(x, 1.0) - 1.0)
    )
    total_w = weights.sum()
    value = -_dot(weights, ll) / total_w + penalizer * np.sum(params**2)
    grad_params = -np.array([_dot(weights, d) for d in (d_r, d_alpha, d_a, d_b)]) / total_w
    grad = grad_params * params + 2.0 * penalizer * params**2  # chain rule for log-params
    if not np.isfinite(value):
        return float("inf"), np.zeros_like(log_params)
    return float(value), grad


def _condense(
    columns: tuple[FloatArray, ...], weights: FloatArray
) -> tuple[tuple[FloatArray, ...], FloatArray]:
    """Identical rows of ``columns`` merged into one, their ``weights`` summed.

    Rows with zero weight are dropped. The distinct rows come out sorted (by the first
    column, then the next, ...), whatever the order of the input: the log-likelihood is
    then summed in one order, so the same customers in another row order fit the very
    same parameters (in order of appearance, a shuffled population moved them in the 8th
    digit). Its value equals that of the input (up to summation order).
    """
    keep = weights > 0
    if not keep.all():
        columns = tuple(c[keep] for c in columns)
        weights = weights[keep]
    codes, rep = _group_rows(columns)
    if rep.size < codes.size:
        weights = np.bincount(codes, weights=weights, minlength=rep.size)
        columns = tuple(c[rep] for c in columns)
    order = np.lexsort(columns[::-1])  # lexsort's last key is the primary one
    return tuple(c[order] for c in columns), weights[order]


def _group_rows(
    columns: tuple[FloatArray, ...],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(group code of every row, one row index per group) for the distinct rows of
    ``columns`` (1-d arrays of one length, no NaN): ``columns[i][rep][codes]`` equals
    ``columns[i]``. Hash-based (no sort); groups are numbered in order of appearance."""
    codes: npt.NDArray[np.intp] | None = None
    for col in columns:
        c, uniques = pd.factorize(col)
        codes = c if codes is None else pd.factorize(codes * len(uniques) + c)[0]
    assert codes is not None
    rep = np.empty(int(codes.max()) + 1 if codes.size else 0, dtype=np.intp)
    rep[codes] = np.arange(codes.size)  # any member represents its group: all are equal
    return codes, rep


class _BGNBDData:
    """Fixed inputs of one BG/NBD fit, factorised so the objective evaluates the special
    functions (``gammaln``, ``digamma``) once per distinct frequency and the logarithms once
    per distinct ``T`` and recency, leaving only arithmetic per row."""

    def __init__(self, x: FloatArray, tx: FloatArray, t_obs: FloatArray, w: FloatArray) -> None:
        self.x, self.w = x, w
        self.total_w = float(w.sum())
        self.has_repeat = x > 0
        self.ux, self.ix = np.unique(x, return_inverse=True)
        self.wx = np.bincount(self.ix, weights=w, minlength=self.ux.size)
        self.ut, self.it = np.unique(t_obs, return_inverse=True)
        self.utx, self.itx = np.unique(tx, return_inverse=True)


def _bgnbd_objective_factorised(
    log_params: FloatArray, d: _BGNBDData, penalizer: float
) -> tuple[float, FloatArray]:
    """`_bgnbd_objective`, computed with the factorisation of `_BGNBDData` (same value and
    gradient up to floating-point summation order)."""
    params = np.exp(log_params)
    r, alpha, a, b = params
    ux, w = d.ux, d.w
    with np.errstate(all="ignore"):
        # per distinct frequency: A1 + A2 of `_bgnbd_loglik_terms` and the digamma terms
        log_alpha = np.log(alpha)
        b_x = b + np.maximum(ux, 1.0) - 1.0
        dg_abx = digamma(a + b + ux)
        a12 = (
            gammaln(r + ux) - gammaln(r) + r * log_alpha
            + gammaln(a + b) + gammaln(b + ux) - gammaln(b) - gammaln(a + b + ux)
        )
        g_r = digamma(r + ux) - digamma(r) + log_alpha
        g_a = digamma(a + b) - dg_abx
        g_b = digamma(a + b) + digamma(b + ux) - digamma(b) - dg_abx
        # per distinct T and recency
        lt = np.log(alpha + d.ut)[d.it]
        ltx = np.log(alpha + d.utx)[d.itx]
        inv_t = (1.0 / (alpha + d.ut))[d.it]
        inv_tx = (1.0 / (alpha + d.utx))[d.itx]
        # per row: A3 and log(1 + exp(A4 - A3)), with A4 - A3 = -inf without repeat purchase
        rx = r + d.x
        diff = np.where(
            d.has_repeat, (np.log(a) - np.log(b_x))[d.ix] + rx * (lt - ltx), -np.inf
        )
        w4 = expit(diff)
        ww4 = w * w4
        sum_ll = _dot(d.wx, a12) + _dot(w, np.logaddexp(0.0, diff) - rx * lt)
        d_r = _dot(d.wx, g_r) - _dot(w, lt) - _dot(ww4, ltx - lt)
        d_alpha = d.total_w * r / alpha - _dot(w * rx, inv_t + w4 * (inv_tx - inv_t))
        d_a = _dot(d.wx, g_a) + ww4.sum() / a
        d_b = _dot(d.wx, g_b) - _dot(
            np.bincount(d.ix, weights=ww4, minlength=ux.size), 1.0 / b_x
        )
    value = -sum_ll / d.total_w + penalizer * np.sum(params**2)
    grad_params = -np.array([d_r, d_alpha, d_a, d_b]) / d.total_w
    grad = grad_params * params + 2.0 * penalizer * params**2
    if not np.isfinite(value):
        return float("inf"), np.zeros_like(log_params)
    return float(value), grad


def _one_minus_scaled_hyp2f1(
    k: FloatArray, a: FloatArray, b: FloatArray, c: FloatArray, z: FloatArray
) -> FloatArray:
    """``1 - (1 - z)^k 2F1(a, b; c; z)`` for 0 <= z < 1.

    The bracket of the BG/NBD expectations (eqs. 9 and 10). ``c = a + b + x - 1`` of the model
    can be negative (fits with ``a + b < 1`` happen on real data); the formula then still holds
    by analytic continuation but 2F1 may be negative, so no logarithm of it is taken there.
    Where 2F1 overflows, the Euler transform
    ``2F1(a, b; c; z) = (1 - z)^(c - a - b) 2F1(c - a, c - b; c; z)`` is used instead.
    Where 2F1 is positive, ``-expm1(...)`` keeps full precision for small horizons.
    """
    k, a, b, c, z = np.broadcast_arrays(k, a, b, c, z)
    log1mz = np.log1p(-z)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        f = hyp2f1(a, b, c, z)
        finite = np.isfinite(f)
        # the Euler transform only where 2F1 itself overflowed (hyp2f1 is the costly part)
        f_euler = np.full(f.shape, np.nan)
        if not finite.all():
            bad = ~finite
            f_euler[bad] = hyp2f1(c[bad] - a[bad], c[bad] - b[bad], c[bad], z[bad])
        log_abs = np.where(
            finite,
            np.log(np.abs(f)) + k * log1mz,
            np.log(np.abs(f_euler)) + (c - a - b + k) * log1mz,
        )
        sign = np.where(finite, np.sign(f), np.sign(f_euler))
        bracket = np.where(sign > 0, -np.expm1(log_abs), 1.0 - sign * np.exp(log_abs))
        lost = ~np.isfinite(bracket) & (k == a)
        if lost.any():
            bracket[lost] = _one_minus_confluent(a[lost], b[lost], c[lost], z[lost])
    return np.asarray(bracket, dtype=float)


def _one_minus_confluent(a: FloatArray, b: FloatArray, c: FloatArray, z: FloatArray
                         ) -> FloatArray:
    """``1 - (1 - z)^a 2F1(a, b; c; z)`` where scipy's 2F1 and its Euler transform both give
    NaN: a fit whose purchase rates show no heterogeneity (a log of Poisson buyers with one
    rate) runs ``r`` and ``alpha`` up together (r ~ 5e6, alpha ~ 2.5e8 seen), and
    ``a = r + x`` is then beyond 2F1's reach. By Pfaff's transform the product is
    ``2F1(a, c - b; c; w)`` with ``w = z / (z - 1)``, and for ``a`` this large, with ``a * w``
    (minus the expected purchases at the rate r / alpha) of moderate size, that is Kummer's
    ``1F1(c - b; c; a * w)`` up to O(1 / a) (the Poisson limit of the gamma mixture). Tested:
    where 2F1 still works (r = 1e3) the two agree to 1e-6 relative, and the expectations at
    r = 5e6 equal those at r = 1e4 (the same r / alpha) to 1e-3."""
    w = z / (z - 1.0)
    return np.asarray(1.0 - hyp1f1(c - b, c, a * w), dtype=float)


class BetaGeoModel:
    """BG/NBD model (Fader, Hardie & Lee 2005) fitted by maximum likelihood.

    While alive, a customer buys at Poisson rate ``lambda ~ Gamma(r, alpha)``; after every
    purchase they drop out with probability ``p ~ Beta(a, b)``. ``alpha`` has the unit of the
    times passed to :meth:`fit` (e.g. weeks for the CDNOW sample, days in :class:`BaselineCLV`).

    Parameters
    ----------
    penalizer:
        L2 penalty ``penalizer * (r^2 + alpha^2 + a^2 + b^2)`` added to the mean negative
        log-likelihood per customer, as in ``lifetimes``. ``alpha`` enters the penalty in the
        internal unit (times divided by the largest ``T``), so the penalty does not depend on
        the caller's time unit. Default 0.0 (pure maximum likelihood); a small value such as
        0.001 stabilises fits on small or degenerate data.

    Attributes
    ----------
    params_: dict with keys ``r``, ``alpha``, ``a``, ``b``.
    log_likelihood_: total (weighted) log-likelihood at ``params_``, in the caller's time unit,
        without the penalty.
    n_customers_: number of customers fitted (the sum of ``weights``; the number of rows when
        no weights are given).
    time_scale_: the divisor applied to all times inside the optimiser (the largest ``T``).
    """

    def __init__(self, penalizer: float = 0.0) -> None:
        self.penalizer = penalizer

    # -- fitting -------------------------------------------------------------------------

    def fit(
        self,
        frequency: ArrayLike,
        recency: ArrayLike,
        T: ArrayLike,
        weights: ArrayLike | None = None,
    ) -> BetaGeoModel:
        """Fit on one row per customer (or per distinct (frequency, recency, T) pattern).

        ``weights`` optionally gives the number of customers sharing each row's pattern (the
        condensed form used by Fader and Hardie); default one customer per row.
        Raises ValueError on invalid input, `BaselineFitError` (a ValueError) when the data
        has no repeat purchase or the optimiser does not converge.
        """
        if self.penalizer < 0:
            raise ValueError("penalizer must be non-negative")
        x, tx, t_obs = _check_rft(frequency, recency, T)
        if weights is None:
            w = np.ones_like(x)
        else:
            w = _as_float_array(weights, "weights")
            if w.shape != x.shape:
                raise ValueError(
                    f"weights must have one value per customer: got {w.size}, expected {x.size}"
                )
            if (w < 0).any() or w.sum() <= 0:
                raise ValueError("weights must be non-negative with a positive sum")
        scale = float(t_obs.max())
        if scale <= 0:
            raise BaselineFitError(
                "all T are 0: no observation time to fit the BG/NBD model on", "BG/NBD")
        if not ((x > 0) & (w > 0)).any():
            raise BaselineFitError(
                "no customer has a repeat purchase (all frequency are 0): the drop-out "
                "parameters a, b of the BG/NBD model cannot be estimated", "BG/NBD"
            )

        # Customers sharing (frequency, recency, T) contribute identical terms: fit on the
        # distinct rows with their counts as weights (the same likelihood, far fewer rows on
        # a large population), and evaluate the special functions once per distinct value.
        (x, tx, t_obs), w = _condense((x, tx, t_obs), w)
        data = _BGNBDData(x, tx / scale, t_obs / scale, w)

        def objective(lp: FloatArray) -> tuple[float, FloatArray]:
            return _bgnbd_objective_factorised(lp, data, float(self.penalizer))

        log_params = _minimize_log_params(objective, np.zeros(4), "BG/NBD")
        r, alpha_s, a, b = np.exp(log_params)
        self.params_ = {
            "r": float(r),
            "alpha": float(alpha_s * scale),
            "a": float(a),
            "b": float(b),
        }
        self.time_scale_ = scale
        ll, *_ = _bgnbd_loglik_terms(self._param_array(), x, tx, t_obs)
        self.log_likelihood_ = _dot(w, ll)
        self.n_customers_ = float(w.sum())
        return self

    # -- predictions ---------------------------------------------------------------------

    def _param_array(self) -> FloatArray:
        if not hasattr(self, "params_"):
            raise ValueError(f"{type(self).__name__} is not fitted yet: call fit first")
        p = self.params_
        return np.array([p["r"], p["alpha"], p["a"], p["b"]], dtype=float)

    def _log_odds_dead(self, x: FloatArray, tx: FloatArray, t_obs: FloatArray) -> FloatArray:
        """log of P(dead, history) / P(alive, history); -inf where frequency is 0."""
        r, alpha, a, b = self._param_array()
        log_div = (r + x) * (np.log(alpha + t_obs) - np.log(alpha + tx)) + np.log(
            a / (b + np.maximum(x, 1.0) - 1.0)
        )
        return np.where(x > 0, log_div, -np.inf)

    def p_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(alive at T | frequency, recency, T), one value per customer.

        ``1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x))``
        (Fader, Hardie & Lee 2008, note 021). A customer with no repeat purchase is alive with
        probability 1: in the BG/NBD model drop-out can only happen right after a purchase.
        """
        x, tx, t_obs = _check_rft(frequency, recency, T)
        return np.asarray(expit(-self._log_odds_dead(x, tx, t_obs)), dtype=float)

    def expected_purchases(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """E[X(T, T + t] | frequency, recency, T]: expected purchases in the next ``t`` periods.

        Eq. (10) of Fader, Hardie & Lee (2005a)::

            (a + b + x - 1) / (a - 1)
            * [1 - ((alpha + T) / (alpha + T + t))^(r + x) 2F1(r + x, b + x; a + b + x - 1; z)]
            / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x))

        with ``z = t / (alpha + T + t)``; the last factor is :meth:`p_alive`. ``t`` is a scalar
        or one value per customer, in the unit of the fit. Returns one value per customer.
        """
        x, tx, t_obs = _check_rft(frequency, recency, T)
        horizon = _check_horizon(t)
        r, alpha, a, b = self._param_array()
        if horizon.size == 1 and x.size > 1:
            # one horizon: the bracket depends on (frequency, T) only, so evaluate 2F1 once
            # per distinct pair (the same values, so the same results, as per customer)
            codes, rep = _group_rows((x, t_obs))
            xu, tu = x[rep], t_obs[rep]
            z = horizon / (alpha + tu + horizon)
            bracket = _one_minus_scaled_hyp2f1(r + xu, r + xu, b + xu, a + b + xu - 1.0, z)
            bracket = bracket.reshape(-1)[codes]
        else:
            z = horizon / (alpha + t_obs + horizon)
            bracket = _one_minus_scaled_hyp2f1(r + x, r + x, b + x, a + b + x - 1.0, z)
        p_alive = expit(-self._log_odds_dead(x, tx, t_obs))
        return np.asarray((a + b + x - 1.0) / (a - 1.0) * bracket * p_alive, dtype=float)

    def expected_purchases_new(self, t: ArrayLike) -> FloatArray:
        """E[X(t)] for a new customer in the first ``t`` periods after their first purchase.

        Eq. (9) of Fader, Hardie & Lee (2005a)::

            (a + b - 1) / (a - 1)
            * [1 - (alpha / (alpha + t))^r 2F1(r, b; a + b - 1; t / (alpha + t))]
        """
        horizon = _check_horizon(t)
        r, alpha, a, b = self._param_array()
        z = horizon / (alpha + horizon)
        bracket = _one_minus_scaled_hyp2f1(
            np.full_like(z, r),
            np.full_like(z, r),
            np.full_like(z, b),
            np.full_like(z, a + b - 1.0),
            z,
        )
        return np.asarray((a + b - 1.0) / (a - 1.0) * bracket, dtype=float)

    def probability_no_purchase(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """P(X(T, T + t] = 0 | frequency, recency, T): no purchase in the next ``t`` periods.

        The customer is either dead (no more purchases) or alive with posterior purchase rate
        ``lambda | alive, history ~ Gamma(r + x, alpha + T)`` (the likelihood of the history of
        an alive customer is ``(1 - p)^x lambda^x exp(-lambda T)``, so lambda and p separate),
        and an alive customer makes no purchase in ``t`` with probability ``exp(-lambda t)``::

            P(no purchase) = (1 - P(alive)) + P(alive) ((alpha + T) / (alpha + T + t))^(r + x)

        Returns one value per customer.
        """
        x, tx, t_obs = _check_rft(frequency, recency, T)
        horizon = _check_horizon(t)
        r, alpha, _, _ = self._param_array()
        log_odds_dead = self._log_odds_dead(x, tx, t_obs)
        p_alive = expit(-log_odds_dead)
        p_dead = expit(log_odds_dead)
        log_none_if_alive = -(r + x) * np.log1p(horizon / (alpha + t_obs))
        # P(dead) computed as expit(log-odds) rather than 1 - P(alive): no cancellation.
        p_none = p_dead + p_alive * np.exp(log_none_if_alive)
        return np.asarray(np.clip(p_none, 0.0, 1.0), dtype=float)


# --------------------------------------------------------------------------------------------
# Gamma-Gamma
# --------------------------------------------------------------------------------------------


def _gamma_gamma_objective(
    log_params: FloatArray, x: FloatArray, m: FloatArray, penalizer: float
) -> tuple[float, FloatArray]:
    params = np.exp(log_params)
    p, q, v = params
    px = p * x
    log_xm_v = np.log(x * m + v)
    ll = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(v)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * log_xm_v
    )
    d_p = x * (digamma(px + q) - digamma(px) + np.log(m) + np.log(x) - log_xm_v)
    d_q = digamma(px + q) - digamma(q) + np.log(v) - log_xm_v
    d_v = q / v - (px + q) / (x * m + v)
    n = x.size
    value = -ll.sum() / n + penalizer * np.sum(params**2)
    grad = -np.array([d_p.sum(), d_q.sum(), d_v.sum()]) / n * params + 2.0 * penalizer * params**2
    if not np.isfinite(value):
        return float("inf"), np.zeros_like(log_params)
    return float(value), grad


class _GammaGammaData:
    """Fixed inputs of one Gamma-Gamma fit: the parameter-free sums precomputed, the special
    functions left to one evaluation per distinct frequency."""

    def __init__(self, x: FloatArray, m: FloatArray) -> None:
        self.x, self.xm = x, x * m
        self.n = x.size
        self.ux, ix = np.unique(x, return_inverse=True)
        self.nx = np.bincount(ix, minlength=self.ux.size).astype(float)
        log_m, log_x = np.log(m), np.log(x)
        self.sum_log_m = float(log_m.sum())
        self.sum_x_log_m = _dot(x, log_m)
        self.sum_x_log_x = _dot(x, log_x)


def _gamma_gamma_objective_factorised(
    log_params: FloatArray, d: _GammaGammaData, penalizer: float
) -> tuple[float, FloatArray]:
    """`_gamma_gamma_objective` through `_GammaGammaData` (same value and gradient up to
    floating-point summation order): per row only ``log(x m + v)`` and ``1 / (x m + v)``."""
    params = np.exp(log_params)
    p, q, v = params
    pux = p * d.ux
    with np.errstate(all="ignore"):
        dg_pxq = digamma(pux + q)
        per_x = gammaln(pux + q) - gammaln(pux) - gammaln(q)
        log_xm_v = np.log(d.xm + v)
        inv_xm_v = 1.0 / (d.xm + v)
        x_dot_log = _dot(d.x, log_xm_v)
        sum_log = float(log_xm_v.sum())
        ll = (
            _dot(d.nx, per_x) + d.n * q * np.log(v) + p * d.sum_x_log_m - d.sum_log_m
            + p * d.sum_x_log_x - p * x_dot_log - q * sum_log
        )
        d_p = (
            _dot(d.nx, d.ux * (dg_pxq - digamma(pux)))
            + d.sum_x_log_m + d.sum_x_log_x - x_dot_log
        )
        d_q = _dot(d.nx, dg_pxq - digamma(q)) + d.n * np.log(v) - sum_log
        d_v = d.n * q / v - p * _dot(d.x, inv_xm_v) - q * inv_xm_v.sum()
    value = -ll / d.n + penalizer * np.sum(params**2)
    grad = -np.array([d_p, d_q, d_v]) / d.n * params + 2.0 * penalizer * params**2
    if not np.isfinite(value):
        return float("inf"), np.zeros_like(log_params)
    return float(value), grad


class GammaGammaModel:
    """Gamma-Gamma model of the mean order value (Fader, Hardie & Lee 2005b).

    Each order value of a customer is ``Gamma(p, nu)``; across customers ``nu ~ Gamma(q, v)``.
    ``v`` has the unit of ``monetary_value``. The model assumes spend is independent of the
    purchase process (check the correlation between frequency and monetary value).

    Parameters
    ----------
    penalizer:
        L2 penalty ``penalizer * (p^2 + q^2 + v^2)`` on the mean negative log-likelihood, with
        ``v`` in the internal unit (monetary values divided by their mean). Default 0.0.

    Attributes
    ----------
    params_: dict with keys ``p``, ``q``, ``v``.
    log_likelihood_: total log-likelihood of the customers used, in the caller's money unit.
    n_customers_: number of customers used (frequency > 0 and monetary_value > 0).
    population_mean_: ``p v / (q - 1)``, the expected order value of a customer with no
        repeat purchase.
    """

    def __init__(self, penalizer: float = 0.0) -> None:
        self.penalizer = penalizer

    def fit(self, frequency: ArrayLike, monetary_value: ArrayLike) -> GammaGammaModel:
        """Fit on one row per customer; only those with frequency > 0 and monetary_value > 0
        are used. Raises `BaselineFitError` (a ValueError) when fewer than 10 such customers
        remain, when the fit does not converge, or when the fitted ``q <= 1`` (infinite
        population mean spend); ValueError on invalid input.
        """
        if self.penalizer < 0:
            raise ValueError("penalizer must be non-negative")
        x, m = self._check(frequency, monetary_value)
        keep = (x > 0) & (m > 0)
        # sorted, so that the sums (the scale, the log-likelihood) and with them the fit are
        # the same for the same customers in any row order
        order = np.lexsort((m[keep], x[keep]))
        x, m = x[keep][order], m[keep][order]
        if x.size < _MIN_GAMMA_GAMMA_CUSTOMERS:
            raise BaselineFitError(
                "no repeat customers with positive spend to fit the Gamma-Gamma model: "
                f"{x.size} customer(s) with frequency > 0 and monetary_value > 0, "
                f"need at least {_MIN_GAMMA_GAMMA_CUSTOMERS}", "Gamma-Gamma"
            )
        scale = float(m.mean())
        data = _GammaGammaData(x, m / scale)

        def objective(lp: FloatArray) -> tuple[float, FloatArray]:
            return _gamma_gamma_objective_factorised(lp, data, float(self.penalizer))

        log_params = _minimize_log_params(objective, np.zeros(3), "Gamma-Gamma")
        p, q, v_s = np.exp(log_params)
        if q <= 1.0:
            raise BaselineFitError(
                f"Gamma-Gamma fit gave q = {q:.3g} <= 1: the population mean order value is "
                "infinite (spend too heavy-tailed); try a penalizer or cap extreme values",
                "Gamma-Gamma",
            )
        self.params_ = {"p": float(p), "q": float(q), "v": float(v_s * scale)}
        value, _ = _gamma_gamma_objective_factorised(
            np.log(self._param_array()), _GammaGammaData(x, m), 0.0
        )
        self.log_likelihood_ = float(-value * x.size)
        self.n_customers_ = int(x.size)
        self.population_mean_ = float(p * self.params_["v"] / (q - 1.0))
        return self

    @staticmethod
    def _check(frequency: ArrayLike, monetary_value: ArrayLike) -> tuple[FloatArray, FloatArray]:
        x = _as_float_array(frequency, "frequency")
        m = _as_float_array(monetary_value, "monetary_value")
        if x.shape != m.shape:
            raise ValueError(
                f"frequency and monetary_value must have the same length, got {x.size} and {m.size}"
            )
        if x.size == 0:
            raise ValueError("empty input: need at least one customer")
        if (x < 0).any():
            raise ValueError("frequency must be non-negative")
        if (m < 0).any():
            raise ValueError("monetary_value must be non-negative")
        return x, m

    def _param_array(self) -> FloatArray:
        if not hasattr(self, "params_"):
            raise ValueError(f"{type(self).__name__} is not fitted yet: call fit first")
        return np.array([self.params_[k] for k in ("p", "q", "v")], dtype=float)

    def conditional_expected_value(
        self, frequency: ArrayLike, monetary_value: ArrayLike
    ) -> FloatArray:
        """E[order value | frequency x, mean repeat order value m], one value per customer.

        ``p (v + x m) / (p x + q - 1)``: a weighted average of the population mean
        ``p v / (q - 1)`` and the customer's own mean ``m``, with weight ``p x / (p x + q - 1)``
        on the latter. Customers with ``frequency == 0`` get the population mean.
        """
        x, m = self._check(frequency, monetary_value)
        p, q, v = self._param_array()
        m = np.where(x > 0, m, 0.0)
        return np.asarray(p * (v + x * m) / (p * x + q - 1.0), dtype=float)


# --------------------------------------------------------------------------------------------
# combined baseline
# --------------------------------------------------------------------------------------------

_SUMMARY_COLUMNS = ("frequency", "recency", "T", "monetary_value")


def _check_summary(summary_df: pd.DataFrame) -> None:
    if not isinstance(summary_df, pd.DataFrame):
        raise ValueError("summary_df must be a pandas DataFrame")
    missing = [c for c in _SUMMARY_COLUMNS if c not in summary_df.columns]
    if missing:
        raise ValueError(f"summary_df is missing column(s): {', '.join(missing)}")
    if len(summary_df) == 0:
        raise ValueError("empty input: summary_df has no rows")


class BaselineCLV:
    """BG/NBD + Gamma-Gamma baseline for churn probability and customer lifetime value.

    Works in days: ``frequency`` (repeat purchase days), ``recency`` and ``T`` in days, and
    ``monetary_value`` the mean value of the repeat purchases. The fitted BG/NBD ``alpha`` is
    therefore per day (the optimiser rescales internally, see the module docstring).

    Parameters
    ----------
    bgnbd_penalizer, gamma_gamma_penalizer:
        passed to :class:`BetaGeoModel` and :class:`GammaGammaModel` (default 0.0).

    Attributes
    ----------
    bgnbd_: the fitted :class:`BetaGeoModel`.
    gamma_gamma_: the fitted :class:`GammaGammaModel`, or None when ``fit`` was told the
        Gamma-Gamma part may fail and it did (``gamma_gamma_error_`` says why).
    """

    def __init__(self, bgnbd_penalizer: float = 0.0, gamma_gamma_penalizer: float = 0.0) -> None:
        self.bgnbd_penalizer = bgnbd_penalizer
        self.gamma_gamma_penalizer = gamma_gamma_penalizer

    def fit(self, summary_df: pd.DataFrame, *, gamma_gamma_optional: bool = False
            ) -> BaselineCLV:
        """Fit both models on one row per customer with columns frequency, recency, T,
        monetary_value (days). Negative monetary values (net returns) are allowed: those
        customers are left out of the Gamma-Gamma fit like those with zero spend.

        Raises `BaselineFitError` when the data cannot fit a model. With
        ``gamma_gamma_optional``, a Gamma-Gamma model the data cannot fit (fewer than 10
        repeat customers with positive spend, a spend too heavy-tailed) leaves
        ``gamma_gamma_`` None and the error in ``gamma_gamma_error_`` instead: `predict`
        then gives NaN order values and CLV, and BG/NBD's predictions as usual.
        """
        _check_summary(summary_df)
        self.bgnbd_ = BetaGeoModel(penalizer=self.bgnbd_penalizer).fit(
            summary_df["frequency"], summary_df["recency"], summary_df["T"]
        )
        monetary = np.clip(_as_float_array(summary_df["monetary_value"], "monetary_value"), 0, None)
        self.gamma_gamma_error_: BaselineFitError | None = None
        try:
            self.gamma_gamma_: GammaGammaModel | None = GammaGammaModel(
                penalizer=self.gamma_gamma_penalizer).fit(summary_df["frequency"], monetary)
        except BaselineFitError as exc:
            if not gamma_gamma_optional:
                raise
            self.gamma_gamma_, self.gamma_gamma_error_ = None, exc
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fitted parameters as plain JSON-able values (what `from_dict` takes back):
        stored with a scoring batch so that real-time scoring uses the very baseline the
        batch used, without refitting it on the population."""
        if not hasattr(self, "bgnbd_"):
            raise ValueError("BaselineCLV is not fitted yet: call fit first")
        bg, gg = self.bgnbd_, self.gamma_gamma_
        return {
            "bgnbd": {"params": dict(bg.params_), "penalizer": float(bg.penalizer),
                      "n_customers": float(bg.n_customers_),
                      "log_likelihood": float(bg.log_likelihood_)},
            # None: the data could not fit it (`fit` with gamma_gamma_optional)
            "gamma_gamma": None if gg is None else {
                "params": dict(gg.params_), "penalizer": float(gg.penalizer),
                "n_customers": int(gg.n_customers_),
                "log_likelihood": float(gg.log_likelihood_)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineCLV:
        """A fitted baseline from `to_dict`'s output (``gamma_gamma`` None: one whose
        Gamma-Gamma part could not be fitted). Raises ValueError naming the missing or
        invalid field."""
        try:
            bgd, ggd = data["bgnbd"], data["gamma_gamma"]
            bg_params = {k: float(bgd["params"][k]) for k in ("r", "alpha", "a", "b")}
            gg_params = ({} if ggd is None else
                         {k: float(ggd["params"][k]) for k in ("p", "q", "v")})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a saved BaselineCLV: field {exc} missing or invalid") from exc
        bad = [k for k, v in {**bg_params, **gg_params}.items() if not (np.isfinite(v) and v > 0)]
        if bad or gg_params.get("q", 2.0) <= 1.0:
            raise ValueError(f"not a saved BaselineCLV: invalid parameter(s) {bad or ['q']}")
        self = cls(float(bgd.get("penalizer", 0.0)),
                   float((ggd or {}).get("penalizer", 0.0)))
        bg = BetaGeoModel(self.bgnbd_penalizer)
        bg.params_ = bg_params
        bg.n_customers_ = float(bgd.get("n_customers", 0.0))
        bg.log_likelihood_ = float(bgd.get("log_likelihood", float("nan")))
        self.bgnbd_, self.gamma_gamma_, self.gamma_gamma_error_ = bg, None, None
        if ggd is None:
            return self
        gg = GammaGammaModel(self.gamma_gamma_penalizer)
        gg.params_ = gg_params
        gg.n_customers_ = int(ggd.get("n_customers", 0))
        gg.log_likelihood_ = float(ggd.get("log_likelihood", float("nan")))
        p, q, v = (gg_params[k] for k in ("p", "q", "v"))
        gg.population_mean_ = p * v / (q - 1.0)
        self.gamma_gamma_ = gg
        return self

    def predict(self, summary_df: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
        """Predict over the next ``horizon_days`` days, one row per customer in and out.

        Returns a DataFrame with the index of ``summary_df`` and columns

        - ``expected_orders``: expected number of purchases in the horizon (BG/NBD eq. 10);
        - ``p_alive``: probability the customer is still alive now;
        - ``expected_order_value``: Gamma-Gamma conditional expected order value (negative mean
          values are clipped to 0 first; frequency 0 gives the population mean; NaN when
          the Gamma-Gamma part could not be fitted, see `fit`);
        - ``predicted_clv``: ``expected_orders * expected_order_value``, undiscounted;
        - ``churn_probability``: probability of no purchase in the horizon,
          ``(1 - p_alive) + p_alive ((alpha + T) / (alpha + T + t))^(r + x)``, see
          :meth:`BetaGeoModel.probability_no_purchase`.
        """
        if not hasattr(self, "bgnbd_"):
            raise ValueError("BaselineCLV is not fitted yet: call fit first")
        _check_summary(summary_df)
        horizon = float(horizon_days)
        if not np.isfinite(horizon) or horizon <= 0:
            raise ValueError(f"horizon_days must be a positive number, got {horizon_days!r}")
        freq, rec, t_obs = summary_df["frequency"], summary_df["recency"], summary_df["T"]
        expected_orders = self.bgnbd_.expected_purchases(horizon, freq, rec, t_obs)
        p_alive = self.bgnbd_.p_alive(freq, rec, t_obs)
        churn = self.bgnbd_.probability_no_purchase(horizon, freq, rec, t_obs)
        monetary = np.clip(_as_float_array(summary_df["monetary_value"], "monetary_value"), 0, None)
        order_value = (np.full(len(monetary), np.nan) if self.gamma_gamma_ is None
                       else self.gamma_gamma_.conditional_expected_value(freq, monetary))
        out: dict[str, Any] = {
            "expected_orders": expected_orders,
            "p_alive": p_alive,
            "expected_order_value": order_value,
            "predicted_clv": expected_orders * order_value,
            "churn_probability": churn,
        }
        return pd.DataFrame(out, index=summary_df.index)
