"""A deterministic synthetic accuracy predictor for search tests (no training, no data).

Accuracy rises with BitOPs with diminishing returns (a saturating curve of log BitOPs) plus a
fixed random linear term on the one-hot encoding, so the accuracy-BitOPs trade-off is real but
not a function of BitOPs alone.
"""

from __future__ import annotations

import numpy as np

from qcompile.search.cost import bitops
from qcompile.search.encoding import encode, encoding_size


class SyntheticPredictor:
    def __init__(self, space, seed: int = 0, noise: float = 0.0015) -> None:
        self.space = space
        rng = np.random.default_rng(seed)
        self.w = rng.normal(0.0, noise, size=encoding_size(space))
        lo = np.log(max(bitops(space, space.smallest(bits=2)), 1))
        hi = np.log(max(bitops(space, space.largest(bits=4)), 2))
        self.lo, self.hi = lo, hi

    def predict(self, configs) -> np.ndarray:
        out = []
        for c in configs:
            t = (np.log(max(bitops(self.space, c), 1)) - self.lo) / (self.hi - self.lo)
            out.append(0.5 + 0.45 * (1 - np.exp(-3 * t)) + float(encode(self.space, c) @ self.w))
        return np.array(out)
