"""The op table: every operator an `IntegerGraph` may call, declared once (docs/integer_semantics.md).

Each `OpDef` names the op, its tensor operands, its static parameters, the function an fx
`call_function` node calls (for integer ops the exact reference in `qcompile.ops.reference`, for
float-island ops the torch function), whether it is an integer or a float op, and the dtype rule of
its result. The graph serialiser, the TVM and ONNX emitters and `accumulator-range` look ops up
here instead of keeping their own lists, so adding an op means adding one entry (and a handler in
each backend, which `tests/ops/test_op_table.py` checks).
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from qcompile.errors import LoweringError
from qcompile.ops import reference as R

__all__ = [
    "REQUIRED",
    "OpDef",
    "OPS",
    "INTEGER_OPS",
    "FLOAT_OPS",
    "CODE_OPS",
    "op_def",
    "is_integer_op",
    "is_float_op",
]


class _Required:
    """Marker of a signature entry without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

#: dtype rules: a fixed dtype, or "same" (the dtype of the first operand)
OutDtype = Literal["uint8", "int32", "float64", "same"]


#: the reference functions' signatures, built once: `inspect.signature` per bind was a fifth of a dry
#: `plan_kernels` walk (the emitter binds every node it visits)
_signature = functools.lru_cache(maxsize=None)(inspect.signature)


@dataclass(frozen=True)
class OpDef:
    """One operator of the integer program.

    `operands` are the tensor operands (fx nodes: inputs of other ops or `get_attr` constants), in the
    order the reference takes them; `params` are the static parameters (Python numbers and tuples
    fixed at lowering time); `signature` is the positional order of all of them with their defaults
    (`REQUIRED` where there is none). `elementwise` marks float activations applied value by value.
    """

    name: str
    fn: Callable[..., Any]
    kind: Literal["integer", "float"]
    operands: tuple[str, ...]
    params: tuple[str, ...]
    out_dtype: OutDtype
    signature: tuple[tuple[str, Any], ...]
    elementwise: bool = False

    @property
    def key(self) -> str:
        """Name in a stored program (`IntegerGraph.save`): `ops.<name>` or `float.<name>`."""
        return f"{'ops' if self.kind == 'integer' else 'float'}.{self.name}"

    @property
    def display(self) -> str:
        """Name in the readable program text: `<name>` or `float.<name>`."""
        return self.name if self.kind == "integer" else f"float.{self.name}"

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any], where: str = "op") -> dict[str, Any]:
        """All operands and parameters by name, defaults filled in; a bad call raises `LoweringError`."""
        if self.kind == "integer":  # the reference's own signature (keyword-only parameters included)
            try:
                ba = _signature(self.fn).bind(*args, **kwargs)
            except TypeError as e:
                raise LoweringError(where, f"bad arguments for {self.display}: {e}",
                                    "check the op signature in docs/integer_semantics.md") from e
            ba.apply_defaults()
            return dict(ba.arguments)
        names = [k for k, _ in self.signature]
        if len(args) > len(names):
            raise LoweringError(where, f"{len(args)} positional arguments for {self.display}",
                                f"at most {len(names)}: {names}")
        out = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise LoweringError(where, f"unexpected keyword {k!r} for {self.display}", f"one of {names}")
            if k in out:
                raise LoweringError(where, f"{k!r} given twice for {self.display}", "pass it once")
            out[k] = v
        for k, d in self.signature:
            if k not in out:
                if d is REQUIRED:
                    raise LoweringError(where, f"{self.display} misses {k!r}",
                                        "the signature in docs/integer_semantics.md")
                out[k] = d
        return out


def _integer(fn: Callable[..., Any], operands: tuple[str, ...], out_dtype: OutDtype) -> OpDef:
    """An integer op: parameters and defaults from the reference function's own signature."""
    sig = tuple((p.name, REQUIRED if p.default is inspect.Parameter.empty else p.default)
                for p in inspect.signature(fn).parameters.values())
    params = tuple(k for k, _ in sig if k not in operands)
    return OpDef(fn.__name__, fn, "integer", operands, params, out_dtype, sig)


def _float(fn: Callable[..., Any], operands: tuple[str, ...], params: tuple[tuple[str, Any], ...] = (),
           elementwise: bool = False, optional: tuple[str, ...] = ()) -> OpDef:
    """A float-island op (float64 on every backend): torch builtins have no inspectable signature, so it is
    written out here; `optional` operands default to None (an absent conv or linear bias)."""
    sig = tuple((k, None if k in optional else REQUIRED) for k in operands) + params
    return OpDef(getattr(fn, "__name__", str(fn)), fn, "float", operands, tuple(k for k, _ in params), "same", sig,
                 elementwise)


_INPLACE = (("inplace", False),)

#: every op an IntegerGraph may call, integer ops first (program text, serialisation and backends use this)
OPS: tuple[OpDef, ...] = (
    _integer(R.quantize, ("x",), "uint8"),
    _integer(R.dequantize, ("q",), "float64"),
    _integer(R.conv2d, ("x", "w", "bias"), "int32"),
    _integer(R.linear, ("x", "w", "bias"), "int32"),
    _integer(R.requantize, ("acc", "multiplier", "shift", "offset"), "uint8"),
    _integer(R.dequantize_acc, ("acc", "scale"), "float64"),
    _integer(R.rescale, ("x",), "uint8"),
    _integer(R.add, ("a", "b"), "uint8"),
    _integer(R.mean, ("x",), "uint8"),
    _integer(R.mul, ("x", "g"), "uint8"),
    _integer(R.lut, ("x", "table"), "uint8"),
    _integer(R.flatten, ("x",), "same"),
    _integer(R.max_pool2d, ("x",), "same"),
    # the qdq flavour's float32 requantization (ONNX QuantizeLinear / onnxruntime QLinear* order of operations)
    _integer(R.quantize_linear, ("x",), "uint8"),
    _integer(R.requantize_float, ("acc", "w_scale"), "uint8"),
    _integer(R.rescale_float, ("x",), "uint8"),
    _integer(R.add_float, ("a", "b"), "uint8"),
    _integer(R.mean_float, ("x",), "uint8"),
    _integer(R.mul_float, ("x", "g"), "uint8"),
    _float(F.conv2d, ("input", "weight", "bias"),
           (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)), optional=("bias",)),
    _float(F.linear, ("input", "weight", "bias"), optional=("bias",)),
    _float(F.relu, ("input",), _INPLACE, elementwise=True),
    _float(F.relu6, ("input",), _INPLACE, elementwise=True),
    _float(F.hardswish, ("input",), _INPLACE, elementwise=True),
    _float(F.hardsigmoid, ("input",), _INPLACE, elementwise=True),
    _float(torch.sigmoid, ("input",), elementwise=True),
    _float(F.silu, ("input",), _INPLACE, elementwise=True),
    _float(torch.mean, ("input",), (("dim", None), ("keepdim", False))),
    _float(operator.add, ("a", "b")),
    _float(operator.mul, ("a", "b")),
    _float(torch.flatten, ("input",), (("start_dim", 0), ("end_dim", -1))),
)

_BY_FN: dict[Callable[..., Any], OpDef] = {d.fn: d for d in OPS}

#: the integer ops' reference functions, in table order
INTEGER_OPS: tuple[Callable[..., Any], ...] = tuple(d.fn for d in OPS if d.kind == "integer")
#: the float-island ops (computed in float64 on every backend)
FLOAT_OPS: tuple[Callable[..., Any], ...] = tuple(d.fn for d in OPS if d.kind == "float")
#: integer ops whose result is a fresh tensor of codes (uint8) of their own quantizer
CODE_OPS: tuple[Callable[..., Any], ...] = tuple(d.fn for d in OPS if d.kind == "integer" and d.out_dtype == "uint8")


def op_def(target: Any) -> OpDef | None:
    """The `OpDef` of a `call_function` target, or None when the op is not in the table."""
    try:
        return _BY_FN.get(target)
    except TypeError:  # an unhashable target is no op of ours
        return None


def is_integer_op(target: Any) -> bool:
    d = op_def(target)
    return d is not None and d.kind == "integer"


def is_float_op(target: Any) -> bool:
    d = op_def(target)
    return d is not None and d.kind == "float"
