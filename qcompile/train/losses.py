"""Losses: label-smoothed cross entropy, Hinton KD on soft targets, IDM feature alignment.

KD follows OQA A.2 ("the traditional KD loss (Hinton et al., 2015) ... temperature 1, weight 1") and
in-place distillation of the sandwich rule (Yu & Huang 2019). IDM is retraining-free Eq. 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def smooth_ce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross entropy against `(1 - eps) * onehot + eps / K` (OQA A.2, label smoothing 0.1)."""
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`T^2 * KL(softmax(t/T) || softmax(s/T))`, batch mean (Hinton et al. 2015); teacher is detached."""
    t = temperature
    p_t = F.softmax(teacher.detach() / t, dim=1)
    log_p_s = F.log_softmax(student / t, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * (t * t)


class IDMAlign(nn.Module):
    """Information Distortion Mitigation, retraining-free Eq. 8, for one layer output.

    `E || max(Q, (O^S - mu(O^S)) / sqrt(sigma(O^S) + zeta) * eta_S + xi_S)
        - max(Q, (O^H - mu(O^H)) / sqrt(sigma(O^H) + zeta) * eta_H + xi_H) ||`
    with channel-wise mean `mu` and variance `sigma` over (N, H, W), learnable per-channel `eta`, `xi`
    for each side, floor `Q` and `zeta` against division by zero. `O^H` (the high-precision output) is
    the target and gets no gradient. The norm is the L2 norm per sample, averaged over the batch.
    Parameters are sized for the largest channel count; a narrower subnet uses the first C.
    """

    def __init__(self, max_channels: int, floor: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.floor, self.eps = floor, eps
        self.eta_s = nn.Parameter(torch.ones(max_channels))
        self.xi_s = nn.Parameter(torch.zeros(max_channels))
        self.eta_h = nn.Parameter(torch.ones(max_channels))
        self.xi_h = nn.Parameter(torch.zeros(max_channels))

    def _adapt(self, o: torch.Tensor, eta: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        c = o.shape[1]
        dims = (0,) + tuple(range(2, o.dim()))
        shape = (1, c) + (1,) * (o.dim() - 2)
        mu = o.mean(dim=dims, keepdim=True)
        var = o.var(dim=dims, unbiased=False, keepdim=True)
        z = (o - mu) / torch.sqrt(var + self.eps)
        return torch.clamp(z * eta[:c].view(shape) + xi[:c].view(shape), min=self.floor)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        a = self._adapt(low, self.eta_s, self.xi_s)
        b = self._adapt(high.detach(), self.eta_h, self.xi_h)
        return (a - b).flatten(1).norm(dim=1).mean()
