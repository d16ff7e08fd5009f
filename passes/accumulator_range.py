"""accumulator-range: prove that no int32 accumulator and no int64 intermediate of an IntegerGraph overflows.

An interval analysis over the integer program (docs/integer_semantics.md): every integer tensor gets
a range `[lo, hi]` from its op's definition, propagated in program order.

- codes: `quantize` -> `[0, qmax]`; `requantize`/`rescale`/`add`/`mean`/`mul` -> their clamp `[lo, hi]`
  (tightened by the monotone image of the input range where that is cheap); `lut` -> the table's
  range over the reachable indices; `flatten` keeps the range.
- accumulators (`conv2d`, `linear`), per output channel `c` with `K` taps and input codes in `[l, h]`
  (the padding code included):
    * `bound="bits"` (default: it holds for *any* weights of that bit-width):
      `|acc_c - bias_c| <= K 2^(b_w - 1) max(|l|, |h|)`.
    * `bound="weights"` (exact for these weights): `acc_c in [P_c l + N_c h, P_c h + N_c l] + bias_c`
      with `P_c` / `N_c` the sums of the positive / negative codes of channel `c`.
  The accumulator must fit int32: `[-2^31, 2^31 - 1]`.
- int64 epilogues: `|acc| M + 2^(s-1)` (requantize), `|x| M + |offset|` (rescale),
  `|a| Ma + |b| Mb + |offset|` (add), `HW max|x| M + |offset|` (mean), `|x||g| M + |g||offset_g| + |x||offset_x|
  + |offset|` (mul) must stay below 2^63.

Results go to `node.meta["qcompile"]["range"]` (and `acc_bound_bits` / `acc_bound_weights` for
accumulators). With `check=True` an overflow raises `LoweringError` naming the node, the source node of
the fake-quant graph, the reached range and what to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from qcompile.errors import ConfigError, LoweringError
from qcompile.ops import reference as R
from qcompile.ops.table import CODE_OPS, op_def
from qcompile.passes.infra import Pass, PassResult, register

__all__ = ["INT32_MAX", "INT32_MIN", "INT64_MAX", "AccumulatorRange", "accumulator_range"]

log = logging.getLogger(__name__)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1

Interval = tuple[int, int]


def _fetch(gm: fx.GraphModule, node: Any) -> torch.Tensor:
    obj: Any = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _where(n: fx.Node) -> str:
    src = n.meta.get("qcompile", {}).get("src")
    return f"node {n.name}" + (f" (lowered from {src})" if src else "")


def _weight_bits(n: fx.Node, w: torch.Tensor) -> int:
    bits = n.meta.get("qcompile", {}).get("weight_bits")
    if bits is not None:
        return int(bits)
    m = int(w.to(torch.int64).abs().max()) if w.numel() else 0
    return max(2, m.bit_length() + 1)  # smallest b with |codes| <= 2^(b-1)


def _acc_ranges(
    n: fx.Node, w: torch.Tensor, bias: torch.Tensor, x: Interval
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(bits-based, weights-exact) accumulator ranges over all output channels."""
    o = w.shape[0]
    wi = w.to(torch.int64).reshape(o, -1)
    k = wi.shape[1]
    b = bias.to(torch.int64).reshape(-1)
    lo, hi = x
    mag = max(abs(lo), abs(hi))
    half = 2 ** (_weight_bits(n, w) - 1)
    bits_rng = (int(b.min()) - k * half * mag, int(b.max()) + k * half * mag)
    pos = wi.clamp(min=0).sum(dim=1)
    neg = wi.clamp(max=0).sum(dim=1)
    amax = pos * hi + neg * lo + b
    amin = pos * lo + neg * hi + b
    return bits_rng, (int(amin.min()), int(amax.max()))


def _check64(n: fx.Node, value: int, what: str, check: bool) -> None:
    if check and value > INT64_MAX:
        raise LoweringError(_where(n), f"int64 intermediate {what} can reach {value} > 2^63 - 1",
                            "this is a to_integer bug (it chooses shifts to avoid this); report the subnet")


def _clamp_iv(v: Interval, lo: int, hi: int) -> Interval:
    return max(min(v[0], hi), lo), max(min(v[1], hi), lo)


def accumulator_range(gm: fx.GraphModule, bound: str = "bits", check: bool = True) -> dict[str, Interval]:
    """Run the analysis on an IntegerGraph; returns node name -> integer range and annotates `node.meta`.

    `bound` is `"bits"` (any weights of the layer's bit-width) or `"weights"` (these weights).
    With `check`, an accumulator outside int32 or an int64 intermediate outside int64 raises `LoweringError`.
    """
    if bound not in ("bits", "weights"):
        raise ConfigError("accumulator-range.bound", bound, ("bits", "weights"))
    rng: dict[fx.Node, Interval] = {}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        t = n.target
        meta = n.meta.setdefault("qcompile", {})
        out: Interval | None = None
        d = op_def(t)
        if d is None or d.kind != "integer":  # float islands carry no integer range
            continue
        kw = d.bind(n.args, n.kwargs, _where(n))
        if t in (R.quantize, R.quantize_linear):
            out = (0, int(kw["qmax"]))
        elif t in (R.requantize_float, R.rescale_float, R.add_float, R.mean_float, R.mul_float):
            # float32 epilogues of the qdq flavour: no int64 intermediate; codes in the clamp [lo, hi]
            out = (int(kw["lo"]), int(kw["hi"]))
        elif t in (R.conv2d, R.linear):
            x = rng.get(kw["x"])
            if x is None:
                raise LoweringError(_where(n), "integer conv/linear reads a tensor that is not integer codes",
                                    f"its input must come from {'/'.join(f.__name__ for f in CODE_OPS)}")
            w, bias = _fetch(gm, kw["w"]), _fetch(gm, kw["bias"])
            if t is R.conv2d and kw["padding"] not in (0, (0, 0), [0, 0]):
                pv = int(kw["pad_value"])
                x = (min(x[0], pv), max(x[1], pv))
            by_bits, by_weights = _acc_ranges(n, w, bias, x)
            meta["acc_bound_bits"], meta["acc_bound_weights"] = list(by_bits), list(by_weights)
            out = by_bits if bound == "bits" else by_weights
            if check and (out[0] < INT32_MIN or out[1] > INT32_MAX):
                k = w[0].numel()
                raise LoweringError(
                    _where(n),
                    f"int32 accumulator can reach [{out[0]}, {out[1]}] ({k} taps per output, "
                    f"{_weight_bits(n, w)}-bit weights, input codes in [{x[0]}, {x[1]}], "
                    f"bias in [{int(bias.min())}, {int(bias.max())}], bound={bound!r}), outside int32",
                    "lower this layer's weight or input bit-width, reduce its input channels / kernel, or "
                    "check the quantizer scales that set its bias",
                )
        elif t is R.requantize:
            acc = rng.get(kw["acc"], (INT32_MIN, INT32_MAX))
            m, s = _fetch(gm, kw["multiplier"]), _fetch(gm, kw["shift"])
            mag = max(abs(acc[0]), abs(acc[1]))
            _check64(n, mag * int(m.to(torch.int64).abs().max()) + 2 ** (int(s.max()) - 1), "|acc| M + 2^(s-1)",
                     check)
            out = (int(kw["lo"]), int(kw["hi"]))
        elif t is R.rescale:
            x = rng.get(kw["x"], (0, 255))
            m, off, sh = int(kw["multiplier"]), int(kw["offset"]), int(kw["shift"])
            _check64(n, max(abs(x[0]), abs(x[1])) * abs(m) + abs(off), "|x| M + |offset|", check)
            lo, hi = int(kw["lo"]), int(kw["hi"])
            ends = sorted(((x[0] * m + off) >> sh, (x[1] * m + off) >> sh))
            out = _clamp_iv((ends[0], ends[1]), lo, hi)
        elif t is R.add:
            a, b = rng.get(kw["a"], (0, 255)), rng.get(kw["b"], (0, 255))
            v = (max(map(abs, a)) * abs(int(kw["multiplier_a"])) + max(map(abs, b)) * abs(int(kw["multiplier_b"]))
                 + abs(int(kw["offset"])))
            _check64(n, v, "|a| Ma + |b| Mb + |offset|", check)
            out = (int(kw["lo"]), int(kw["hi"]))
        elif t is R.mean:
            x = rng.get(kw["x"], (0, 255))
            hw = meta.get("hw")
            if hw is None:
                tm = kw["x"].meta.get("tensor_meta") if isinstance(kw["x"], fx.Node) else None
                hw = int(tm.shape[2] * tm.shape[3]) if tm is not None else None
            if hw is None:
                if check:
                    raise LoweringError(_where(n), "spatial size of the averaged tensor is unknown",
                                        "annotate meta['qcompile']['hw'] or run ShapeProp before the analysis")
            else:
                _check64(n, hw * max(map(abs, x)) * abs(int(kw["multiplier"])) + abs(int(kw["offset"])),
                         "HW |x| M + |offset|", check)
            out = (int(kw["lo"]), int(kw["hi"]))
        elif t is R.mul:
            x, g = rng.get(kw["x"], (0, 255)), rng.get(kw["g"], (0, 255))
            gm_ = max(map(abs, g))
            xm = max(map(abs, x))
            v = (xm * gm_ * abs(int(kw["multiplier"])) + gm_ * abs(int(kw["offset_g"]))
                 + xm * abs(int(kw["offset_x"])) + abs(int(kw["offset"])))
            _check64(n, v, "|x||g| M + |g||offset_g| + |x||offset_x| + |offset|", check)
            out = (int(kw["lo"]), int(kw["hi"]))
        elif t is R.lut:
            x = rng.get(kw["x"], (0, 255))
            table = _fetch(gm, kw["table"]).to(torch.int64)
            seg = table[max(x[0], 0) : min(x[1], 255) + 1]
            out = (int(seg.min()), int(seg.max())) if seg.numel() else (0, 255)
        elif d.out_dtype == "same":  # flatten, max_pool2d: the input's codes, rearranged
            out = rng.get(kw[d.operands[0]])
        if out is not None:
            rng[n] = out
            meta["range"] = list(out)
    return {n.name: v for n, v in rng.items()}


@register
@dataclass(frozen=True)
class AccumulatorRange(Pass):
    """Analysis pass: annotate integer ranges and refuse overflow (see module doc). Never modifies the graph."""

    name = "accumulator-range"
    bound: str = "bits"
    check: bool = True

    def run(self, gm: fx.GraphModule) -> PassResult:
        accumulator_range(gm, self.bound, self.check)
        return PassResult(gm, False)
