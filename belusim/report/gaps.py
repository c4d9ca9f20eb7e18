"""Inter-token gaps of a run too long to keep one by one: a logarithmic histogram.

A request leaves one gap per output token after its first; the conversation trace averages
343, so a million requests would keep 2.7 GB of float64 gaps for five statistics. Beyond a
budget of gaps (`run.itl_exact_gaps`), the recorder folds them into this histogram instead:
counts in buckets whose edges grow by a constant ratio, so a quantile comes back within
`rel` (relative) of the exact order statistic, and count, min, max, mean and variance are
kept exactly as running moments (Chan et al.'s pairwise update, one batch at a time). The
same idea as DDSketch (Masson et al., VLDB 2019), with a fixed range: a few hundred KB
whatever the run's length.
"""

from __future__ import annotations

import math

import numpy as np

_LOW_S, _HIGH_S = 1e-9, 1e6  # gaps outside are counted in the end buckets (min/max stay exact)


class GapHistogram:
    def __init__(self, rel: float = 1e-3):
        if not 0 < rel < 1:
            raise ValueError(f"relative resolution must be in (0, 1), got {rel}")
        self.rel = rel
        self._ln_gamma = math.log((1 + rel) / (1 - rel))
        self._k0 = math.ceil(math.log(_LOW_S) / self._ln_gamma)
        self.counts = np.zeros(math.ceil(math.log(_HIGH_S) / self._ln_gamma) - self._k0 + 1, dtype=np.int64)
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean
        self.min = math.inf
        self.max = -math.inf

    def add(self, gaps: np.ndarray) -> None:
        """Fold a batch of gaps (seconds) in."""
        x = np.asarray(gaps, dtype=np.float64)
        if not x.size:
            return
        nb, mb = x.size, float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self._m2 += m2b + delta * delta * self.n * nb / n
        self.n = n
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        k = np.ceil(np.log(np.clip(x, _LOW_S, _HIGH_S)) / self._ln_gamma).astype(np.int64) - self._k0
        np.clip(k, 0, self.counts.size - 1, out=k)
        self.counts += np.bincount(k, minlength=self.counts.size)

    def _order_statistic(self, i: int, cum: np.ndarray) -> float:
        """The i-th smallest gap (0-based), to within rel: its bucket's midpoint in ratio
        (the smallest and largest exactly)."""
        if i == 0:
            return self.min
        if i == self.n - 1:
            return self.max
        b = int(np.searchsorted(cum, i, side="right"))
        gamma = math.exp(self._ln_gamma)
        v = 2 * gamma ** (b + self._k0) / (gamma + 1)
        return min(max(v, self.min), self.max)

    def percentile(self, q: float) -> float:
        """numpy.percentile's default (linear between the two order statistics around rank
        (n - 1) q / 100), each order statistic to within rel."""
        if not self.n:
            return math.nan
        cum = np.cumsum(self.counts)
        h = (self.n - 1) * q / 100
        lo = math.floor(h)
        a = self._order_statistic(lo, cum)
        if h == lo:
            return a
        b = self._order_statistic(lo + 1, cum)
        return a + (b - a) * (h - lo)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.n) if self.n else math.nan
