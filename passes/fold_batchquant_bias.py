"""fold-batchquant-bias: BatchQuant's zero point and every constant offset into one int32 bias per channel.

QFA (BatchQuant) Eq. 6: with symmetric weights `w_hat = w_q Dw` and asymmetric activations
`x_hat = (x_q - z - beta) D gamma`,

    w_hat x_hat = w_q x_q Dw D gamma  -  w_q Dw (z + beta) D gamma          (Eq. 6)
                  '-- accumulator --'    '------- bias, precomputed -------'

For a quantized conv/linear (`LSQ` weights, output channel `c`) whose input comes from a calibrated
BatchQuant, together with a folded BatchNorm scale `a_c` (`fold_bn`) and float bias `b_c`:

    y_c = A_c * (sum_k w_q[c,k] x_q[k] + B_c),   A_c = Dw_c D gamma a_c,
    B_c = b_c / A_c - (z + beta) sum_k w_q[c,k]

This pass replaces the layer with `AccConv2d` / `AccLinear` holding `w_q` (int8), `acc_scale = |A|`,
the exact `bias_acc = B` (float64) and `bias_int = floor(B + 1/2)` (int32). Where `A_c < 0` (a negative
BN gamma) the channel's codes and bias are negated so that `acc_scale >= 0` (fixed-point multipliers are
non-negative); an 8-bit code of -128 cannot be negated in int8 and is refused with a `LoweringError`.

Rounding: `bias_int` rounds the sum of both Eq. 6 terms once (error <= 1/2 accumulator unit), not each
term separately (<= 1); `to_integer` rounds once more after adding the output zero point, from the exact
`bias_acc`, so the integer program carries a single rounding of every constant.

Padding: the fake-quant conv pads `x_hat` with real 0, i.e. code `z + beta`, which is fractional when
`beta` is; the integer conv pads with the code `pad_value = floor(z + beta + 1/2)`. Every padded tap
then adds `w_q (pad_value - z - beta)` to the accumulator, so an output position whose window covers
`P` padded taps is off by at most `|pad_value - (z + beta)| * sum_{padded taps} |w_q| <= 1/2 * P * max|w_q|`
accumulator units (zero when `z + beta` is an integer, e.g. `beta = 0`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import fx, nn

from qcompile.errors import LoweringError
from qcompile.nn.folded import AccConv2d, AccLinear, FoldedQConv2d, weight_bits_of
from qcompile.nn.padding import pad_quantizer
from qcompile.passes.infra import Pass, PassResult, register
from qcompile.passes.patterns import get_module, is_act_quantizer, set_module, source_through_shape_ops

__all__ = ["FoldBatchQuantBias", "InputQuant", "eq6_fold", "fold_batchquant_bias", "input_quantizer_params"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputQuant:
    """Static parameters of an activation quantizer: `x_hat = (x_q - zero_point) * scale`, `x_q in [0, 2^bits)`."""

    scale: float
    zero_point: float
    bits: int

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1


def input_quantizer_params(quantizer: nn.Module, node_name: str) -> InputQuant | None:
    """`(scale, zero_point, bits)` of a calibrated activation quantizer; None at 32 bits (float).

    Raises `LoweringError` naming the node when the quantizer is not calibrated.
    """
    bits = int(quantizer.active_bits)
    if bits >= 32:
        return None
    if not quantizer.is_calibrated:
        raise LoweringError(
            f"node {node_name} ({type(quantizer).__name__})",
            "activation quantizer is not calibrated, so it has no static scale and zero point",
            "run `qcompile.calibrate(subnet, batches)` (or `with qcompile.quant.calibration(subnet):` over a "
            "few batches) before lowering",
        )
    scale, zp = quantizer.qparams()
    if not scale > 0:
        raise LoweringError(f"node {node_name}", f"quantizer scale {scale!r} is not positive", "recalibrate")
    return InputQuant(float(scale), float(zp), bits)


def eq6_fold(
    weight_codes: torch.Tensor,
    weight_scale: torch.Tensor,
    inq: InputQuant,
    channel_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    where: str = "layer",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchQuant Eq. 6 for one layer: `(codes, acc_scale, bias_acc)` with signs folded (see module doc).

    `weight_codes` is `[O, ...]` int8, `weight_scale` 0-d or `[O]`, `channel_scale` (folded BN) `[O]`,
    `bias` `[O]`. All arithmetic is float64.
    """
    o = weight_codes.shape[0]
    w = weight_codes.to(torch.int64)
    sw = weight_scale.detach().to(torch.float64).reshape(-1).expand(o) if weight_scale.numel() in (1, o) else None
    if sw is None:
        raise LoweringError(where, f"weight scale has {weight_scale.numel()} entries for {o} output channels",
                            "per-tensor (one) or per-output-channel scales are supported")
    a = torch.ones(o, dtype=torch.float64) if channel_scale is None else channel_scale.detach().to(torch.float64)
    b = torch.zeros(o, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64)
    signed = sw * inq.scale * a
    dead = signed == 0
    if bool(dead.any()):
        # a zero BN gamma: the channel is the constant b; keep a nominal scale and zero codes
        w = w.clone()
        w[dead] = 0
        signed = torch.where(dead, sw * inq.scale, signed)
    neg = signed < 0
    if bool(neg.any()):
        w = torch.where(neg.reshape((-1,) + (1,) * (w.ndim - 1)), -w, w)
        if int(w.max()) > 127:
            raise LoweringError(
                where,
                "a channel with a negative scale (negative BN gamma) has the 8-bit weight code -128, whose "
                "negation does not fit in int8",
                "retrain or re-initialise that BN gamma to be positive, or use <= 7-bit weights for this layer",
            )
    acc_scale = signed.abs()
    row_sum = w.reshape(o, -1).sum(dim=1).to(torch.float64)
    bias_acc = b / acc_scale - inq.zero_point * row_sum
    return w.to(torch.int8), acc_scale, bias_acc


def _fold_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    mod = get_module(gm, node.target)
    if weight_bits_of(mod) >= 32 or not isinstance(node.args[0], fx.Node):
        return False
    src = source_through_shape_ops(node.args[0], gm)
    if src.op != "call_module" or not is_act_quantizer(get_module(gm, src.target)):
        log.info("fold-batchquant-bias: %s has quantized weights but no input quantizer; it stays float", node.name)
        return False
    inq = input_quantizer_params(get_module(gm, src.target), src.name)
    if inq is None:
        return False
    where = f"node {node.name} ({type(mod).__name__})"
    codes, wscale = mod.weight_quant.codes(mod.weight)
    cs = mod.channel_scale if isinstance(mod, FoldedQConv2d) else None
    w, acc_scale, bias_acc = eq6_fold(codes, wscale, inq, cs, mod.bias, where)
    common = dict(in_scale=inq.scale, in_zero_point=inq.zero_point, in_bits=inq.bits, weight_bits=weight_bits_of(mod))
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise LoweringError(where, f"padding {mod.padding!r} / mode {mod.padding_mode!r} has no integer form",
                                "use numeric zero padding")
        new: nn.Module = AccConv2d(w, acc_scale, bias_acc, stride=mod.stride, padding=mod.padding,
                                   dilation=mod.dilation, groups=mod.groups, **common)
        # the fake-quant conv padded with the quantizer's zero code (zero_code_conv2d): padding is exact
        new.pads_with_zero_code = pad_quantizer(mod) is get_module(gm, src.target)
    else:
        new = AccLinear(w, acc_scale, bias_acc, **common)
    set_module(gm, node.target, new)
    log.debug("fold-batchquant-bias: %s <- %s (w%d a%d)", node.name, src.name, common["weight_bits"], inq.bits)
    return True


def _run(gm: fx.GraphModule) -> PassResult:
    modified = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = get_module(gm, node.target)
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and not isinstance(mod, (AccConv2d, AccLinear)):
            modified |= _fold_layer(gm, node)
    if modified:
        gm.recompile()
    return PassResult(gm, modified)


def fold_batchquant_bias(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite each quantized conv/linear fed by a calibrated BatchQuant into accumulator form (Eq. 6), in place."""
    return _run(gm).graph_module


@register
@dataclass(frozen=True)
class FoldBatchQuantBias(Pass):
    """Pass form of `fold_batchquant_bias` (no options)."""

    name = "fold-batchquant-bias"

    def run(self, gm: fx.GraphModule) -> PassResult:
        return _run(gm)
