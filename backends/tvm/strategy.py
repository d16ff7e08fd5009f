"""Kernel strategies: the interface between the Relax emitter and the kernel (schedule) engineers.

The emitter (`qcompile.backends.tvm.emitter`) turns each fused group of integer ops into an `OpCall`
and asks `select_strategy` for a kernel. A strategy that `applies` emits the group itself (its own
TE/TIR function, tensorized, tuned, ...); when none applies the emitter falls back to its naive TE
kernel. Strategies register with `@register_strategy(op, priority)`; the highest priority that
applies wins, ties go to the earliest registration.

`OpCall.op` names and their `params` (all plain Python ints/tuples/strings, shapes static):

- `"conv2d_requant"`: conv2d whose only user is requantize. params: `x_shape` (N, C, H, W),
  `w_shape` (O, C/groups, KH, KW), `out_shape`, `stride`, `padding`, `dilation` (2-tuples), `groups`,
  `pad_value`, `lo`, `hi`, `node` (fx node name of the requantize). args: `[x:u8, w:i8, bias:i32[O],
  multiplier:i32[O], shift:i32[O], offset:i64[O]]` -> u8 `out_shape`. With a fused epilogue, `post` (a tuple of
  `schedules.requant.EpilogueStep`: lookup table, residual add, rescale) and, after `offset`, the steps' tensor
  operands in step order (u8 tables, u8 skip tensors of `out_shape`); the kernel applies
  `schedules.requant.apply_post` to each code.
- `"conv2d"`: conv2d alone. Same params without `lo`/`hi`; args `[x, w, bias]` -> i32.
- `"linear_requant"`: params `x_shape` (N, K), `w_shape` (O, K), `out_shape`, `lo`, `hi`, `node`;
  args `[x:u8, w:i8, bias:i32[O], multiplier:i32[O], shift:i32[O]]` -> u8.
- `"linear"`: args `[x, w, bias]` -> i32.
- `"requantize"`, `"rescale"`, `"add"`, `"mean"`, `"mul"`, `"lut"`, `"quantize"`, `"dequantize"`,
  `"dequantize_acc"`: one op each, params = the op's keyword parameters plus `shapes` (input
  shapes) and `node`; args in the op's positional order (constants included).

Semantics are docs/integer_semantics.md: a strategy must be bit-exact against
`qcompile.ops.reference`; the backend tests check every strategy that applies against it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # tvm is heavy; only the emitter needs it at run time
    import tvm
    from tvm import relax

log = logging.getLogger(__name__)

__all__ = ["OpCall", "Strategy", "register_strategy", "select_strategy", "registered_strategies"]


@dataclass(frozen=True)
class OpCall:
    """One fused group the emitter wants a kernel for."""

    op: str  # "conv2d_requant", "conv2d", "linear_requant", "linear", "lut", "add", ...
    params: dict = field(hash=False)  # static parameters: shapes, stride, padding, groups, pad_value, lo, hi
    target: tvm.target.Target = field(hash=False)


@runtime_checkable
class Strategy(Protocol):
    """A kernel provider for some OpCalls."""

    name: str

    def applies(self, call: OpCall) -> bool: ...

    def emit(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr]) -> relax.Expr: ...


# op -> list of (priority, registration order, strategy instance)
_REGISTRY: dict[str, list[tuple[int, int, Strategy]]] = {}
_counter = 0
_schedules_imported = False


def register_strategy(op: str, priority: int = 0) -> Callable[[type], type]:
    """Class decorator: register an instance of the class as a strategy for `op` (higher priority first)."""

    def deco(cls: type) -> type:
        global _counter
        inst = cls()
        if not getattr(inst, "name", None):
            inst.name = cls.__name__  # type: ignore[attr-defined]
        _REGISTRY.setdefault(op, []).append((priority, _counter, inst))
        _counter += 1
        _REGISTRY[op].sort(key=lambda t: (-t[0], t[1]))
        log.debug("registered strategy %s for %s (priority %d)", inst.name, op, priority)
        return cls

    return deco


def _import_schedules() -> None:
    """Import `qcompile.backends.tvm.schedules` once, if it exists, so its registrations happen."""
    global _schedules_imported
    if _schedules_imported:
        return
    _schedules_imported = True
    name = "qcompile.backends.tvm.schedules"
    if importlib.util.find_spec(name) is not None:
        importlib.import_module(name)


def select_strategy(call: OpCall) -> Strategy | None:
    """The highest-priority registered strategy for `call.op` that applies, or None (naive kernel)."""
    _import_schedules()
    for _prio, _order, strat in _REGISTRY.get(call.op, []):
        if strat.applies(call):
            return strat
    return None


def registered_strategies(op: str | None = None) -> dict[str, list[Any]]:
    """Registered strategies by op, highest priority first (for tests and diagnostics)."""
    _import_schedules()
    ops = [op] if op is not None else sorted(_REGISTRY)
    return {o: [s for _p, _c, s in _REGISTRY.get(o, [])] for o in ops}
