"""Output fidelity of a runner: how far its output is from torch fp32, and, for runners of our
IntegerGraph, from the reference executor in codes.

Top-1 agreement says nothing on random weights (logits of a random net are nearly tied, so an int8
runtime that works flips the argmax), hence continuous measures on the same input:

- relative L2 error  ||y - y_fp32||_2 / ||y_fp32||_2
- cosine similarity  <y, y_fp32> / (||y||_2 ||y_fp32||_2)
- max |code difference| vs the reference executor (`qcompile.ops.reference`, docs/integer_semantics.md):
  for an integer output the difference itself; for `dequantize_acc` / `dequantize` outputs the float
  difference divided by the output scale, i.e. in accumulator / activation codes. 0 = bit-exact.
  An accumulator LSB is small: one activation code of difference at a linear layer's input moves its
  accumulator by up to max |w| (127 for int8), so runtimes that round differently (onnxruntime's QDQ
  path) show thousands here while staying within a code on every activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qcompile.errors import ConfigError


@dataclass(frozen=True)
class Fidelity:
    """rel_l2 / cosine vs torch fp32 (None when not comparable); max_code_diff vs the reference executor
    (None for runners that do not run our IntegerGraph)."""

    rel_l2: float | None = None
    cosine: float | None = None
    max_code_diff: float | None = None


def _flat(y: Any, n: int) -> np.ndarray:
    return np.asarray(y, dtype=np.float64).reshape(n, -1)


def rel_l2(y: Any, ref: Any) -> float:
    """||y - ref||_2 / ||ref||_2 over the whole batch (float64)."""
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    d = np.asarray(y, dtype=np.float64).reshape(-1) - r
    return float(np.linalg.norm(d) / max(np.linalg.norm(r), np.finfo(np.float64).tiny))


def cosine(y: Any, ref: Any) -> float:
    """Cosine similarity of the flattened outputs (float64)."""
    a = np.asarray(y, dtype=np.float64).reshape(-1)
    b = np.asarray(ref, dtype=np.float64).reshape(-1)
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else float("nan")


def output_scale(ig: torch.fx.GraphModule) -> np.ndarray | None:
    """The scale turning the graph's float output back into codes, broadcastable to the output
    (per-channel for `dequantize_acc`, scalar for `dequantize`); None when the output is already codes."""
    from qcompile.ops import reference as R

    out = next(n for n in ig.graph.nodes if n.op == "output").args[0]
    if getattr(out, "op", None) != "call_function" or out.target not in (R.dequantize_acc, R.dequantize):
        return None
    s = out.args[1] if len(out.args) > 1 else out.kwargs["scale"]
    if out.target is R.dequantize:
        return np.asarray(float(s))
    obj: Any = ig
    for part in s.target.split("."):
        obj = getattr(obj, part)
    return obj.detach().to(torch.float64).numpy().reshape(-1)


def max_code_diff(y: Any, ref: Any, scale: np.ndarray | None) -> float:
    """max |y - ref| in codes: divided by `scale` (channel axis 1) when the output is dequantized."""
    a = np.asarray(y, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ConfigError("runner output shape", a.shape, f"the reference executor's {b.shape}")
    d = np.abs(a - b)
    if scale is not None:
        s = np.asarray(scale, dtype=np.float64)
        if s.ndim == 1 and s.size > 1:
            s = s.reshape((1, -1) + (1,) * (a.ndim - 2))
        d = d / np.abs(s)
    return float(d.max()) if d.size else 0.0


def fidelity(y: Any, fp32: Any | None, reference: Any | None = None, scale: np.ndarray | None = None) -> Fidelity:
    """All three numbers for one runner output; `fp32` / `reference` None leaves that part empty."""
    n = len(np.asarray(y))
    out = Fidelity()
    if fp32 is not None and _flat(y, n).shape == _flat(fp32, n).shape:
        out = Fidelity(rel_l2(y, fp32), cosine(y, fp32))
    if reference is not None:
        out = Fidelity(out.rel_l2, out.cosine, max_code_diff(y, reference, scale))
    return out
