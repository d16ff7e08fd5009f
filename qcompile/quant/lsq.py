"""LSQ: symmetric learnable-step weight quantizer with one step per bit-width choice.

Implements QFA Eq. 2 / OQA Eq. 1: `q = clamp(round(w / |s|), -2^(b-1), 2^(b-1) - 1)`, `w_hat = q |s|`,
with the project's round-half-up rule, the straight-through estimator for `w` (zero gradient where
`w / |s|` leaves the clamp range) and LSQ's step gradient scaled by `g = 1 / sqrt(N * Qp)`
(Esser et al., "Learned Step Size Quantization", Sec. 2.2). Steps are initialised lazily, per
bit-width, by OQA's rule `s = 2 / sqrt(Qp) * mean|w|` (OQA Sec. 3.2). `|s|` as in OQA Eq. 1 keeps
the sign of the weights if a step is ever pushed through zero.

The whole supernet weight is quantized before slicing (QFA Sec. 3.3): per-channel steps are indexed
by output channel, and a weight with fewer output channels `O' <= num_channels` uses `steps[:O']`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable

import torch
from torch import nn

from qcompile.errors import ConfigError
from qcompile.quant.functional import (
    FLOAT_BITS,
    check_bits,
    check_choice,
    grad_scale,
    round_ste,
    signed_range,
)

__all__ = ["LSQ"]

logger = logging.getLogger(__name__)

# Smallest step allowed at initialisation (an all-zero weight would otherwise give s = 0).
_MIN_STEP = 1e-8


class LSQ(nn.Module):
    """Elastic symmetric weight quantizer (QFA Eq. 2, OQA Eq. 1, LSQ gradient scaling).

    Args:
        bits: bit-width choices; one learnable step per choice (`steps[str(b)]`).
        per_channel: one step per output channel (dim 0 of the weight) instead of one per tensor.
        num_channels: output channels of the full (supernet) weight. With `per_channel` and no
            `num_channels`, the steps are created on the first forward from `weight.shape[0]`;
            build the optimizer after that forward, or pass `num_channels`.

    `active_bits` selects the choice used by `forward` and `codes`; 32 is a float passthrough.
    """

    def __init__(
        self,
        bits: Iterable[int] | int = (2, 3, 4, 8),
        per_channel: bool = False,
        num_channels: int | None = None,
    ):
        super().__init__()
        self.bits = check_bits("LSQ.bits", bits)
        self.per_channel = bool(per_channel)
        if num_channels is not None and (
            isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1
        ):
            raise ConfigError("LSQ.num_channels", num_channels, "a positive int or None")
        self.num_channels = num_channels if self.per_channel else None
        if self.per_channel:
            # (0,) is a placeholder until the first weight (or a state_dict) gives the channel count.
            shape = (num_channels,) if num_channels is not None else (0,)
        else:
            shape = ()
        self.steps = nn.ParameterDict({str(b): nn.Parameter(torch.ones(shape)) for b in self.bits})
        self.register_buffer("initialized", torch.zeros(len(self.bits), dtype=torch.bool))
        self._active_bits = max(self.bits)

    # -- configuration -------------------------------------------------------------------------
    @property
    def active_bits(self) -> int:
        """Bit-width used by `forward` / `codes`; 32 means the weight passes through unchanged."""
        return self._active_bits

    @active_bits.setter
    def active_bits(self, bits: int) -> None:
        self._active_bits = check_choice("LSQ.active_bits", bits, self.bits, allow_float=True)

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, per_channel={self.per_channel}, num_channels={self.num_channels}, "
            f"active_bits={self.active_bits}"
        )

    def is_initialized(self, bits: int) -> bool:
        """Whether the step of choice `bits` has been initialised (by a forward or a state_dict)."""
        check_choice("LSQ.bits", bits, self.bits)
        return bool(self.initialized[self.bits.index(bits)])

    # -- steps ---------------------------------------------------------------------------------
    def step(self, bits: int | None = None) -> torch.Tensor:
        """The step `|s|` of choice `bits` (default: `active_bits`): 0-d, or `[num_channels]`."""
        b = self._choice(bits, "LSQ.step(bits)")
        if not self.is_initialized(b):
            raise ConfigError(
                "LSQ.step(bits)", b, self.bits, "this step is not initialised yet; run a forward first"
            )
        return self.steps[str(b)].abs()

    def _choice(self, bits: int | None, field: str) -> int:
        b = self.active_bits if bits is None else bits
        if b == FLOAT_BITS:
            raise ConfigError(field, b, self.bits, "a 32-bit layer stays float and has no step")
        return check_choice(field, b, self.bits)

    def _materialize(self, num_channels: int, device: torch.device) -> None:
        """Create per-channel steps once the channel count is known (lazy `num_channels`)."""
        self.num_channels = num_channels
        for b in self.bits:
            self.steps[str(b)] = nn.Parameter(torch.ones(num_channels, device=device))
        logger.debug("LSQ: created %d per-channel steps for bits %s", num_channels, self.bits)

    def _check_weight(self, weight: torch.Tensor) -> None:
        if weight.dim() < 1:
            raise ConfigError("LSQ weight.dim()", weight.dim(), ">= 1 (dim 0 = output channels)")
        if self.per_channel and self.num_channels is not None and weight.shape[0] > self.num_channels:
            raise ConfigError(
                "LSQ weight.shape[0]",
                weight.shape[0],
                f"<= num_channels = {self.num_channels}",
                "pass the full supernet weight or its first output channels",
            )

    @torch.no_grad()
    def _ensure_init(self, bits: int, weight: torch.Tensor) -> None:
        """OQA Sec. 3.2 initialisation `s = 2 / sqrt(Qp) * mean|w|` on first use of `bits`."""
        i = self.bits.index(bits)
        if bool(self.initialized[i]):
            return
        _, qp = signed_range(bits)
        w = weight.detach().abs().float()
        factor = 2.0 / math.sqrt(qp)
        if self.per_channel:
            if self.num_channels is None:
                self._materialize(weight.shape[0], weight.device)
            out = weight.shape[0]
            init = torch.full((self.num_channels,), float(factor * w.mean()), device=w.device)
            init[:out] = factor * w.reshape(out, -1).mean(dim=1)
            if out < self.num_channels:
                # Channels never seen get the tensor-wise rule of the weight that was seen.
                logger.debug("LSQ: initialised %d of %d channel steps from data", out, self.num_channels)
        else:
            init = factor * w.mean()
        param = self.steps[str(bits)]
        param.copy_(init.clamp_min(_MIN_STEP).to(param.dtype).reshape(param.shape))
        self.initialized[i] = True

    def _step_view(self, bits: int, weight: torch.Tensor, scale_grad: bool) -> torch.Tensor:
        """The step broadcast against `weight` (first O' channels when per-channel)."""
        s = self.steps[str(bits)]
        if scale_grad:
            _, qp = signed_range(bits)
            n = weight.numel() // weight.shape[0] if self.per_channel else weight.numel()
            s = grad_scale(s, 1.0 / math.sqrt(n * qp))
        s = s.abs()
        if self.per_channel:
            s = s[: weight.shape[0]].reshape((-1,) + (1,) * (weight.dim() - 1))
        return s

    # -- quantization --------------------------------------------------------------------------
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Fake-quantize `weight` at `active_bits` (QFA Eq. 2): `clamp(round(w/|s|)) * |s|`."""
        b = self.active_bits
        if b == FLOAT_BITS:
            return weight
        self._check_weight(weight)
        self._ensure_init(b, weight)
        s = self._step_view(b, weight, scale_grad=True)
        n, p = signed_range(b)
        # Clamp before rounding: the STE gradient is 1 exactly where n <= w/|s| <= p (OQA Eq. 1).
        q = round_ste(torch.clamp(weight / s, n, p))
        return q * s

    @torch.no_grad()
    def codes(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes (int8) and the scale (0-d, or `[weight.shape[0]]`) at `active_bits`.

        `codes * scale` equals `forward(weight)` exactly; integer lowering uses this.
        """
        b = self._choice(None, "LSQ.active_bits")
        self._check_weight(weight)
        self._ensure_init(b, weight)
        s = self._step_view(b, weight, scale_grad=False)
        n, p = signed_range(b)
        q = torch.floor(torch.clamp(weight / s, n, p) + 0.5)
        scale = s.reshape(-1) if self.per_channel else s.reshape(())
        return q.to(torch.int8), scale.detach().clone()

    def freeze(self, bits: int) -> LSQ:
        """A new LSQ with the single choice `(bits,)` and a deep copy of that step (static subnets)."""
        b = self._choice(bits, "LSQ.freeze(bits)")
        frozen = LSQ((b,), per_channel=self.per_channel, num_channels=self.num_channels)
        src = self.steps[str(b)]
        frozen.steps[str(b)] = nn.Parameter(copy.deepcopy(src.detach()), requires_grad=src.requires_grad)
        frozen.initialized[0] = bool(self.initialized[self.bits.index(b)])
        frozen.active_bits = b
        frozen.train(self.training)
        return frozen.to(src.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # Lazy per-channel steps take their size from the checkpoint (children load after this).
        if self.per_channel and self.num_channels is None:
            key = f"{prefix}steps.{self.bits[0]}"
            if key in state_dict and state_dict[key].dim() == 1 and state_dict[key].numel() > 0:
                self._materialize(state_dict[key].numel(), state_dict[key].device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
