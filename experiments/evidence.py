"""Statistics and verdicts shared by the claim experiments.

Every experiment states its criterion in code *before* it runs (a module-level
:class:`Criterion`), and its verdict is computed from the recorded rows by that criterion's
``decide`` function, never written by hand. The helpers here fix the statistical language
the reports use:

* Runs with the same seed share the initialisation and the data order, so two methods are
  compared by **paired differences** over seeds: mean +- standard error, a two-sided 95%
  t-interval and a paired t-test (:func:`paired`).
* A difference is called "within noise" only when its interval includes zero
  (:func:`describe_difference`).
* The best learning rate of a cell on the edge of its grid is not a result:
  :func:`best_on_grid` says which edge, and :func:`next_grid_point` proposes the 2x step
  that extends the grid (bounded), so a sweep can continue until the best is interior.

Example:
  >>> d = paired({0: 0.91, 1: 0.90, 2: 0.92}, {0: 0.88, 1: 0.88, 2: 0.895})
  >>> round(d.mean, 4), d.n
  (0.025, 3)
  >>> describe_difference(d)
  'higher'
  >>> describe_difference(paired({0: 0.91, 1: 0.90}, {0: 0.88, 1: 0.89}))
  'within noise'

References:
  Student (W. S. Gosset), "The probable error of a mean", Biometrika 6(1), 1908 (the t
  distribution behind the paired interval).
  B. Efron, R. Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall, 1993
  (percentile bootstrap intervals).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy import stats

# "budget-bound": rule 1 of issue 23 (a pre-registered flattening test of the base batch's
# training loss) failed, so the claim is not scored, neither supported nor contradicted
Verdict = Literal["supported", "contradicted", "inconclusive", "budget-bound"]
VERDICTS: tuple[Verdict, ...] = ("supported", "contradicted", "inconclusive", "budget-bound")
Edge = Literal["low", "high"]


class Interval(NamedTuple):
    """Summary of a sample of (paired) differences or values.

    Attributes:
      mean: the sample mean (NaN when ``n == 0``).
      se: the standard error of the mean (NaN when ``n < 2``).
      lo: lower end of the two-sided confidence interval (t-based).
      hi: upper end of the interval.
      n: the number of finite values used.
      p: two-sided p-value of the t-test against zero (NaN when ``n < 2``).
      positive: how many values are > 0 (for "higher in k of n seeds").
    """

    mean: float
    se: float
    lo: float
    hi: float
    n: int
    p: float
    positive: int

    def includes_zero(self) -> bool:
        """Whether the interval contains zero (also True when it is undefined)."""
        return not (self.lo > 0 or self.hi < 0)

    def fmt(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """``mean ± se [lo, hi] (n=…)`` with values multiplied by ``scale``."""
        if self.n == 0:
            return "no data"
        f = lambda x: "n/a" if not math.isfinite(x) else f"{scale * x:+.{digits}f}"
        return (f"{f(self.mean)}{unit} ± {abs(scale * self.se):.{digits}f} "
                f"[{f(self.lo)}, {f(self.hi)}] (n={self.n})")


def interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean, standard error and t-interval of the finite ``values``.

    Args:
      values: the sample (NaN and infinities are dropped).
      confidence: coverage of the two-sided interval.

    Returns:
      An :class:`Interval`; with one value its interval is undefined (NaN ends, which
      :meth:`Interval.includes_zero` treats as including zero).
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0, math.nan, 0)
    mean = float(v.mean())
    positive = int((v > 0).sum())
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, 1, math.nan, positive)
    se = float(v.std(ddof=1) / math.sqrt(n))
    if se == 0.0:
        lo = hi = mean
        p = 1.0 if mean == 0 else 0.0
    else:
        half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * se
        lo, hi = mean - half, mean + half
        p = float(2 * stats.t.sf(abs(mean / se), df=n - 1))
    return Interval(mean, se, lo, hi, n, p, positive)


def paired(a: Mapping[Any, float], b: Mapping[Any, float],
           confidence: float = 0.95) -> Interval:
    """Paired differences ``a[k] - b[k]`` over the keys (seeds) both arms finished.

    Args:
      a: value per pairing key (usually the seed) for the first arm.
      b: the same for the second arm.
      confidence: coverage of the interval.

    Returns:
      The :class:`Interval` of the differences; keys missing from either arm, or whose
      value is not finite in either arm, are left out (so ``n`` counts complete pairs).
    """
    keys = [k for k in a if k in b]
    diffs = [a[k] - b[k] for k in keys
             if a[k] is not None and b[k] is not None
             and math.isfinite(a[k]) and math.isfinite(b[k])]
    return interval(diffs, confidence)


def describe_difference(d: Interval, margin: float = 0.0) -> str:
    """Words for a difference, used the same way in every report.

    Returns ``"no data"`` without pairs, ``"within noise"`` when the interval includes
    zero, ``"within margin"`` when it excludes zero but lies inside ``[-margin, margin]``,
    otherwise ``"higher"`` or ``"lower"``.
    """
    if d.n == 0:
        return "no data"
    if d.includes_zero():
        return "within noise"
    if margin > 0 and -margin <= d.lo and d.hi <= margin:
        return "within margin"
    return "higher" if d.mean > 0 else "lower"


Status = Literal["holds", "fails", "undecided"]


def margin_status(d: Interval, low: float = -math.inf, high: float = math.inf,
                  min_n: int = 4) -> tuple[Status, str]:
    """Issue 23's rule 4: a quantity *holds* only when its whole 95% interval lies inside
    ``[low, high]``, *fails* only when the whole interval lies beyond it, else undecided.

    Args:
      d: the interval (e.g. of paired differences over evaluation seeds).
      low: lower end of the margin (``-inf``: no lower end).
      high: upper end of the margin.
      min_n: fewer values than this decide nothing (rule 3: at least 4 evaluation seeds).

    Returns:
      ``(status, reason)``; the reason names the interval's position.

    Example:
      >>> margin_status(Interval(-0.5, 0.1, -0.8, -0.2, 4, 0.01, 0), low=-1.0)
      ('holds', 'interval [-0.8, -0.2] inside [-1, inf]')
      >>> margin_status(Interval(-1.1, 0.1, -1.4, -0.8, 4, 0.01, 0), low=-1.0)[0]
      'undecided'
      >>> margin_status(Interval(-2.0, 0.1, -2.3, -1.7, 4, 0.01, 0), low=-1.0)[0]
      'fails'
    """
    band = f"[{low:g}, {high:g}]"
    if d.n < min_n:
        return "undecided", f"n={d.n} < {min_n} evaluation seeds"
    if not (math.isfinite(d.lo) and math.isfinite(d.hi)):
        return "undecided", "no finite interval"
    where = f"interval [{d.lo:.3g}, {d.hi:.3g}]"
    if low <= d.lo and d.hi <= high:
        return "holds", f"{where} inside {band}"
    if d.hi < low or d.lo > high:
        return "fails", f"{where} wholly outside {band}"
    return "undecided", f"{where} overlaps the edge of {band}"


def bootstrap_interval(statistic: Callable[[np.ndarray], float], samples: Sequence[Any],
                       n_boot: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap interval of ``statistic`` over resampled ``samples``.

    Args:
      statistic: maps an array of resampled items (first axis) to a number; resamples
        where it is not finite are dropped.
      samples: the items (e.g. one row per batch size); resampled with replacement.
      n_boot: number of bootstrap resamples.
      confidence: coverage of the interval.
      seed: seed of the resampling (fixed, so reports regenerate identically).

    Returns:
      ``(estimate on the full sample, lo, hi)``.
    """
    arr = np.asarray(samples)
    rng = np.random.default_rng(seed)
    est = float(statistic(arr))
    boots = []
    for _ in range(n_boot):
        s = float(statistic(arr[rng.integers(0, len(arr), len(arr))]))
        if math.isfinite(s):
            boots.append(s)
    if not boots:
        return est, math.nan, math.nan
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return est, float(lo), float(hi)


def best_on_grid(scores: Mapping[float, float]) -> tuple[float | None, Edge | None]:
    """The grid point with the highest finite score, and which edge it is on, if any.

    Args:
      scores: score (e.g. accuracy) per grid value (e.g. learning rate); NaN for a run
        that diverged or did not finish.

    Returns:
      ``(best value, None)`` when the best is interior, ``(best, "low")`` or
      ``(best, "high")`` when it is the smallest or largest grid value (a one-point grid
      is on both edges and reports ``"low"``), ``(None, None)`` when nothing finished.

    Example:
      >>> best_on_grid({0.1: 0.80, 0.2: 0.85, 0.4: 0.83})
      (0.2, None)
      >>> best_on_grid({0.1: 0.80, 0.2: 0.85})
      (0.2, 'high')
    """
    finite = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None, None
    best = max(finite, key=lambda k: finite[k])
    grid = sorted(scores)
    if best == grid[0]:
        return best, "low"
    if best == grid[-1]:
        return best, "high"
    return best, None


def next_grid_point(scores: Mapping[float, float], factor: float = 2.0,
                    bounds: tuple[float, float] = (0.0, math.inf)) -> float | None:
    """The grid value to add so that the best moves off the edge, or None.

    Returns ``min(grid) / factor`` when the best is on the low edge, ``max(grid) * factor``
    when it is on the high edge, and None when the best is interior, nothing finished, or
    the new value would leave ``bounds`` (then the cell stays marked as on an edge).

    Example:
      >>> next_grid_point({0.1: 0.80, 0.2: 0.85})
      0.4
      >>> next_grid_point({0.1: 0.80, 0.2: 0.85}, bounds=(0.0, 0.3)) is None
      True
    """
    _, edge = best_on_grid(scores)
    if edge is None:
        return None
    grid = sorted(scores)
    new = grid[0] / factor if edge == "low" else grid[-1] * factor
    return new if bounds[0] <= new <= bounds[1] else None


@dataclass(frozen=True)
class Criterion:
    """A claim's test, fixed in code before the experiment runs.

    Attributes:
      claim: the published claim, in one sentence, with its source.
      rule: the decision rule in words, as the report prints it (must describe exactly
        what ``decide`` does).
      decide: maps the experiment's rows to ``(verdict, details)``; ``details`` is a list
        of markdown lines giving the numbers the verdict rests on.
    """

    claim: str
    rule: str
    decide: Callable[[Sequence[Mapping[str, Any]]], tuple[Verdict, list[str]]]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> tuple[Verdict, list[str]]:
        verdict, details = self.decide(rows)
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        return verdict, details

    def section(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """Markdown for a report: claim, pre-set rule, computed verdict and its numbers."""
        verdict, details = self(rows)
        return "\n".join([f"**Claim.** {self.claim}", "",
                          f"**Criterion (fixed before the run).** {self.rule}", "",
                          f"**Verdict (computed from the rows): {verdict}.**", "",
                          *details])


def fit_steps_to_target(batch_sizes: Sequence[float], steps: Sequence[float],
                        b_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """Fits McCandlish et al.'s ``S = S_min (1 + B_noise / B)`` to steps-to-target data.

    The fit is least squares on ``log S`` (each batch size weighs the same, whatever its
    number of steps); for a given ``B_noise`` the best ``log S_min`` is the mean residual,
    so only ``B_noise`` is searched (bounded, on a log scale). Since ``E = B S``, the same
    fit gives ``E = E_min (1 + B / B_noise)`` with ``E_min = S_min B_noise``, hence
    ``B_crit = E_min / S_min = B_noise``.

    Args:
      batch_sizes: the batch sizes (> 0).
      steps: the steps to reach the target at each batch size (> 0).
      b_range: the search range of ``B_noise`` (default: 1/100 of the smallest to 100x the
        largest batch size).

    Returns:
      ``(S_min, B_noise)``. ``B_noise`` is ``0.0`` or ``inf`` when the best fit lies on the
      lower or upper end of the range (steps that do not fall with B, or that fall as 1/B
      throughout: the data do not locate the bend); NaN values with fewer than 2 distinct
      batch sizes.

    Example:
      >>> s_min, b_noise = fit_steps_to_target([64, 256, 1024, 4096],
      ...                                      [100 * (1 + 500 / b) for b in (64, 256, 1024, 4096)])
      >>> round(s_min), round(b_noise)
      (100, 500)

    References:
      S. McCandlish, J. Kaplan, D. Amodei, OpenAI Dota Team, "An Empirical Model of
      Large-Batch Training", arXiv 1812.06162, 2018 (eqs. 2.11-2.12).
    """
    from scipy.optimize import minimize_scalar

    b = np.asarray(batch_sizes, np.float64)
    s = np.asarray(steps, np.float64)
    if b.shape != s.shape or np.any(b <= 0) or np.any(s <= 0):
        raise ValueError("batch_sizes and steps must be positive and of equal length")
    if np.unique(b).size < 2:
        return math.nan, math.nan
    lo, hi = b_range or (b.min() / 100, b.max() * 100)
    logs = np.log(s)

    def loss(v: float) -> float:
        r = logs - np.log1p(math.exp(v) / b)
        return float(np.sum((r - r.mean()) ** 2))

    grid = np.linspace(math.log(lo), math.log(hi), 200)
    resid = logs[None, :] - np.log1p(np.exp(grid)[:, None] / b[None, :])
    v0 = grid[int(np.argmin(((resid - resid.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)))]
    step = grid[1] - grid[0]
    res = minimize_scalar(loss, bounds=(max(grid[0], v0 - step), min(grid[-1], v0 + step)),
                          method="bounded")
    v = float(res.x)
    b_noise = math.exp(v)
    s_min = float(math.exp(np.mean(logs - np.log1p(b_noise / b))))
    if v <= grid[0] + 1e-6 * step or v0 == grid[0]:
        return s_min, 0.0
    if v >= grid[-1] - 1e-6 * step or v0 == grid[-1]:
        return s_min, math.inf
    return s_min, b_noise
