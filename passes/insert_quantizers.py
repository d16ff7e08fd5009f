"""Pass `insert-quantizers`: turn a traced supernet into an elastic quantized supernet.

QFA 3.1-3.4 / OQA 3.2: every quantized conv/linear gets an elastic LSQ weight quantizer (one
step per bit-width) and an elastic activation quantizer (BatchQuant by default, one (gamma, beta)
per bit-width) on its input; the active bits of each come from the `SubnetConfig`'s policy at
`set_active` time. Layer groups outside the policy have fixed bits, defaulting to the seeds'
conventions: first conv float (input and weights), last linear 8-bit, SE convs float, head convs
and the blocks of fixed stages 8-bit (`head_layers`). The `QuantPoint`s of the supernet (residual adds,
LUT activation inputs, SE input and gate,
pool input, block outputs) become 8-bit activation quantizers (`residual_bits`), so the fake-quant
model quantizes exactly the tensors the integer program materialises (docs/integer_semantics.md).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from qcompile.config import FLOAT_BITS, SubnetConfig
from qcompile.errors import ConfigError
from qcompile.nn.elastic import ElasticConv2d, ElasticLinear, QuantPoint
from qcompile.nn.padding import link_pad_quantizer
from qcompile.passes.bias_grid import link_bias_grid
from qcompile.passes.infra import Pass, PassResult, register
from qcompile.quant import LSQ, make_act_quant
from qcompile.quant.factory import ACT_QUANTIZERS
from qcompile.quant.flavour import DEFAULT_FLAVOUR, check_flavour
from qcompile.quant.functional import SUPPORTED_BITS

QUANT_POINT_KINDS = ("pre_act", "residual_in", "block_out", "se_in", "se_gate", "pool_in")


@dataclass(frozen=True)
class PolicyBits:
    """Binding of a quantizer's active bits to a config: `policy[slot][which]`, or `fixed` for layers
    outside the policy; a float config (policy None) makes every quantizer a passthrough."""

    slot: int | None
    which: int  # 0 = weight, 1 = activation
    fixed: int = FLOAT_BITS

    def __call__(self, cfg: SubnetConfig) -> int:
        if cfg.policy is None:
            return FLOAT_BITS
        return self.fixed if self.slot is None else cfg.policy[self.slot][self.which]


def _quantized_choices(field: str, bits: Sequence[int]) -> tuple[int, ...]:
    bits = tuple(int(b) for b in bits)
    bad = [b for b in bits if b not in SUPPORTED_BITS and b != FLOAT_BITS]
    if not bits or bad:
        raise ConfigError(field, bad or bits, tuple(SUPPORTED_BITS) + (FLOAT_BITS,))
    return tuple(b for b in bits if b != FLOAT_BITS)


def _fixed(field: str, b: int) -> int:
    if b != FLOAT_BITS and b not in SUPPORTED_BITS:
        raise ConfigError(field, b, tuple(SUPPORTED_BITS) + (FLOAT_BITS,))
    return int(b)


def _set_module(gm: fx.GraphModule, target: str, module: torch.nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


@register
@dataclass(frozen=True)
class InsertQuantizers(Pass):
    """Insert elastic quantizers (the module doc); the fields are every option of `qc.quantize`.

    Pipeline form: `insert-quantizers{weight_bits=2,3,4 act_bits=2,3,4,8 per_channel=true}`. The
    graph given to `run` is not modified: the result is a quantized copy carrying
    `quantize_options` (these fields) for `qcompile.artifacts`.
    """

    name = "insert-quantizers"
    weight_bits: tuple[int, ...] = (2, 3, 4, 8, 32)
    act_bits: tuple[int, ...] = (2, 3, 4, 8, 32)
    first_layer: int = FLOAT_BITS
    last_layer: int = 8
    head_layers: int = 8
    se_layers: int = FLOAT_BITS
    residual_bits: int = 8
    act_quant: str = "batchquant"
    estimator: str = "channel_mean"
    per_channel: bool = False
    flavour: str = DEFAULT_FLAVOUR

    def __post_init__(self) -> None:
        check_flavour(self.flavour)
        if self.flavour != DEFAULT_FLAVOUR and self.act_quant != "batchquant":
            raise ConfigError("flavour", self.flavour, (DEFAULT_FLAVOUR,),
                              f"act_quant={self.act_quant!r} has only the fixed-point flavour; use 'batchquant'")
        for f in ("weight_bits", "act_bits"):
            v = getattr(self, f)
            bits = (v,) if isinstance(v, int) else tuple(v)
            object.__setattr__(self, f, tuple(int(b) for b in bits))
            _quantized_choices(f, self.__dict__[f])
        for f in ("first_layer", "last_layer", "head_layers", "se_layers", "residual_bits"):
            object.__setattr__(self, f, _fixed(f, getattr(self, f)))
        if self.act_quant not in ACT_QUANTIZERS:
            raise ConfigError("act_quant", self.act_quant, tuple(ACT_QUANTIZERS))

    def run(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(self._quantize(gm), True)

    def _quantize(self, gm: fx.GraphModule) -> fx.GraphModule:
        weight_bits, act_bits = self.weight_bits, self.act_bits
        first_layer, last_layer, head_layers = self.first_layer, self.last_layer, self.head_layers
        se_layers, residual_bits, act_quant = self.se_layers, self.residual_bits, self.act_quant
        estimator, per_channel = self.estimator, self.per_channel
        wq_choices = _quantized_choices("weight_bits", weight_bits)
        aq_choices = _quantized_choices("act_bits", act_bits)
        fixed = {
            "stem": _fixed("first_layer", first_layer),
            "classifier": _fixed("last_layer", last_layer),
            "head": _fixed("head_layers", head_layers),
            "se": _fixed("se_layers", se_layers),
        }
        rb = _fixed("residual_bits", residual_bits)
        qkw = {"estimator": estimator, "flavour": self.flavour} if act_quant == "batchquant" else {}

        def act_q(bits: tuple[int, ...]):
            return make_act_quant(act_quant, bits, **qkw)

        space_info = getattr(gm, "space_info", None)
        gm = copy.deepcopy(gm)
        if space_info is not None:  # keep the space: extract/set_active validate configs against it
            gm.space_info = dict(space_info)
        graph = gm.graph
        for node in list(graph.nodes):
            if node.op != "call_module":
                continue
            mod = gm.get_submodule(node.target)
            if isinstance(mod, (ElasticConv2d, ElasticLinear)):
                role = getattr(mod, "role", "block")
                if role == "block" and mod.slot is None:
                    role = "head"  # blocks of fixed stages (e.g. MobileNet's first block) are outside the policy
                if role == "block":
                    wbind, abind = PolicyBits(mod.slot, 0), PolicyBits(mod.slot, 1)
                    wch, ach = wq_choices, aq_choices
                else:
                    b = fixed.get(role, FLOAT_BITS)
                    if b == FLOAT_BITS:
                        continue
                    wbind, abind = PolicyBits(None, 0, b), PolicyBits(None, 1, b)
                    wch, ach = (b,), (b,)
                if not wch or not ach:
                    continue
                nout = mod.max_out if isinstance(mod, ElasticConv2d) else mod.out
                wq = LSQ(wch, per_channel=per_channel, num_channels=nout if per_channel else None)
                wq.qc_binding = wbind
                wq.active_bits = FLOAT_BITS
                mod.weight_quant = wq
                aq = act_q(ach)
                aq.qc_binding = abind
                aq.active_bits = FLOAT_BITS
                qname = node.target + "_input_quant"
                gm.add_submodule(qname, aq)
                with graph.inserting_before(node):
                    qnode = graph.call_module(qname, (node.args[0],))
                node.replace_input_with(node.args[0], qnode)
                # padding uses the quantizer's zero code (padded_conv2d); a reference, not a submodule
                link_pad_quantizer(mod, aq)
            elif isinstance(mod, QuantPoint):
                if mod.kind not in QUANT_POINT_KINDS:
                    raise ConfigError(f"{node.target}.kind", mod.kind, QUANT_POINT_KINDS)
                if rb == FLOAT_BITS:
                    continue
                aq = act_q((rb,))
                aq.qc_binding = PolicyBits(None, 1, rb)
                aq.active_bits = FLOAT_BITS
                aq.quant_point = mod.kind
                _set_module(gm, node.target, aq)
        graph.lint()
        gm.recompile()
        gm.quantize_options = dict(
            weight_bits=list(weight_bits),
            act_bits=list(act_bits),
            first_layer=first_layer,
            last_layer=last_layer,
            head_layers=head_layers,
            se_layers=se_layers,
            residual_bits=residual_bits,
            act_quant=act_quant,
            estimator=estimator,
            per_channel=per_channel,
            flavour=self.flavour,
        )
        link_bias_grid(gm)  # the qdq flavour trains on the int32 bias grid it is deployed with (inactive otherwise)
        return gm


def insert_quantizers(
    gm: fx.GraphModule,
    weight_bits: Sequence[int] = (2, 3, 4, 8, 32),
    act_bits: Sequence[int] = (2, 3, 4, 8, 32),
    **options: Any,
) -> fx.GraphModule:
    """Return a quantized copy of the traced supernet `gm` (the input is not modified).

    The function form of `InsertQuantizers`; `options` are its other fields.
    """
    return InsertQuantizers(tuple(weight_bits), tuple(act_bits), **options).run(gm).graph_module
