"""Learning-rate and Top-K schedules (cosine annealing with linear warm-up; OQA A.2, retraining-free 3.3)."""

from __future__ import annotations

import math


def cosine_lr(step: int, total: int, peak: float, warmup: int = 0, floor: float = 0.0) -> float:
    """Learning rate at `step` of `total`: linear warm-up from peak/warmup to peak, then cosine to `floor`.

    `lr = floor + (peak - floor) * (1 + cos(pi * t)) / 2` with `t` the fraction of post-warm-up steps done.
    """
    if total <= 0:
        return peak
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def cosine_topk(step: int, total: int, k_max: int) -> int:
    """K of the Top-K freezing selector (retraining-free Eq. 7): cosine decay from `k_max` to 0.

    "we use a cosine scheduler to gradually decrease the value of K" (retraining-free Sec. 3.3).
    """
    if total <= 0 or k_max <= 0:
        return 0
    t = min(1.0, max(0.0, step / total))
    return int(round(k_max * 0.5 * (1.0 + math.cos(math.pi * t))))
