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
from qcompile.errors import ConfigError
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
) -> fx.GraphModule:
    """Insert elastic quantizers into a traced supernet (pass `insert-quantizers`); returns a new graph."""
    from qcompile.passes.insert_quantizers import insert_quantizers

    if not isinstance(graph, fx.GraphModule):
        raise ConfigError("graph", type(graph).__name__, "a traced supernet: qcompile.trace(net)")
    out = insert_quantizers(
        graph,
        weight_bits,
        act_bits,
        first_layer=first_layer,
        last_layer=last_layer,
        se_layers=se_layers,
        head_layers=head_layers,
        residual_bits=residual_bits,
        act_quant=act_quant,
        estimator=estimator,
        per_channel=per_channel,
    )
    if hasattr(graph, "space_info"):  # keep the space: search (greedy_bits, evaluators) finds it here
        out.space_info = dict(graph.space_info)
    return out


def extract(graph: fx.GraphModule | nn.Module, cfg: SubnetConfig) -> fx.GraphModule:
    """Static subnet `cfg` of a supernet graph (pass `slice-subnet`). An eager supernet is traced first."""
    from qcompile.passes.slice_subnet import slice_subnet

    if not isinstance(graph, fx.GraphModule):
        graph = trace(graph)
    return slice_subnet(graph, cfg)


def calibrate(subnet: nn.Module, batches: Iterable[Any], **kwargs: Any) -> nn.Module:
    """Recompute BN statistics and BatchQuant running estimates of one extracted subnet (no weight changes)."""
    from qcompile.train.calibrate import calibrate as _calibrate

    return _calibrate(subnet, batches, **kwargs)


def to_integer(subnet: fx.GraphModule, check_overflow: bool = True):
    """Lower a calibrated fake-quant subnet to an `IntegerGraph` (passes fold-bn, fold-batchquant-bias, to-integer)."""
    from qcompile.passes.to_integer import to_integer as _to_integer

    return _to_integer(subnet, check_overflow=check_overflow)


def lower(subnet, target: str | dict = "x86", *, tune: bool = False, **kwargs: Any):
    """Compile a calibrated subnet (or an IntegerGraph) to integer kernels with TVM: returns a `Lowered`."""
    from qcompile.backends.tvm import lower_integer_graph
    from qcompile.ops import IntegerGraph

    ig = subnet if isinstance(subnet, IntegerGraph) else to_integer(subnet)
    return lower_integer_graph(ig, target, tune=tune, **kwargs)


def load(path: str | os.PathLike):
    """Load a lowered artifact written by `Lowered.export(path)`."""
    from qcompile.backends.tvm import load as _load

    return _load(path)


def export_onnx(subnet, path: str | os.PathLike, format: str = "qdq", **kwargs: Any):
    """Export a calibrated subnet (or an IntegerGraph) as ONNX ("qdq" or "qoperator")."""
    from qcompile.backends.onnx import export_onnx as _export

    return _export(subnet, path, format=format, **kwargs)


__all__ = ["trace", "set_active", "quantize", "extract", "calibrate", "to_integer", "lower", "load", "export_onnx"]
