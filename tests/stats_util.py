"""Error bars for time series from MD, and limits for tests that check several numbers at once.

The standard error of a time average of correlated samples is sqrt(g var / N), where g is the
statistical inefficiency (the integrated autocorrelation time in samples, counting both sides:
g = 1 + 2 sum_t (1 - t/N) C(t)). It is estimated the way pymbar's ``statisticalInefficiency``
(used by physical_validation) does: the normalised autocorrelation C(t) is summed until it first
drops to zero or below. This module has no pytest dependency, so benchmarks/seed_sweep/ can use it.

Every statistical test states a family-wise false-alarm rate ``FAMILY_ALPHA``: with k numbers
checked, each gets alpha / k (Bonferroni), so the test as a whole fails by chance at most that often.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

# Chance that one statistical test fails although the code is right (all its checks together).
# 1e-3 per test: the five slow ensemble tests together flake at most once in ~200 CI runs.
FAMILY_ALPHA = 1e-3


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation C(t), t = 0 .. N-1 (FFT, zero-padded: no wrap-around)."""
    x = np.asarray(x, dtype=float) - np.mean(x)
    n = len(x)
    f = np.fft.rfft(x, 2 * n)
    acov = np.fft.irfft(f * np.conj(f), 2 * n)[:n] / np.arange(n, 0, -1)
    if acov[0] <= 0:
        return np.ones(1)
    return acov / acov[0]


def statistical_inefficiency(x: np.ndarray, mintime: int = 3) -> float:
    """g >= 1: the number of correlated samples worth one independent sample (pymbar's estimator)."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    c = autocorrelation(x)
    g = 1.0
    for t in range(1, n - 1):
        if c[t] <= 0 and t > mintime:
            break
        g += 2.0 * c[t] * (1.0 - t / n)
    return max(1.0, g)


def standard_error(x: np.ndarray) -> float:
    """Standard error of the time average of a correlated series."""
    x = np.asarray(x, dtype=float)
    return float(np.sqrt(statistical_inefficiency(x) * x.var(ddof=1) / len(x)))


def mean_z(x: np.ndarray, reference: float) -> float:
    """(mean - reference) / standard error: N(0, 1) when the series samples a distribution of that mean."""
    return float((np.mean(x) - reference) / standard_error(x))


def variance_z(x: np.ndarray, reference_variance: float) -> float:
    """z of the sample variance against a reference; its error bar from the series (x - mean)^2."""
    y = (np.asarray(x, dtype=float) - np.mean(x)) ** 2
    return float((y.mean() - reference_variance) / standard_error(y))


def difference_z(x: np.ndarray, y: np.ndarray) -> float:
    """z of mean(x) - mean(y) for two independent runs."""
    return float((np.mean(x) - np.mean(y)) / np.hypot(standard_error(x), standard_error(y)))


def z_limit(n_checks: int, alpha: float = FAMILY_ALPHA) -> float:
    """Two-sided |z| bound for one of ``n_checks`` z-scores (Bonferroni at family-wise ``alpha``)."""
    return float(stats.norm.isf(alpha / (2 * n_checks)))


def p_limit(n_checks: int, alpha: float = FAMILY_ALPHA) -> float:
    """Smallest acceptable p-value for one of ``n_checks`` tests (Bonferroni)."""
    return alpha / n_checks


def thin(x: np.ndarray, n_samples: int) -> tuple[np.ndarray, int]:
    """``n_samples`` equally spaced samples of ``x`` (a fixed count, whatever the data) and the stride."""
    stride = len(x) // n_samples
    return np.asarray(x)[::stride][:n_samples], stride
