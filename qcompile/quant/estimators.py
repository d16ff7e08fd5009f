"""Batch extreme-value estimators of BatchQuant (QFA Sec. 3.4, Eq. 7-9).

Each maps an activation tensor (channel = dim 1: NCHW or [N, C]) to `(x_min, x_max)` as 0-d float32
tensors. They run on detached inputs: see `BatchQuant` for why the estimates carry no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcompile.errors import ConfigError

__all__ = ["ESTIMATORS", "channel_mean", "get_estimator", "mean_std", "minmax"]


def _check(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 2:
        raise ConfigError("activation.dim()", x.dim(), ">= 2 (NCHW or [N, C]; channel = dim 1)")
    if x.numel() == 0:
        raise ConfigError("activation.numel()", 0, "> 0", "cannot estimate a range from an empty tensor")
    return x.detach().float()


def minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """QFA Eq. 7: tensor-wise `min_i x_i`, `max_i x_i`."""
    x = _check(x)
    return x.amin(), x.amax()


def channel_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """QFA Eq. 8: mean over channels of the per-channel min / max (over batch and space)."""
    x = _check(x)
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
    return per_channel.amin(dim=1).mean(), per_channel.amax(dim=1).mean()


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """QFA Eq. 9: `mu -/+ 3 sigma`, tensor-wise mean and (population) standard deviation."""
    x = _check(x)
    mu = x.mean()
    sigma = x.std(correction=0)
    return mu - 3 * sigma, mu + 3 * sigma


def minmax_zero(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """QFA Eq. 7 widened to contain 0: `min(min_i x_i, 0)`, `max(max_i x_i, 0)` (post-training ranges).

    Eq. 5 clamps the zero point to `[n, p]`, so a tensor that never reaches 0 (an SE gate in [0.45, 0.55])
    would have its range shifted onto `[0, (p - n) delta]` and be clipped; containing 0 keeps it exact.
    """
    lo, hi = minmax(x)
    return torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)


ESTIMATORS: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "minmax": minmax,
    "minmax_zero": minmax_zero,
    "channel_mean": channel_mean,
    "mean_std": mean_std,
}


def get_estimator(name: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Look up an estimator by name; unknown names raise `ConfigError`."""
    if name not in ESTIMATORS:
        raise ConfigError("estimator", name, tuple(ESTIMATORS))
    return ESTIMATORS[name]
