"""Pass `slice-subnet`: cut one subnet out of a (quantized) supernet graph as a static GraphModule.

The result holds only the active operators, as plain modules with *copies* of the sliced weights
(`QConv2d`/`QLinear` = nn.Conv2d/nn.Linear with a frozen weight quantizer, nn.BatchNorm2d, and the
activation quantizers frozen at their active bits). Inactive blocks, depth gates, 32-bit
quantizers, float `QuantPoint`s and dropout (identity at inference) disappear. The result runs,
traces and saves (`torch.save`) on its own.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import fx, nn

from qcompile.config import FLOAT_BITS, SubnetConfig
from qcompile.errors import ConfigError
from qcompile.fx.tracer import set_active
from qcompile.nn.elastic import DepthGate, ElasticBatchNorm2d, ElasticConv2d, ElasticLinear, QuantPoint
from qcompile.nn.static import QConv2d, QLinear, link_pad_quantizer
from qcompile.passes.bias_grid import link_bias_grid
from qcompile.passes.infra import Pass, PassResult, register
from qcompile.quant import ActQuantizer


def _frozen_weight_quant(mod, quantized_weight: torch.Tensor) -> nn.Module | None:
    """The layer's weight quantizer frozen at its active bits, its step initialised if the supernet's is not.

    An untrained supernet initialises an LSQ step lazily on the first forward at that bit-width (OQA
    Sec. 3.2); the copy is initialised here from `quantized_weight`, the tensor the supernet's forward
    would quantize, so the subnet computes what the supernet would while the supernet stays untouched.
    """
    q = getattr(mod, "weight_quant", None)
    if q is None or q.active_bits == FLOAT_BITS:
        return None
    frozen = q.freeze(q.active_bits)
    is_init = getattr(frozen, "is_initialized", None)
    if is_init is not None and not is_init(frozen.active_bits):
        with torch.no_grad():
            frozen(quantized_weight.detach())
    return frozen


def _supernet_quantized_weight(mod: ElasticConv2d, in_ch: int) -> torch.Tensor:
    """The weight `ElasticConv2d.quantized_active_weight` passes to its quantizer."""
    if mod.kernel_transform and mod.active_kernel != mod.max_kernel:
        return mod.active_weight(in_ch)
    return mod.weight


def _static_conv(mod: ElasticConv2d, in_ch: int) -> QConv2d:
    w = mod.active_weight(in_ch).detach()
    out, k = w.shape[0], w.shape[-1]
    groups = in_ch if mod.depthwise else 1
    conv = QConv2d(
        in_ch,
        out,
        k,
        stride=mod.stride,
        padding=k // 2,
        groups=groups,
        bias=mod.bias is not None,
        weight_quant=_frozen_weight_quant(mod, _supernet_quantized_weight(mod, in_ch)),
    )
    conv.weight.data.copy_(w)
    if mod.bias is not None:
        conv.bias.data.copy_(mod.bias.detach()[:out])
    return conv


def _static_bn(mod: ElasticBatchNorm2d, c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=mod.eps, momentum=mod.momentum)
    bn.weight.data.copy_(mod.weight.detach()[:c])
    bn.bias.data.copy_(mod.bias.detach()[:c])
    bn.running_mean.copy_(mod.running_mean[:c])
    bn.running_var.copy_(mod.running_var[:c])
    bn.num_batches_tracked.copy_(mod.num_batches_tracked)
    bn.train(mod.training)
    return bn


def _static_linear(mod: ElasticLinear, in_features: int) -> QLinear:
    lin = QLinear(in_features, mod.out, bias=mod.bias is not None, weight_quant=_frozen_weight_quant(mod, mod.weight))
    lin.weight.data.copy_(mod.weight.detach()[:, :in_features])
    if mod.bias is not None:
        lin.bias.data.copy_(mod.bias.detach())
    return lin


class _ShapeRecorder(fx.Interpreter):
    """Runs the supernet graph once, recording each call_module node's input tensor shape."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.in_shapes: dict[str, torch.Size] = {}

    def call_module(self, target, args, kwargs):
        if args and isinstance(args[0], torch.Tensor):
            self.in_shapes[target] = args[0].shape
        return super().call_module(target, args, kwargs)


def _record_shapes(gm: fx.GraphModule, cfg: SubnetConfig, in_channels: int,
                   input_shape: tuple[int, ...] | None = None) -> dict[str, torch.Size]:
    """Input shape of every call_module node of the active subnet, from one forward on zeros of `input_shape`
    (default `(1, in_channels, r, r)`).

    Weight quantizers run at 32 bits meanwhile: shapes do not depend on them, and a quantized forward
    would initialise the supernet's uninitialised LSQ steps as a side effect.
    """
    modes = {m: m.training for m in gm.modules()}
    quant_states = [(q, q.calibrating) for q in gm.modules() if isinstance(q, ActQuantizer)]
    weight_quants = [(m.weight_quant, m.weight_quant.active_bits) for m in gm.modules()
                     if isinstance(m, (ElasticConv2d, ElasticLinear)) and getattr(m, "weight_quant", None) is not None]
    quant_log = logging.getLogger("qcompile.quant")
    level = quant_log.level
    try:
        quant_log.setLevel(logging.ERROR)  # uncalibrated quantizers warn in eval; only shapes matter here
        gm.eval()
        for q, _ in quant_states:
            q.calibrating = False
        for wq, _ in weight_quants:
            wq.active_bits = FLOAT_BITS
        rec = _ShapeRecorder(gm)
        with torch.no_grad():
            rec.run(torch.zeros(input_shape or (1, in_channels, cfg.resolution, cfg.resolution)))
    finally:
        quant_log.setLevel(level)
        for m, t in modes.items():
            m.training = t
        for q, c in quant_states:
            q.calibrating = c
        for wq, b in weight_quants:
            wq.active_bits = b
    return rec.in_shapes


_ACTIVE = ("active", "_active")  # quantizers keep their bits behind an `active_bits` property


def _active_state(gm: nn.Module) -> list[tuple[nn.Module, dict]]:
    """The `active*` attributes (active kernel, width, depth gate, bits) of every elastic module."""
    out = []
    for m in gm.modules():
        if callable(getattr(m, "apply_config", None)) or getattr(m, "qc_binding", None) is not None:
            out.append((m, {k: v for k, v in vars(m).items() if k.startswith(_ACTIVE)}))
    return out


def slice_subnet(gm: fx.GraphModule, cfg: SubnetConfig, in_channels: int | None = None,
                 input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """Static GraphModule of subnet `cfg` of supernet graph `gm` (float or quantized).

    `gm`'s active subnet is restored afterwards. The result records `cfg` and its input shape
    `(1, in_channels, r, r)` in `sub.meta["subnet_config"]` / `sub.meta["input_shape"]` (read by
    `lower-to-integer`) and keeps `sub.subnet_config`. `input_shape`: the input shape of a graph that is a
    part of a supernet (a window of blocks, whose input is a block's input), instead of `(1, in_channels, r, r)`.
    """
    if not isinstance(gm, fx.GraphModule):
        raise ConfigError("graph", type(gm).__name__, "a traced supernet (qcompile.trace / qcompile.quantize)")
    if in_channels is None:
        info = getattr(gm, "space_info", None)
        in_channels = info["args"].get("in_channels", 3) if info else 3
    saved = _active_state(gm)
    try:
        set_active(gm, cfg)
        sub = _slice(gm, cfg, in_channels, input_shape)
    finally:
        for m, state in saved:
            for k in [k for k in vars(m) if k.startswith(_ACTIVE) and k not in state]:
                delattr(m, k)
            m.__dict__.update(state)
    sub.subnet_config = cfg
    sub.meta["subnet_config"] = cfg
    sub.meta["input_shape"] = (tuple(int(s) for s in input_shape) if input_shape is not None
                               else (1, int(in_channels), int(cfg.resolution), int(cfg.resolution)))
    if hasattr(gm, "space_info"):
        sub.space_info = dict(gm.space_info)
    sub.train(gm.training)
    return sub


def _slice(gm: fx.GraphModule, cfg: SubnetConfig, in_channels: int,
           input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    in_shapes = _record_shapes(gm, cfg, in_channels, input_shape)

    root = nn.Module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}

    def arg(a):
        return fx.node.map_arg(a, lambda n: env[n])

    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, DepthGate):
                env[node] = env[node.args[1] if mod.active else node.args[0]]
                continue
            if isinstance(mod, (QuantPoint, nn.Dropout, nn.Identity)) or (
                isinstance(mod, ActQuantizer) and mod.active_bits == FLOAT_BITS
            ):
                env[node] = env[node.args[0]]
                continue
            shape = in_shapes.get(node.target)
            if isinstance(mod, ElasticConv2d):
                new = _static_conv(mod, shape[1])
                src = env[node.args[0]]
                if src.op == "call_module" and isinstance(getattr(root, src.target), ActQuantizer):
                    link_pad_quantizer(new, getattr(root, src.target))
            elif isinstance(mod, ElasticBatchNorm2d):
                new = _static_bn(mod, shape[1])
            elif isinstance(mod, ElasticLinear):
                new = _static_linear(mod, shape[1])
            elif isinstance(mod, ActQuantizer):
                new = mod.freeze(mod.active_bits)
            else:
                new = copy.deepcopy(mod)
            name = node.target.replace(".", "_")
            root.add_module(name, new)
            env[node] = graph.call_module(name, arg(node.args), arg(node.kwargs))
        elif node.op == "get_attr":
            raise ConfigError(f"node {node.name}", node.target, "no get_attr nodes in a supernet graph")
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
            env[node].type = None  # annotations such as torch.Tensor break GraphModule pickling in torch 2.13
    sub = fx.GraphModule(root, graph, class_name="Subnet")
    sub.graph.eliminate_dead_code()
    sub.graph.lint()
    sub.delete_all_unused_submodules()
    sub.recompile()
    link_bias_grid(sub)  # the qdq flavour's int32 bias grid in the fake-quant forward (inactive otherwise)
    return sub


@register
@dataclass(frozen=True)
class SliceSubnet(Pass):
    """Pipeline form: `slice-subnet{config=path/to/subnet.json}`."""

    name = "slice-subnet"
    config: str = ""

    def run(self, gm: fx.GraphModule) -> PassResult:
        if not self.config:
            raise ConfigError("slice-subnet.config", self.config, "a path to a subnet JSON file")
        return PassResult(slice_subnet(gm, SubnetConfig.load(self.config)), True)
