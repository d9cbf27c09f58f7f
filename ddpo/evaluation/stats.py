"""Means with 95 % confidence intervals over prompts, and paired differences of two evaluations.

The unit of an evaluation is the prompt: each prompt's images are averaged first, and the
interval is Student's t interval of the mean of those per-prompt values (the images of one
prompt are not independent draws of the prompt set). Two evaluations of the same prompts with
the same seeds are compared prompt by prompt (a paired t interval of the differences), which
removes the prompts' own spread from the comparison.
"""

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Difference", "Interval", "mean_interval", "paired_difference", "t_quantile_975"]

# Student's t distribution's 0.975 quantile for 1 to 30 degrees of freedom (two-sided 95 %).
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
# Beyond 30: (degrees of freedom, quantile), interpolated linearly in 1 / df towards 1.960.
_T_975_TAIL = ((30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980), (math.inf, 1.960))


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (3 decimals; above 30
    interpolated in ``1 / df`` between tabulated values, exact at 40, 60 and 120).

    Raises:
        ValueError: if ``df < 1``.
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an int >= 1, got {df!r}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    for (lo, q_lo), (hi, q_hi) in itertools.pairwise(_T_975_TAIL):
        if lo <= df <= hi:
            inv = lambda d: 0.0 if math.isinf(d) else 1.0 / d  # noqa: E731
            frac = (inv(lo) - inv(df)) / (inv(lo) - inv(hi))
            return q_lo + frac * (q_hi - q_lo)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` prompts and its two-sided 95 % confidence interval ``[low, high]``
    (``low == high == mean`` for one prompt: no spread to estimate)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Interval":
        return cls(float(data["mean"]), float(data["low"]), float(data["high"]), int(data["n"]))


def mean_interval(values: Sequence[float]) -> Interval:
    """The mean of ``values`` (one per prompt) with Student's t 95 % interval.

    Raises:
        ValueError: for no values or a value that is not finite.
    """
    data = [float(v) for v in values]
    if not data:
        raise ValueError("mean_interval needs at least one value")
    if not all(math.isfinite(v) for v in data):
        raise ValueError(f"mean_interval needs finite values, got {data[:8]}")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return Interval(mean, mean, mean, 1)
    variance = math.fsum((v - mean) ** 2 for v in data) / (n - 1)
    half = t_quantile_975(n - 1) * math.sqrt(variance / n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class Difference:
    """``a - b`` over the same prompts: the paired mean difference with its 95 % interval, and
    whether the interval excludes 0 (the difference is larger than its interval's half-width)."""

    interval: Interval
    significant: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.interval.to_json(), "significant": self.significant}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """The per-prompt differences ``a[i] - b[i]`` as a `Difference`.

    Raises:
        ValueError: if the two have different lengths (not the same prompts), or as
            `mean_interval`.
    """
    if len(a) != len(b):
        raise ValueError(
            f"paired_difference needs one value per prompt in both, got {len(a)} and {len(b)}"
        )
    interval = mean_interval([float(x) - float(y) for x, y in zip(a, b, strict=True)])
    significant = interval.n > 1 and (interval.low > 0 or interval.high < 0)
    return Difference(interval, significant)
