"""x86 GEMV with 4-bit and 2-bit weights packed two or four to a byte (issue 20's stretch): half or a quarter of the
weight bytes of the int8 `linear` GEMV (`x86.strategy._LinearBase._emit_vnni`), for layers bound by reading their
weights once per call (the batch-1 classifier).

Packing (`pack_packed_weights`, at compile time from the constant weights): `g = 8 // bits` output-channel vectors
of 16 lanes share one byte per (lane, reduction value): byte = `sum_{s<g-1} u_s << (bits*s) | (w_top mod 2^bits) <<
(bits*(g-1))`, with the lower slots in offset binary `u_s = w_s + 2^(bits-1)` (in [0, 2^bits)) and the top slot in
two's complement. Layout `[O/(16g), K/4, 16, 4]`, the `[O/16, K/4, 16, 4]` of the int8 GEMV with `g` channel vectors
folded into each byte.

Unpacking in registers without shifts or sign fixes (`intrin.x86.packed_bcast_intrinsic`): for slot `s` the kernel
feeds `vpdpbusd` the byte masked to its low `bits*(s+1)` bits, `int8(v & (2^(bits*(s+1)) - 1))` (the top slot: the
byte itself as int8), so `M_s = sum_k x_k * (sum_{t<=s} 2^(bits*t) u_t)` (top: `... + 2^(bits*(g-1)) w_top`). The
dot products follow by differences (`unmix_expr`, exact integer algebra):

- `sum_k x_k w_s = (M_s - M_{s-1}) >> (bits*s) - 2^(bits-1) * sum_k x_k` for `s < g-1` (`M_{-1} = 0`),
- `sum_k x_k w_top = (M_top - M_{g-2}) >> (bits*(g-1))`.

The differences are exact multiples of `2^(bits*s)` (so the arithmetic shift is a division) and every `M_s` is a sum
of u8 x s8 products like the int8 kernel's, so int32 holds it wherever `to_integer` proved the int8 layer fits; a
wrapped intermediate would still give the right difference modulo 2^32, and the true value fits. One 64-byte load
feeds `g` `vpdpbusd` after `g - 1` `vpand`: 3 instructions per 32 channels x 4 values at 4 bits, 7 per 64 at 2 bits.

Which width a layer takes (`choose_weight_bits`): the narrowest `PACKED_BITS` whose range holds *every* actual weight
code (exact by construction; 3-bit codes take the 4-bit packing), where `packed_default` says it wins; a caller may
force a width (`ConfigError` if the codes do not fit it) or 8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import s_tir, te, tirx

from qcompile.backends.tvm.intrin.x86 import (
    PACKED_BITS,
    packed_bcast_intrinsic,
    packed_slot_expr,
    register_packed_intrinsics,
)
from qcompile.backends.tvm.schedules.parallel import parallel_if_worth
from qcompile.errors import ConfigError

__all__ = ["PACKED_BITS", "WEIGHT_BITS_CHOICES", "PACKED_MIN_WEIGHT_BYTES", "fits_bits", "choose_weight_bits",
           "pack_packed_weights", "unpack_packed_weights", "packed_linear_acc", "schedule_packed_linear",
           "unmix_expr", "offset_expr"]

#: what a caller may force (`OpCall.params["weight_bits"]`): None (the rule), 8 (the int8 kernel), or a packed width
WEIGHT_BITS_CHOICES = (None, 8, *PACKED_BITS)
#: int8 weight bytes from which the packed kernel is the default (`choose_weight_bits`): below it the weights live
#: in L1/L2 and the unpacking costs more than the bytes it saves (docs/peers.md, session 14, per-layer table)
PACKED_MIN_WEIGHT_BYTES = 1 << 30


def fits_bits(w: np.ndarray, bits: int) -> bool:
    """Whether every code of `w` is a signed `bits`-bit integer, `[-2^(bits-1), 2^(bits-1) - 1]`."""
    w = np.asarray(w)
    return bool(w.size == 0 or (w.min() >= -(1 << (bits - 1)) and w.max() <= (1 << (bits - 1)) - 1))


def choose_weight_bits(w: np.ndarray, force: int | None = None, *, k: int | None = None,
                       min_bytes: int | None = None) -> int:
    """Weight width of a GEMV layer with int8 codes `w[O, K]`: `force` when given (8, or a `PACKED_BITS` width the
    codes fit: else `ConfigError`), otherwise the narrowest packed width that holds every code, if the layer has at
    least `min_bytes` (default `PACKED_MIN_WEIGHT_BYTES`) of int8 weights, else 8. `k`: the reduction length, which
    the packed kernel needs to be a multiple of 4 (else 8)."""
    w = np.asarray(w)
    if force not in WEIGHT_BITS_CHOICES:
        raise ConfigError("weight_bits", force, WEIGHT_BITS_CHOICES)
    if force is not None:
        if force != 8 and not fits_bits(w, force):
            raise ConfigError("weight_bits", force,
                              f"a width holding the layer's codes [{int(w.min())}, {int(w.max())}] (8 always does)")
        if force != 8 and k is not None and k % 4:
            raise ConfigError("weight_bits", force, f"8 for a reduction length {k} not a multiple of 4")
        return force
    limit = PACKED_MIN_WEIGHT_BYTES if min_bytes is None else min_bytes
    if w.size < limit or (k is not None and k % 4):
        return 8
    for bits in sorted(PACKED_BITS):
        if fits_bits(w, bits):
            return bits
    return 8


def _slots(bits: int) -> int:
    if bits not in PACKED_BITS:
        raise ConfigError("bits", bits, PACKED_BITS)
    return 8 // bits


def pack_packed_weights(w: np.ndarray, bits: int) -> np.ndarray:
    """`[O, K]` codes (K a multiple of 4, each a signed `bits`-bit integer) -> `[ceil(O/16g), K/4, 16, 4]` uint8,
    output channel `c = (gb*g + s)*16 + l` in slot `s` of byte `[gb, :, l, :]` (module docstring); zero weights pad
    O (never stored)."""
    g = _slots(bits)
    w2 = np.asarray(w).reshape(w.shape[0], -1).astype(np.int64)
    o, k = w2.shape
    if k % 4:
        raise ConfigError("K", k, "a multiple of 4 (the packed GEMV reads 4 reduction values per lane)")
    if not fits_bits(w2, bits):
        raise ConfigError("weight codes", (int(w2.min()), int(w2.max())), f"signed {bits}-bit integers")
    gb = -(-o // (16 * g))
    wp = np.zeros((gb * g * 16, k), np.int64)
    wp[:o] = w2
    wp = wp.reshape(gb, g, 16, k // 4, 4)
    mask, half = (1 << bits) - 1, 1 << (bits - 1)
    byte = np.zeros((gb, 16, k // 4, 4), np.int64)
    for s in range(g):
        code = (wp[:, s] + half) if s < g - 1 else (wp[:, s] & mask)
        byte |= code << (bits * s)
    return np.ascontiguousarray(byte.astype(np.uint8).transpose(0, 2, 1, 3))


def unpack_packed_weights(packed: np.ndarray, bits: int, o: int) -> np.ndarray:
    """Inverse of `pack_packed_weights`: the `[O, K]` int8 codes."""
    g = _slots(bits)
    b = np.asarray(packed).astype(np.int64).transpose(0, 2, 1, 3)  # [gb, 16, K/4, 4]
    mask, half = (1 << bits) - 1, 1 << (bits - 1)
    slots = []
    for s in range(g):
        code = (b >> (bits * s)) & mask
        slots.append(code - half if s < g - 1 else np.where(code >= half, code - (1 << bits), code))
    w = np.stack(slots, 1)  # [gb, g, 16, K/4, 4]
    return w.reshape(-1, w.shape[-2] * 4)[:o].astype(np.int8)


def unmix_expr(m_at: Callable[[Any], Any], s: Any, bits: int) -> Any:
    """`(M_s - M_{s-1}) >> (bits*s)` of slot `s` from the masked sums `m_at(t)` (int32 `M_t`, `M_{-1} = 0`): the
    slot's dot product, less `2^(bits-1) * sum_k x_k` below the top slot (`offset_expr`)."""
    g = _slots(bits)
    # constant slot indices only (select chains that fold once the slot loop is unrolled): an index `s - 1` beside
    # `s` is a read region reverse_compute_at cannot solve
    cur, prev = m_at(g - 1), tirx.const(0, "int32")
    for t in range(g - 1):
        cur = tirx.if_then_else(s == t, m_at(t), cur)
        prev = tirx.if_then_else(s == t + 1, m_at(t), prev)
    return tirx.shift_right(cur - prev, tirx.const(bits, "int32") * s)


def offset_expr(s: Any, sx: Any, bits: int) -> Any:
    """What slot `s`'s offset-binary codes add to its `unmix_expr`: `2^(bits-1) * sx` below the top slot, else 0."""
    return tirx.if_then_else(s < _slots(bits) - 1, tirx.const(1 << (bits - 1), "int32") * sx,
                             tirx.const(0, "int32"))


def packed_linear_acc(x: te.Tensor, n: int, k: int, o: int, bits: int) -> tuple[te.Tensor, Callable[[Any, Any],
                                                                                                    Any]]:
    """TE of `acc[i, j] = sum_k x[i, k] * w[j, k]` from packed weights: returns `(wp, acc_at)`, `wp` the
    `[O/(16g), K/4, 16, 4]` uint8 placeholder and `acc_at(i, j)` the int32 accumulator (stages "sx", "packed_acc",
    "unmix"; schedule them with `schedule_packed_linear`)."""
    g = _slots(bits)
    gb, kb = -(-o // (16 * g)), k // 4
    wp = te.placeholder((gb, kb, 16, 4), "uint8", name="wp")
    rk = te.reduce_axis((0, k), "rk")
    sx = te.compute((n,), lambda i: te.sum(x[i, rk].astype("int32"), axis=rk), name="sx")
    rb, ri = te.reduce_axis((0, kb), "rb"), te.reduce_axis((0, 4), "ri")
    m = te.compute((n, gb, g, 16), lambda i, b, s, li: te.sum(
        x[i, rb * 4 + ri].astype("int32") * packed_slot_expr(wp[b, rb, li, ri], s, bits), axis=[rb, ri]),
        name="packed_acc")
    acc = te.compute((n, gb, g, 16), lambda i, b, s, li: unmix_expr(lambda t: m[i, b, t, li], s, bits),
                     name="unmix")
    # the activation sum's term in the output stage (which reads the finished accumulators): in "unmix" it would
    # make the per-call sum a producer of every channel block
    return wp, lambda i, j: acc[i, j // (16 * g), (j // 16) % g, j % 16] - offset_expr((j // 16) % g, sx[i], bits)


def schedule_packed_linear(sch: s_tir.Schedule, n: int, k: int, o: int, bits: int) -> None:
    """Schedule `packed_linear_acc`'s stages: channel groups over cores, `8 // g` accumulator vectors... in
    registers per group block (`inner` groups of `g` slots, 8 zmm accumulators in flight as the int8 GEMV's 4), the
    reduction through `packed_bcast_intrinsic(bits)`, the unmix of a block while it is hot (slots unrolled so its
    selects fold, lanes vectorised); the activation sum once per call before the parallel region."""
    register_packed_intrinsics()
    g = _slots(bits)
    gb = -(-o // (16 * g))
    want = max(1, 8 // g)
    inner = max(t for t in range(1, want + 1) if gb % t == 0)
    # the unmix stage anchors the block (compute_at of the sums into it: its select chains read every slot, a
    # region reverse_compute_at cannot solve)
    un = sch.get_sblock("unmix")
    _, u_b, u_s, u_l = sch.get_loops(un)
    bo, _ = sch.split(u_b, [None, inner])
    parallel_if_worth(sch, bo, n * k * gb * 16 * g, "gemv")
    blk = sch.get_sblock("packed_acc")
    sch.compute_at(blk, bo)
    loops = sch.get_loops(blk)
    at = next(j for j, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(bo)))
    rest = loops[at + 1:]  # (bi, s, li, rb, ri), or without bi when one group is the block (compute_at drops it)
    bi, (s, li, rb_, ri_) = (rest[0], rest[1:]) if len(rest) == 5 else (None, rest)
    sch.reorder(rb_, *([bi] if bi is not None else []), s, li, ri_)
    init = sch.decompose_reduction(blk, rb_)
    sch.tensorize(s, packed_bcast_intrinsic(bits))
    if bi is not None:
        sch.unroll(bi)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(u_s)
    sch.vectorize(u_l)
