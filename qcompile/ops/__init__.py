"""Integer operators and their exact reference implementations (docs/integer_semantics.md)."""

from qcompile.ops.graph import IntegerGraph, IntegerGraphBuilder, op_name
from qcompile.ops.reference import (
    add,
    conv2d,
    dequantize,
    dequantize_acc,
    fixmul,
    flatten,
    linear,
    lut,
    max_pool2d,
    mean,
    mul,
    quantize,
    requantize,
    rescale,
)
from qcompile.ops.table import FLOAT_OPS, INTEGER_OPS, OPS, OpDef, op_def

__all__ = [
    "FLOAT_OPS",
    "INTEGER_OPS",
    "IntegerGraph",
    "IntegerGraphBuilder",
    "OPS",
    "OpDef",
    "add",
    "conv2d",
    "dequantize",
    "dequantize_acc",
    "fixmul",
    "flatten",
    "linear",
    "lut",
    "max_pool2d",
    "mean",
    "mul",
    "op_def",
    "op_name",
    "quantize",
    "requantize",
    "rescale",
]
