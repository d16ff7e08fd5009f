"""The public functions of qcompile (re-exported by `qcompile/__init__.py`).

Each is a thin, documented entry into the pipeline: trace -> quantize -> extract -> calibrate ->
to_integer -> lower / export_onnx. Heavy backends are imported only when used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from torch import fx, nn

from qcompile.config import FLOAT_BITS, SubnetConfig
from qcompile.errors import ConfigError, LoweringError
from qcompile.fx.tracer import set_active, trace


def quantize(
    graph: fx.GraphModule,
    weight_bits: Sequence[int] = (2, 3, 4, 8, 32),
    act_bits: Sequence[int] = (2, 3, 4, 8, 32),
    *,
    first_layer: int = FLOAT_BITS,
    last_layer: int = 8,
    se_layers: int = FLOAT_BITS,
    head_layers: int = 8,
    residual_bits: int = 8,
    act_quant: str = "batchquant",
    estimator: str = "channel_mean",
    per_channel: bool = False,
    flavour: str = "fixed-point",
) -> fx.GraphModule:
    """Insert elastic quantizers into a traced supernet (pass `insert-quantizers`); returns a new graph.

    `flavour` is the arithmetic of the activation quantizers (`qcompile.quant.flavour`): `"fixed-point"`
    (QFA Eq. 5, fractional zero points; QOperator/TVM exact) or `"qdq"` (integer zero points and
    QuantizeLinear rounding, so the ONNX QDQ export computes what was evaluated).
    """
    from qcompile.passes.insert_quantizers import InsertQuantizers

    if not isinstance(graph, fx.GraphModule):
        raise ConfigError("graph", type(graph).__name__, "a traced supernet: qcompile.trace(net)")
    _require_elastic_layers(graph)
    out = InsertQuantizers(
        tuple(weight_bits),
        tuple(act_bits),
        first_layer=first_layer,
        last_layer=last_layer,
        se_layers=se_layers,
        head_layers=head_layers,
        residual_bits=residual_bits,
        act_quant=act_quant,
        estimator=estimator,
        per_channel=per_channel,
        flavour=flavour,
    ).run(graph).graph_module
    if hasattr(graph, "space_info"):  # keep the space: search (greedy_bits, evaluators) finds it here
        out.space_info = dict(graph.space_info)
    return out


def _require_elastic_layers(graph: fx.GraphModule) -> None:
    """`quantize` places its quantizers on the elastic conv/linear layers of a qcompile space; a plain CNN has
    none, and quantizing it would silently do nothing (and every later step lower a float model)."""
    from qcompile.nn.elastic import ElasticConv2d, ElasticLinear

    if not any(isinstance(m, (ElasticConv2d, ElasticLinear)) for m in graph.modules()):
        plain = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in graph.modules())
        raise ConfigError(
            f"graph ({type(graph).__name__})",
            f"no elastic conv or linear layer ({plain} plain nn.Conv2d/nn.Linear): nothing to quantize",
            "a supernet of a qcompile space (qc.trace(space.build_supernet())); for your own CNN use "
            "qc.quantize_model(model, policy=(8, 8), example_inputs=(x,))",
        )


def extract(graph: fx.GraphModule | nn.Module, cfg: SubnetConfig, *, flavour: str | None = None) -> fx.GraphModule:
    """Static subnet `cfg` of a supernet graph (pass `slice-subnet`). An eager supernet is traced first.

    `flavour` (None: the supernet's) puts the subnet's activation quantizers in that flavour
    (`qcompile.quant.flavour`); calibrate after changing it, its accuracy is measured in that flavour.
    """
    from qcompile.passes.slice_subnet import slice_subnet

    if not isinstance(cfg, SubnetConfig):
        hint = "build one with qcompile.SubnetConfig.from_dict(d)" if isinstance(cfg, dict) else ""
        raise ConfigError(
            "cfg",
            repr(cfg)[:60],
            "a qcompile.SubnetConfig, e.g. space.sample(seed=0), space.largest() or SubnetConfig.load(path)",
            hint,
        )
    if not isinstance(graph, nn.Module):
        raise ConfigError("graph", type(graph).__name__, "a supernet: qcompile.trace(net) or qcompile.quantize(...)")
    if not isinstance(graph, fx.GraphModule):
        graph = trace(graph)
    info = getattr(graph, "space_info", None)
    if info is not None:  # space identity: lengths, choices and resolution of this supernet's space
        from qcompile.spaces import from_dict

        from_dict(info).validate(cfg)
    sub = slice_subnet(graph, cfg)
    if flavour is not None:
        from qcompile.quant.flavour import set_flavour

        set_flavour(sub, flavour)
    return sub


def calibrate(subnet: nn.Module, batches: Iterable[Any], *, flavour: str | None = None, **kwargs: Any) -> nn.Module:
    """Recompute BN statistics and BatchQuant running estimates of one extracted subnet (no weight changes).

    `bn=False` keeps the BN statistics (a trained model from `quantize_model`) and calibrates the quantizers only.
    `flavour` (None: keep) first puts the activation quantizers in that flavour (`qcompile.quant.flavour`).
    """
    from qcompile.train.calibrate import calibrate as _calibrate

    if flavour is not None:
        from qcompile.quant.flavour import set_flavour

        set_flavour(subnet, flavour)
    return _calibrate(subnet, batches, **kwargs)


def quantize_model(model: nn.Module, policy: Any = (8, 8), example_inputs: Any = None,
                   weight_init: str = "maxabs", **kwargs: Any) -> fx.GraphModule:
    """Quantize any FX-traceable CNN with a fixed policy: a static fake-quant GraphModule like `extract`'s.

    `policy` is `(w, a)`, a `QuantPolicy` or `{layer_name: (w, a)}` (names from `layer_names`); see
    `qcompile.passes.quantize_model`. Calibrate with `calibrate(gm, batches, bn=False)`.
    """
    from qcompile.passes.quantize_model import quantize_model as _quantize_model

    return _quantize_model(model, policy, example_inputs, weight_init, **kwargs)


def layer_names(model: nn.Module) -> list[str]:
    """The policy slots (conv / linear module paths, graph order) of a plain model or a `quantize_model` result."""
    from qcompile.passes.quantize_model import layer_names as _layer_names

    return _layer_names(model)


def layer_info(model: nn.Module, example_inputs: Any = None):
    """Per-layer `LayerInfo` (name, op, channels, kernel, groups, MACs, params, bits) for costs and bit search."""
    from qcompile.passes.quantize_model import layer_info as _layer_info

    return _layer_info(model, example_inputs)


def to_integer(subnet: fx.GraphModule, check_overflow: bool = True, *, pipeline: str | Sequence[Any] | None = None):
    """Lower a calibrated fake-quant subnet to an `IntegerGraph` through the pass pipeline.

    The default pipeline is `fold-bn,fold-batchquant-bias,lower-to-integer,accumulator-range`
    (the last only with `check_overflow`); `pipeline` names other registered passes, e.g.
    `"fold-bn,fold-batchquant-bias,lower-to-integer,my-pass"` (docs/writing_a_pass.md).
    """
    from qcompile.passes.to_integer import to_integer as _to_integer

    if not isinstance(subnet, fx.GraphModule):
        raise LoweringError(
            f"to_integer({type(subnet).__name__})",
            "an eager nn.Module, not an extracted subnet (torch.fx.GraphModule)",
            "qc.extract(qnet, cfg) then qc.calibrate(sub, batches) for a supernet; "
            "qc.quantize_model(model, policy=(8, 8), example_inputs=(x,)) for your own CNN",
        )
    return _to_integer(subnet, check_overflow=check_overflow, pipeline=pipeline)


def _integer_graph(subnet: Any, pipeline: str | Sequence[Any] | None):
    from qcompile.ops import IntegerGraph

    if isinstance(subnet, IntegerGraph):
        if pipeline is not None:
            raise ConfigError("pipeline", pipeline, "None for an IntegerGraph (the pipeline lowers a subnet)")
        return subnet
    return to_integer(subnet, pipeline=pipeline)


def _require_integer_compute(ig: Any, allow_float: bool) -> None:
    """A program whose every conv and linear is a float island gains nothing from integer kernels, and usually
    means a float subnet (32-bit policy) or an unquantized model reached `lower` by mistake."""
    from qcompile.ops import reference as R

    if allow_float:
        return
    integer = {R.conv2d, R.linear}
    if not any(n.op == "call_function" and n.target in integer for n in ig.graph.nodes):
        raise LoweringError(
            "lower",
            f"the program has no integer conv or linear (ops: {', '.join(sorted(set(ig.ops()))) or 'none'})",
            "quantize it first (a bit policy below 32 bits, qc.quantize / qc.quantize_model), or pass "
            "allow_float=True to compile the float program anyway",
        )


def lower(
    subnet,
    target: str | dict = "x86",
    *,
    tune: bool = False,
    pipeline: str | Sequence[Any] | None = None,
    allow_float: bool = False,
    **kwargs: Any,
):
    """Compile a calibrated subnet (or an IntegerGraph) to integer kernels with TVM: returns a `Lowered`.

    `pipeline` (a pipeline string or pass instances) replaces `to_integer`'s default passes. `LoweringError`
    when the program has no integer conv or linear (all float islands), unless `allow_float`. Keywords go to
    `lower_integer_graph`: `batch="dynamic"` builds one library for any batch size, `batch=N` for N images.
    """
    from qcompile.backends.tvm import lower_integer_graph
    from qcompile.backends.tvm.targets import resolve_target

    resolve_target(target, kwargs.get("num_threads"))  # a bad target fails here, before any work
    ig = _integer_graph(subnet, pipeline)
    _require_integer_compute(ig, allow_float)
    return lower_integer_graph(ig, target, tune=tune, **kwargs)


def load(path: str | os.PathLike):
    """Load a lowered artifact written by `Lowered.export(path)`."""
    from qcompile.backends.tvm import load as _load

    return _load(path)


def export_onnx(subnet, path: str | os.PathLike, format: str = "qdq", *,
                pipeline: str | Sequence[Any] | None = None, **kwargs: Any):
    """Export a calibrated subnet (or an IntegerGraph) as ONNX ("qdq" or "qoperator").

    `pipeline` replaces `to_integer`'s default passes, as in `lower`. A QDQ export of a "fixed-point" flavour
    subnet warns that it is approximate, with the top-1 agreement measured on the sample of calibration
    images `calibrate` kept (`check_inputs=` overrides it).
    """
    from qcompile.backends.onnx import export_onnx as _export

    if format == "qdq" and "check_inputs" not in kwargs:
        kwargs["check_inputs"] = (getattr(subnet, "meta", None) or {}).get("calibration_sample")
    return _export(_integer_graph(subnet, pipeline), path, format=format, **kwargs)


__all__ = ["trace", "set_active", "quantize", "extract", "calibrate", "to_integer", "lower", "load", "export_onnx",
           "quantize_model", "layer_names", "layer_info"]
