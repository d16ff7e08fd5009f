"""Retraining-free dynamic bit-width schedule: unstable-weight criterion (Eq. 6) and Top-K freezing (Eq. 7).

Paper: "Retraining-free constraint-aware token pruning / weight-coupling" (retraining-free-weight-
coupling.txt) Sec. 3.3. For each layer l and weight bit-width b with step gamma_b, a weight is
*unstable* when it lies close to a quantization bound (the midpoint between two levels of the
bit-width representation set Phi_b = gamma_b * {-2^(b-1), ..., 2^(b-1)-1}). We read Eq. 6's
indicator as "the rounding distance |w - q gamma_b| to the level q it rounds to is at least
gamma_b (1 - eps) / 2", i.e. within eps * gamma_b / 2 of a bound; eps in [0, 1] sets the band
("controls the range of weights we care about"). The layer score is

    dW_l = sum_b 2^-b / ||W_l||_0 * sum_{q in Phi_b} #{w : |w - q gamma_b| <= gamma_b / 2,
                                                      |w - q gamma_b| >= gamma_b (1 - eps) / 2}

and the K layers with the highest score get their smallest bit-width frozen (not sampled), with K
decaying by a cosine schedule (Eq. 7 and the text after it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from qcompile.config import QuantPolicy, SubnetConfig
from qcompile.train.layers import quant_layers
from qcompile.train.schedule import cosine_topk

logger = logging.getLogger(__name__)


def unstable_fraction(weight: torch.Tensor, step: torch.Tensor, bits: int, eps: float) -> tuple[int, int]:
    """`(unstable count, ||W||_0)` of one weight at one bit-width (inner sums of Eq. 6)."""
    w = weight.detach().float()
    s = step.detach().float()
    if s.dim() == 1:  # per output channel
        s = s[: w.shape[0]].reshape((-1,) + (1,) * (w.dim() - 1))
    u = w / s
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    nearest = torch.floor(u + 0.5)
    # Weights outside the outermost cells are clipped to the end level, they never flip: not counted.
    inside = (u >= lo - 0.5) & (u <= hi + 0.5)
    r = (u - nearest).abs()
    unstable = inside & (r >= (1.0 - eps) / 2.0)
    return int(unstable.sum()), int(torch.count_nonzero(w))


def unstable_scores(model: nn.Module, bits: Sequence[int], eps: float) -> dict[int, float]:
    """Eq. 6 score per policy slot (layers sharing a slot are pooled). Uninitialised steps are skipped."""
    counts: dict[int, dict[int, list[int]]] = {}
    for layer in quant_layers(model):
        for b in bits:
            step = layer.step(b)
            if step is None:
                continue
            u, nz = unstable_fraction(layer.weight, step, b, eps)
            acc = counts.setdefault(layer.slot, {}).setdefault(b, [0, 0])
            acc[0] += u
            acc[1] += nz
    return {
        slot: sum(2.0**-b * u / max(nz, 1) for b, (u, nz) in per_bits.items())
        for slot, per_bits in counts.items()
    }


class BitScheduler:
    """Top-K freezing of the smallest weight bit-width (Eq. 7) with a cosine-decaying K."""

    def __init__(self, bits: Sequence[int], eps: float, topk_fraction: float, every: int):
        self.bits = tuple(sorted(b for b in bits if b != 32))
        self.eps, self.topk_fraction, self.every = eps, topk_fraction, every
        self.frozen: tuple[int, ...] = ()
        self.scores: dict[int, float] = {}

    def update(self, model: nn.Module, step: int, total: int) -> None:
        """Recompute scores and the frozen set every `every` steps of the phase."""
        if step % self.every:
            return
        self.scores = unstable_scores(model, self.bits, self.eps)
        k_max = int(round(self.topk_fraction * len(self.scores)))
        k = cosine_topk(step, total, k_max)
        ranked = sorted(self.scores, key=lambda s: (-self.scores[s], s))
        self.frozen = tuple(sorted(ranked[:k]))
        logger.debug("bit schedule: step %d K=%d frozen slots %s", step, k, self.frozen)

    def constrain(self, cfg: SubnetConfig) -> SubnetConfig:
        """Move frozen slots sampled at the smallest weight bit-width to the next choice up."""
        if not self.frozen or cfg.policy is None or len(self.bits) < 2:
            return cfg
        low, nxt = self.bits[0], self.bits[1]
        bits = list(cfg.policy.bits)
        changed = False
        for s in self.frozen:
            if s < len(bits) and bits[s][0] == low:
                bits[s] = (nxt, bits[s][1])
                changed = True
        return cfg.with_policy(QuantPolicy(tuple(bits))) if changed else cfg

    def state_dict(self) -> dict[str, object]:
        return {"frozen": list(self.frozen), "scores": {str(k): v for k, v in self.scores.items()}}

    def load_state_dict(self, d: dict[str, object]) -> None:
        self.frozen = tuple(int(s) for s in d.get("frozen", []))  # type: ignore[union-attr]
        self.scores = {int(k): float(v) for k, v in dict(d.get("scores", {})).items()}  # type: ignore[arg-type]
