"""A data-free per-layer prior: the quantization noise-to-signal ratio of every layer slot at each bit-width.

`LayerSensitivity` measures what lowering one layer costs in loss, with data (121 supernet evaluations for
the demo space). The same per-slot table can be computed without data from the supernet's own weights and
learned quantizer parameters, in milliseconds:

- weights (LSQ, QFA Eq. 2 / OQA Eq. 1, per-tensor step ``s_b`` learned per bit-width): the relative error of
  the fake-quantized full-size weight,

      nsr_w[slot, b] = || s_b * clamp(floor(W / s_b + 1/2), -2^(b-1), 2^(b-1) - 1) - W ||^2 / || W ||^2

  (the rounding rule of `LSQ.codes`, which integer lowering uses);
- activations (BatchQuant, QFA Eq. 5-6): the step is ``gamma_b * range / (2^b - 1)`` with the calibrated
  range of the layer's input and the learned residual ``gamma_b``; a uniform quantizer's noise power is
  step^2 / 12, so relative to the squared range

      nsr_a[slot, b] = (gamma_b / (2^b - 1))^2 / 12 .

  The range-to-signal ratio of each layer's input is data-dependent and left out: it is one constant per
  layer, which a regression on the features can only partly absorb (the features are sums over layers).

`noise_sensitivity(qnet, space)` returns these as a `LayerSensitivity` whose entries are the increases
over the `top` bit-width (``nsr[slot, b] - nsr[slot, top]``), so the additive features, the
`BoostedPredictor` line and the saved-predictor format of the measured prior apply unchanged. It is
computed on the full-size weights (largest kernel and expansion), the context in which the measured
sensitivities are taken too; `base_loss` is 0 (no loss is measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from qcompile.errors import ConfigError
from qcompile.search.predictors.sensitivity import LayerSensitivity

__all__ = ["activation_nsr", "noise_sensitivity", "weight_nsr"]


def weight_nsr(weight: torch.Tensor, step: float | torch.Tensor, bits: int) -> float:
    """``||Q_b(W) - W||^2 / ||W||^2`` of a symmetric uniform quantizer with `step` (0-d or per output
    channel) and signed `bits`-bit codes, rounding half up (`LSQ.codes`)."""
    w = weight.detach().double()
    s = torch.as_tensor(step, dtype=torch.float64)
    if s.dim() == 1:
        s = s[: w.shape[0]].reshape((-1,) + (1,) * (w.dim() - 1))
    n, p = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.floor(torch.clamp(w / s, n, p) + 0.5) * s
    den = float((w * w).sum())
    if den <= 0.0:
        raise ConfigError("weight", "all zeros", "a weight with a nonzero entry")
    return float(((q - w) ** 2).sum()) / den


def activation_nsr(gamma: float, bits: int) -> float:
    """Uniform-quantizer noise power relative to the squared calibrated range: ``(gamma / (2^b - 1))^2 / 12``
    (BatchQuant: step = gamma * range / (2^b - 1), unsigned `bits`-bit codes)."""
    return (abs(float(gamma)) / (2**bits - 1)) ** 2 / 12.0


def _slot_quantizers(qnet: torch.nn.Module, n_slots: int) -> tuple[dict[int, Any], dict[int, Any]]:
    """slot -> (conv module, its LSQ) for weights, slot -> BatchQuant for activations, from the
    quantizers' policy bindings (`passes.insert_quantizers.PolicyBits`)."""
    from qcompile.quant.batchquant import BatchQuant
    from qcompile.quant.lsq import LSQ

    mods = dict(qnet.named_modules())
    wq: dict[int, Any] = {}
    aq: dict[int, Any] = {}
    for name, m in mods.items():
        binding = getattr(m, "qc_binding", None)
        slot = getattr(binding, "slot", None)
        if slot is None:
            continue
        if isinstance(m, LSQ) and binding.which == 0:
            owner = mods[name.rpartition(".")[0]]
            wq[slot] = (owner, m)
        elif isinstance(m, BatchQuant) and binding.which == 1:
            aq[slot] = m
    missing = sorted(set(range(n_slots)) - set(wq) | set(range(n_slots)) - set(aq))
    if missing:
        raise ConfigError("qnet", f"no weight/activation quantizer bound to layer slots {missing[:8]}",
                          "a quantized supernet of this space (qcompile.quantize / a trained run)")
    return wq, aq


@torch.no_grad()
def noise_sensitivity(
    qnet: torch.nn.Module, space: Any, low_bits: Sequence[int] = (2, 3), top: int = 4
) -> LayerSensitivity:
    """Per-slot noise-to-signal increases ``nsr[slot, b] - nsr[slot, top]`` for `b` in `low_bits`
    (module docstring), from the full-size weights, the LSQ steps and the BatchQuant residuals of `qnet`."""
    low = tuple(int(b) for b in low_bits)
    if not low or any(b >= top for b in low):
        raise ConfigError("low_bits", low, f"a non-empty tuple of bit-widths below top = {top}")
    n = space.num_layer_slots
    wq, aq = _slot_quantizers(qnet, n)
    w = np.zeros((n, len(low)))
    a = np.zeros((n, len(low)))
    for slot in range(n):
        conv, lsq = wq[slot]
        for b in (*low, top):
            if b not in lsq.bits or b not in aq[slot].bits:
                raise ConfigError("low_bits", b, f"bit-widths the supernet was trained with: {lsq.bits}")
        ref_w = weight_nsr(conv.weight, lsq.step(top), top)
        ref_a = activation_nsr(float(aq[slot].gamma[str(top)]), top)
        for j, b in enumerate(low):
            w[slot, j] = weight_nsr(conv.weight, lsq.step(b), b) - ref_w
            a[slot, j] = activation_nsr(float(aq[slot].gamma[str(b)]), b) - ref_a
    return LayerSensitivity(low, int(top), 0.0, w, a)
