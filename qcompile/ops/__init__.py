"""Integer operators and their exact reference implementations (docs/integer_semantics.md)."""

from qcompile.ops.graph import FLOAT_OPS, IntegerGraph, IntegerGraphBuilder, op_name
from qcompile.ops.reference import (
    INTEGER_OPS,
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

__all__ = [
    "FLOAT_OPS",
    "INTEGER_OPS",
    "IntegerGraph",
    "IntegerGraphBuilder",
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
    "op_name",
    "quantize",
    "requantize",
    "rescale",
]
