"""fold-bn: fold every BatchNorm2d into the convolution that feeds it (float, function-preserving).

Batch normalisation in inference is per-channel affine (Ioffe & Szegedy 2015, Alg. 1):
`BN(y) = a y + b` with `a = gamma / sqrt(var + eps)`, `b = beta - a mu`. For `y = conv(x, W) + c`:

- float conv (no weight quantizer, or one at 32 bits): `W' = a W`, `c' = a c + b` (the usual fold).
- quantized conv (LSQ at 2..8 bits): LSQ chose its codes for the *unfolded* W, so the fold keeps the
  codes and puts `a` on the accumulator: `FoldedQConv2d` computes `conv(x, Q(W)) * a + (a c + b)`.
  `fold_batchquant_bias` then merges `a` into the per-channel requantization scale (OQA Sec. 3 and
  QFA Sec. 3.4 both quantize conv weights before BN; ARCHITECTURE.md "Integer semantics").

The graph computes the same function up to float32 rounding; the BN nodes disappear.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import fx, nn

from qcompile.errors import LoweringError
from qcompile.nn.folded import FoldedQConv2d, weight_bits_of
from qcompile.nn.padding import link_pad_quantizer, pad_quantizer
from qcompile.nn.static import QConv2d
from qcompile.passes.infra import Pass, PassResult, register
from qcompile.passes.patterns import get_module, set_module

__all__ = ["FoldBN", "bn_affine", "fold_bn"]

log = logging.getLogger(__name__)


def bn_affine(bn: nn.BatchNorm2d, where: str = "batchnorm") -> tuple[torch.Tensor, torch.Tensor]:
    """Inference-time `(a, b)` of a BatchNorm2d in float64: `BN(y) = a y + b` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise LoweringError(where, "BatchNorm2d has no running statistics (track_running_stats=False)",
                            "calibrate BN statistics (qc.calibrate) before lowering")
    var = bn.running_var.detach().to(torch.float64)
    mean = bn.running_mean.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(var)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - a * mean


def _folded_module(conv: nn.Conv2d, bn: nn.BatchNorm2d, where: str) -> nn.Conv2d:
    a, b = bn_affine(bn, where)
    if a.numel() != conv.out_channels:
        raise LoweringError(where, f"BatchNorm2d has {a.numel()} channels, its conv {conv.out_channels}",
                            "the BN must directly follow the conv it normalises")
    c = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(a)
    new_bias = a * c + b
    dtype = conv.weight.dtype
    link = pad_quantizer(conv)  # the folded conv pads like the original (qcompile.nn.padding)
    if weight_bits_of(conv) < 32:
        folded = FoldedQConv2d(conv, a.to(dtype), new_bias.to(dtype))  # type: ignore[arg-type]
        link_pad_quantizer(folded, link)
        return folded
    out = QConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
                  weight_quant=getattr(conv, "weight_quant", None))
    with torch.no_grad():
        w = conv.weight.detach().to(torch.float64) * a.reshape(-1, 1, 1, 1)
        out.weight.copy_(w.to(dtype))
        out.bias.copy_(new_bias.to(dtype))
    link_pad_quantizer(out, link)
    return out


def fold_bn(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold each `BatchNorm2d` whose input is a conv used only by that BN into the conv, in place.

    Returns `gm`. A BN that does not follow a conv is left alone (`to_integer` lowers it as float
    where its input is float and refuses otherwise).
    """
    return _fold(gm).graph_module


def _fold(gm: fx.GraphModule) -> PassResult:
    modified = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(get_module(gm, node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            log.debug("fold-bn: %s does not follow a single-use conv; left as is", node.name)
            continue
        conv = get_module(gm, src.target)
        if type(conv) not in (nn.Conv2d, QConv2d):  # FoldedQConv2d already has a BN folded
            continue
        bn = get_module(gm, node.target)
        set_module(gm, src.target, _folded_module(conv, bn, f"node {node.name} (BatchNorm2d after {src.name})"))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        if not any(n.op == "call_module" and n.target == node.target for n in gm.graph.nodes):
            gm.delete_submodule(node.target)
        modified = True
        log.debug("fold-bn: folded %s into %s", node.name, src.name)
    if modified:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, modified)


@register
@dataclass(frozen=True)
class FoldBN(Pass):
    """Pass form of `fold_bn` (no options)."""

    name = "fold-bn"

    def run(self, gm: fx.GraphModule) -> PassResult:
        return _fold(gm)
