"""Bit inheritance (OQA Sec. 3.4): initialise the K-1 bit supernet from the K bit one.

"we first inherit the weight parameters and scale parameters from K bit supernet. Then the scale
parameters are doubled because they map the floating-point values to the integer range of K-1 bit,
which is half the range of K bit. Finally ... recalculate the mean and variance of the BatchNorm
layers with randomly sampled 4096 training images. During training, we use the K and K-1 bit
supernets as teacher and student." In qcompile one supernet holds every bit-width: the shared float
weights are already "inherited"; the K-1 choice of every LSQ step table gets `2^(K-(K-1))` times
the K step; BatchQuant's gamma is copied (its scale already follows the range of the bit-width, QFA
Eq. 5) and its beta, a zero-point shift in codes, is rescaled to the same real offset. The
teacher is a frozen copy taken before the change.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from qcompile.errors import ConfigError
from qcompile.train.calibrate import calibrate

logger = logging.getLogger(__name__)


@torch.no_grad()
def inherit_bits(model: nn.Module, src_bits: int, dst_bits: int) -> int:
    """Copy every per-bit table entry of `src_bits` into `dst_bits` (LSQ steps scaled by 2^(src-dst)).

    Returns the number of quantizers changed. Quantizers whose tables hold neither choice pair
    (fixed-bit ones: the 8-bit residual / head quantizers of `qc.quantize`) are left alone; a table
    holding only one of the two, or a model with no table holding both, raises ConfigError.
    """
    if src_bits == dst_bits:
        raise ConfigError("dst_bits", dst_bits, f"!= src_bits ({src_bits})")
    factor = 2.0 ** (src_bits - dst_bits)
    changed = 0
    for name, m in model.named_modules():
        tables: list[tuple[str, nn.ParameterDict, float]] = []
        if isinstance(getattr(m, "steps", None), nn.ParameterDict):
            tables.append(("steps", m.steps, factor))
        # BatchQuant: gamma multiplies the range-derived scale, so it carries over unchanged; beta
        # shifts the zero point in codes, so it is rescaled by delta_src / delta_dst = (2^dst - 1) /
        # (2^src - 1) to keep the same real-valued offset (the analogue of OQA's doubled step).
        code_ratio = (2.0**dst_bits - 1.0) / (2.0**src_bits - 1.0)
        for key, f in (("gamma", 1.0), ("beta", code_ratio)):
            if isinstance(getattr(m, key, None), nn.ParameterDict):
                tables.append((key, getattr(m, key), f))
        s, d = str(src_bits), str(dst_bits)
        if tables and all(s not in t and d not in t for _, t, _ in tables):
            continue  # a fixed-bit quantizer (e.g. 8-bit residual): not part of the elastic choices
        for key, table, f in tables:
            if s not in table or d not in table:
                raise ConfigError(f"{name}.{key}", sorted(table.keys()), f"both {src_bits} and {dst_bits}")
            if table[d].shape != table[s].shape:  # lazily materialised per-channel steps
                table[d] = nn.Parameter(torch.empty_like(table[s]), requires_grad=table[s].requires_grad)
            table[d].copy_(table[s] * f)
        init = getattr(m, "initialized", None)
        bits = getattr(m, "bits", None)
        if tables and isinstance(init, torch.Tensor) and bits is not None and dst_bits in bits:
            init[list(bits).index(dst_bits)] = bool(init[list(bits).index(src_bits)])
        changed += bool(tables)
    if changed == 0:
        raise ConfigError("model", type(model).__name__, f"quantizers with both {src_bits} and {dst_bits} bits")
    logger.info("bit inheritance %d -> %d bits: %d quantizers", src_bits, dst_bits, changed)
    return changed


def bit_inheritance(
    model: nn.Module,
    space: Any,
    src_bits: int,
    dst_bits: int,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    activate: Callable[[nn.Module, Any], None],
    num_images: int = 4096,
) -> nn.Module:
    """OQA bit inheritance on `model` in place; returns the frozen K-bit teacher (a deep copy).

    BN statistics are recomputed on up to `num_images` images with the largest subnet at `dst_bits`.
    """
    from qcompile.data import resize

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    inherit_bits(model, src_bits, dst_bits)
    cfg = space.largest(bits=dst_bits)
    activate(model, cfg)

    def limited() -> Iterable[torch.Tensor]:
        seen = 0
        for x, _ in batches:
            if seen >= num_images:
                return
            x = x[: num_images - seen]
            seen += x.shape[0]
            yield resize(x, cfg.resolution)

    # Supernet-wide BN re-estimation only: BatchQuant keeps using batch estimates while training.
    n = calibrate(model, limited(), quantizers=False).calibrated_images
    model.train()
    logger.info("bit inheritance: BN recalibrated on %d images at %d bits", n, dst_bits)
    return teacher
