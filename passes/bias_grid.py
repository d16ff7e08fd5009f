"""`link_bias_grid`: the qdq flavour's int32 bias grid in the fake-quant forward, in training and in eval.

A graph-level companion of `qcompile.quant.flavour` (it reads the graph's patterns and `fold_bn`'s BN affine,
so it lives with the passes): `insert_quantizers` links the quantized supernet, so training sees the grid
(straight-through), and `slice_subnet` links every extracted subnet; the hooks do nothing outside the qdq
flavour.
"""

from __future__ import annotations

import torch
from torch import nn

from qcompile.passes.fold_bn import bn_affine
from qcompile.quant.flavour import DEFAULT_FLAVOUR


class BiasGrid:
    """Forward hook putting a layer's folded bias on the int32 grid of the qdq flavour's integer program.

    A standard QDQ graph carries a conv's bias as int32 codes at scale `X_scale * W_scale[c]` (QLinearConv,
    ONNX Operators.md), and the requantization reads `float32(acc + bias)` (BatchQuant Eq. 6 with an integer
    zero point). With BN folded (`a_c`, `c_c`), one accumulator unit is `A_c = |w_scale_c x_scale a_c|` and the
    bias the integer program adds is `A_c floor(c_c / A_c + 1/2)` (`fold_batchquant_bias`), not the float `c_c`.
    For a 2-bit input and an 8-bit output one unit can be tens of output codes, so the hook adds
    `A_c floor(c_c / A_c + 1/2) - c_c` to the output of the module that ends the affine part (the BN, or the
    conv / linear without one): the fake-quant forward then computes what the QDQ graph computes.

    Eval mode (once both quantizers are calibrated) folds the BN's running statistics and reads the input
    quantizer's calibrated scale, as `fold_bn` + `eq6_fold` do. Training mode folds this batch's BN statistics
    (what `F.batch_norm` normalises with: mean and biased variance of the BN input) and the scale the input
    quantizer used on this batch, so training sees the grid its deployed model will have; the shift is a
    constant of the backward pass (straight-through: `d(A round(c / A)) / dc = 1`, as LSQ and BatchQuant
    treat their rounding, QFA Sec. 3.4). Elastic layers (`qcompile.nn.elastic`) use the first channels of
    their per-channel tensors, the ones the active subnet computes.

    Active in the qdq flavour only, below 32 bits, outside calibration, and only where the layer's output is
    requantized (`link_bias_grid` checks the graph).
    """

    def __init__(self, layer: nn.Module, bn: nn.Module | None, in_quant: nn.Module, out_quant: nn.Module):
        self.layer, self.bn, self.in_quant, self.out_quant = layer, bn, in_quant, out_quant

    def active(self) -> bool:
        qs = (self.in_quant, self.out_quant)
        wq = getattr(self.layer, "weight_quant", None)
        if wq is None or wq.active_bits >= 32:
            return False
        if not all(getattr(q, "flavour", DEFAULT_FLAVOUR) == "qdq" and q.active_bits < 32 and not q.calibrating
                   for q in qs):
            return False
        return self.in_quant.training or all(q.is_calibrated for q in qs)

    @torch.no_grad()
    def shift(self, bn_input: torch.Tensor | None = None, channels: int | None = None) -> torch.Tensor:
        """Per-channel `A_c floor(c_c / A_c + 1/2) - c_c` (float64), as `fold_bn` + `eq6_fold` compute it.

        `bn_input` (the BN's input in training mode) gives the batch statistics; `channels` (default: all)
        how many leading channels of an elastic layer are active.
        """
        layer = self.layer
        dtype = layer.weight.dtype
        o = layer.weight.shape[0] if channels is None else channels
        _, w_scale = layer.weight_quant.codes(layer.weight)
        w_scale = w_scale.to(torch.float64).reshape(-1)
        sw = w_scale[:o] if w_scale.numel() > 1 else w_scale.expand(o)
        bias = (layer.bias.detach()[:o].to(torch.float64) if layer.bias is not None
                else torch.zeros(o, dtype=torch.float64))
        if self.bn is None:
            a, c = torch.ones(o, dtype=torch.float64), bias
        else:  # fold_bn stores the folded scale and bias in the weights' dtype: round them the same way
            a, b = self._bn_fold(bn_input, o)
            a, c = a.to(dtype).to(torch.float64), (a * bias + b).to(dtype).to(torch.float64)
        x_scale = self._input_scale()
        acc_scale = (sw * x_scale * a).abs()
        acc_scale = torch.where(acc_scale == 0, sw * x_scale, acc_scale)  # a dead channel (eq6_fold)
        return acc_scale * torch.floor(c / acc_scale + 0.5) - c

    def _bn_fold(self, bn_input: torch.Tensor | None, o: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(a, b)` of `BN(y) = a y + b` in float64: running statistics in eval, this batch's in training."""
        bn = self.bn
        if bn_input is None:
            a, b = bn_affine(bn, "BiasGrid")
            return a[:o], b[:o]
        y = bn_input.detach()
        dims = [d for d in range(y.ndim) if d != 1]
        # what F.batch_norm normalises with in training, in the statistics' dtype (float32), as the running
        # statistics that eval mode and fold_bn read are stored
        mean = y.mean(dims).to(torch.float64)
        var = y.var(dims, unbiased=False).to(torch.float64)
        gamma = bn.weight.detach()[:o].to(torch.float64) if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.detach()[:o].to(torch.float64) if bn.bias is not None else torch.zeros_like(var)
        a = gamma / torch.sqrt(var + bn.eps)
        return a, beta - a * mean

    def _input_scale(self) -> float | torch.Tensor:
        q = self.in_quant
        if q.training:
            # the scale BatchQuant quantized this batch with (its batch estimates, `last_scale`)
            return q.last_scale.detach().to(torch.float64)
        return q.qparams()[0]

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self.active():
            return None
        bn_input = inputs[0] if self.bn is not None and self.bn.training else None
        d = self.shift(bn_input, channels=output.shape[1]).to(output.dtype)
        # a constant of the backward pass: the straight-through estimator of the bias rounding
        return output + d.reshape((1, -1) + (1,) * (output.ndim - 2))


def _kind(node, gm) -> str:
    """`classify`'s kind, with the elastic conv / BN / linear of a supernet graph read as their static forms."""
    from qcompile.nn.elastic import ElasticBatchNorm2d, ElasticConv2d, ElasticLinear
    from qcompile.passes.patterns import classify, get_module

    if node.op == "call_module":
        mod = get_module(gm, node.target)
        for cls, kind in ((ElasticConv2d, "conv"), (ElasticBatchNorm2d, "bn"), (ElasticLinear, "linear")):
            if isinstance(mod, cls):
                return kind
    return classify(node, gm).kind


def _requantized_by(node, gm) -> object | None:
    """The activation quantizer node that requantizes `node`'s output (through ReLU-like clamps and identities),
    or None when the output stays float (logits, a float island, a float activation)."""
    from qcompile.passes.elementwise import ELEMENTWISE
    from qcompile.passes.patterns import classify

    cur = node
    while len(cur.users) == 1:
        nxt = next(iter(cur.users))
        kind = _kind(nxt, gm)
        if kind == "quantizer":
            return nxt
        if kind == "identity" or (kind == "act" and ELEMENTWISE[classify(nxt, gm).params["act"]].clamp is not None):
            cur = nxt
            continue
        return None
    return None


def link_bias_grid(gm) -> int:
    """Install `BiasGrid` on every quantized conv / linear of a fake-quant graph (a static subnet, or a
    quantized supernet of elastic layers) whose input comes from an activation quantizer and whose (BN-folded)
    output is requantized; returns how many. Idempotent; the hooks do nothing outside the qdq flavour, so a
    model may change flavour afterwards (`set_flavour`)."""
    from qcompile.passes.patterns import get_module, source_through_shape_ops

    n = 0
    for node in gm.graph.nodes:
        if _kind(node, gm) not in ("conv", "linear") or not node.args:
            continue
        layer = get_module(gm, node.target)
        src = source_through_shape_ops(node.args[0], gm)
        if getattr(layer, "weight_quant", None) is None or _kind(src, gm) != "quantizer":
            continue
        tail, bn = node, None
        if len(node.users) == 1 and _kind(next(iter(node.users)), gm) == "bn":
            tail = next(iter(node.users))
            bn = get_module(gm, tail.target)
        out_q = _requantized_by(tail, gm)
        if out_q is None:
            continue
        hooked = bn if bn is not None else layer
        for key, hook in list(hooked._forward_hooks.items()):
            if isinstance(hook, BiasGrid):  # relinking replaces the hook (a deep copy carries it along)
                del hooked._forward_hooks[key]
        hooked.register_forward_hook(BiasGrid(layer, bn, get_module(gm, src.target), get_module(gm, out_q.target)))
        n += 1
    return n
