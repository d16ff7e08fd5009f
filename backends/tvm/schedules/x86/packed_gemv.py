"""x86 GEMV with 4-bit and 2-bit weights packed two or four to a byte (issue 20's stretch): half or a quarter of the
weight bytes of the int8 `linear` GEMV (`x86.strategy._LinearBase._emit_vnni`), for layers bound by reading their
weights once per call (the batch-1 classifier, 1x1 convs on one pixel: `gemv.pointwise_gemv_packed_x86`).

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

The differences are exact multiples of `2^(bits*s)` (so the arithmetic shift is a division). Every `M_s` is a sum of
u8 x s8 products and every difference `2^(bits*s) * sum_k x_k u_s` is at most `255 * 128 * K` in magnitude, the int8
kernel's own bound, so int32 holds them for `K <= PACKED_MAX_K` (`packed_sums` refuses more). One 64-byte load
feeds `g` `vpdpbusd` after `g - 1` `vpand`: 3 instructions per 32 channels x 4 values at 4 bits, 7 per 64 at 2 bits.

Which width a layer takes (`choose_weight_bits`, `PackedWeights`): the narrowest `PACKED_BITS` whose range holds
*every* actual weight code (exact by construction; 3-bit codes take the 4-bit packing), for one activation row and
at least `PACKED_MIN_WEIGHT_BYTES` of weights, where the per-layer measurements say it wins; a caller may force a
width (`ConfigError` if the codes do not fit it) or 8, per lowering (`packed_weights`) or per call (`weight_bits`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
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

__all__ = ["PACKED_BITS", "WEIGHT_BITS_CHOICES", "PACKED_MIN_WEIGHT_BYTES", "PACKED_MAX_ROWS", "PACKED_MAX_K",
           "PackedWeights", "packed_blocking",
           "current_packed_weights", "packed_weights", "fits_bits", "choose_weight_bits",
           "pack_packed_weights", "unpack_packed_weights", "packed_linear_acc", "schedule_packed_linear",
           "unmix_expr", "packed_sums", "packed_at", "schedule_packed"]

#: what a caller may force (`PackedWeights.force`, `OpCall.params["weight_bits"]`): None (the rule), 8 (the int8
#: kernel), or a packed width
WEIGHT_BITS_CHOICES = (None, 8, *PACKED_BITS)
#: int8 weight bytes from which the packed kernel is the default: measured faster warm from 32 KB (96->336 and
#: 336->96 on one pixel) to 1.3 MB, even at 16-19 KB (128->128, 56->336, 336->56; docs/peers.md, session 14)
PACKED_MIN_WEIGHT_BYTES = 24 << 10
#: activation rows (batch rows of a linear, pixels of a pointwise GEMV) up to which the packed kernel is the
#: default: on 4 pixels each weight vector feeds 4 `vpdpbusd` and the kernel is bound by them, not by the bytes
#: (160->960 on 4 pixels: 4.73 us int8, 4.87 packed)
PACKED_MAX_ROWS = 1
#: longest reduction whose masked sums and differences stay inside int32 (`255 * 128 * K < 2^31`)
PACKED_MAX_K = (2**31 - 1) // (255 * 128)


@dataclass(frozen=True)
class PackedWeights:
    """When GEMV layers take packed 4-bit / 2-bit weights (`choose_weight_bits`). `force`: None (the rule below),
    8 (never: the int8 kernels), or a `PACKED_BITS` width for every GEMV layer (a `ConfigError` names a layer whose
    codes do not fit it). The rule: the narrowest packed width holding every code, for layers with at least
    `min_bytes` of int8 weights and at most `max_rows` activation rows. Set it for a lowering with
    `packed_weights(...)`; a call's own `OpCall.params["weight_bits"]` wins over it."""

    force: int | None = None
    min_bytes: int = PACKED_MIN_WEIGHT_BYTES
    max_rows: int = PACKED_MAX_ROWS

    def __post_init__(self) -> None:
        if self.force not in WEIGHT_BITS_CHOICES:
            raise ConfigError("PackedWeights.force", self.force, WEIGHT_BITS_CHOICES)
        if int(self.min_bytes) < 0:
            raise ConfigError("PackedWeights.min_bytes", self.min_bytes, "a byte count >= 0")
        if int(self.max_rows) < 1:
            raise ConfigError("PackedWeights.max_rows", self.max_rows, "a row count >= 1")


_DEFAULT = PackedWeights()
_POLICY: ContextVar[PackedWeights | None] = ContextVar("qcompile_packed_weights", default=None)


def current_packed_weights() -> PackedWeights:
    """The `PackedWeights` in effect (the default rule unless inside `packed_weights`)."""
    return _POLICY.get() or _DEFAULT


@contextlib.contextmanager
def packed_weights(policy: PackedWeights) -> Iterator[PackedWeights]:
    """Lower with `policy` in effect, e.g. `with packed_weights(PackedWeights(force=8)): qc.lower(...)` for the int8
    kernels everywhere; the previous policy is restored afterwards."""
    if not isinstance(policy, PackedWeights):
        raise ConfigError("packed_weights", policy, "a PackedWeights")
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def fits_bits(w: np.ndarray, bits: int) -> bool:
    """Whether every code of `w` is a signed `bits`-bit integer, `[-2^(bits-1), 2^(bits-1) - 1]`."""
    w = np.asarray(w)
    return bool(w.size == 0 or (w.min() >= -(1 << (bits - 1)) and w.max() <= (1 << (bits - 1)) - 1))


def choose_weight_bits(w: np.ndarray, force: int | None = None, *, k: int | None = None, rows: int = 1,
                       policy: PackedWeights | None = None) -> int:
    """Weight width of a GEMV layer with int8 codes `w[O, K(,1,1)]` and `rows` activation rows: `force` (a call's
    `weight_bits`, else `policy.force`) when given, 8 or a `PACKED_BITS` width the codes fit (else `ConfigError`);
    otherwise `policy`'s rule (`PackedWeights`; default: `current_packed_weights()`). Exact by construction: a
    packed width is taken only when every actual code fits it (3-bit codes take the 4-bit packing). `k`: a
    reduction length the kernel needs to be a multiple of 4 (the linear GEMV), else None."""
    w = np.asarray(w)
    policy = current_packed_weights() if policy is None else policy
    force = policy.force if force is None else force
    if force not in WEIGHT_BITS_CHOICES:
        raise ConfigError("weight_bits", force, WEIGHT_BITS_CHOICES)
    if force is not None:
        if force != 8 and not fits_bits(w, force):
            raise ConfigError("weight_bits", force,
                              f"a width holding the layer's codes [{int(w.min())}, {int(w.max())}] (8 always does)")
        if force != 8 and k is not None and k % 4:
            raise ConfigError("weight_bits", force, f"8 for a reduction length {k} not a multiple of 4")
        if force != 8 and w.reshape(w.shape[0], -1).shape[1] > PACKED_MAX_K:
            raise ConfigError("weight_bits", force, f"8 for a reduction length over {PACKED_MAX_K}")
        return force
    if w.size < policy.min_bytes or rows > policy.max_rows or (k is not None and k % 4) or \
            w.reshape(w.shape[0], -1).shape[1] > PACKED_MAX_K:
        return 8
    for bits in sorted(PACKED_BITS):
        if fits_bits(w, bits):
            return bits
    return 8


def _slots(bits: int) -> int:
    if bits not in PACKED_BITS:
        raise ConfigError("bits", bits, PACKED_BITS)
    return 8 // bits


def packed_blocking(o: int, bits: int, block_rows: int = 1) -> tuple[int, int]:
    """(channel groups, groups per block) of a packed GEMV with `o` outputs: `inner` groups of `g` vectors give 8
    accumulator vectors per block with `block_rows` rows in it (more spill the 32 zmm with the broadcasts, and a
    tile over TVM's stack limit becomes a workspace allocation per block), and the groups are padded with zero
    channels to whole blocks: MobileNetV3's 336 channels are 11 groups at 4 bits, which as a divisor would have
    left one group (2 accumulators) per block, 1.5x slower than int8 on 56->336."""
    g = _slots(bits)
    gb = -(-o // (16 * g))
    inner = max(1, min(gb, 8 // (g * block_rows)))
    return -(-gb // inner) * inner, inner


def pack_packed_weights(w: np.ndarray, bits: int, block_rows: int = 1) -> np.ndarray:
    """`[O, K]` codes (K a multiple of 4, each a signed `bits`-bit integer) -> `[G, K/4, 16, 4]` uint8 with `G`
    channel groups (`packed_blocking(O, bits, block_rows)`), output channel `c = (gb*g + s)*16 + l` in slot `s` of
    byte `[gb, :, l, :]` (module docstring); zero weights pad O (never stored)."""
    g = _slots(bits)
    w2 = np.asarray(w).reshape(w.shape[0], -1).astype(np.int64)
    o, k = w2.shape
    if k % 4:
        raise ConfigError("K", k, "a multiple of 4 (the packed GEMV reads 4 reduction values per lane)")
    if not fits_bits(w2, bits):
        raise ConfigError("weight codes", (int(w2.min()), int(w2.max())), f"signed {bits}-bit integers")
    gb, _ = packed_blocking(o, bits, block_rows)
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


def unmix_expr(m_at: Callable[[Any], Any], s: Any, sx: Any, bits: int) -> Any:
    """Slot `s`'s dot product `sum_k x_k w_s` from the masked sums `m_at(t)` (int32 `M_t`, `M_{-1} = 0`) and the
    activation sum `sx`: `(M_s - M_{s-1}) >> (bits*s)`, less `2^(bits-1) * sx` (what the offset-binary codes add)
    below the top slot."""
    g = _slots(bits)
    zero = tirx.const(0, "int32")
    # constant slot indices only (select chains that fold once the slot loop is unrolled): an index `s - 1` beside
    # `s` is a read region compute_at cannot solve
    cur, prev = m_at(g - 1), zero
    for t in range(g - 1):
        cur = tirx.if_then_else(s == t, m_at(t), cur)
        prev = tirx.if_then_else(s == t + 1, m_at(t), prev)
    off = tirx.if_then_else(s < g - 1, tirx.const(1 << (bits - 1), "int32") * sx, zero)
    return tirx.shift_right(cur - prev, tirx.const(bits, "int32") * s) - off


def packed_sums(rows: int, kb: int, o: int, bits: int, xq_at: Callable[[Any, Any, Any], Any],
                sx: te.Tensor, block_rows: int = 1) -> tuple[te.Tensor, te.Tensor]:
    """TE of the packed GEMV over `rows` activation vectors (batch rows of a linear, pixels of a pointwise conv): `(wp,
    unmix)`, `wp` the `[G, kb, 16, 4]` uint8 placeholder (`packed_blocking(o, bits, block_rows)`: the rows of a
    block, 1 for a linear's batch rows, all `rows` for a pointwise GEMV's pixels), `unmix[r, b, s, l]` the int32
    dot product of output channel `(b*g + s)*16 + l` with row `r`; `xq_at(r, rb, ri)` the u8 activation `4*rb +
    ri` of row `r` (zero past K), `sx[r]` the row's activation sum (int32, a stage at the root: read by "unmix",
    which anchors each channel block, `schedule_packed`). Stages "packed_acc" and "unmix"."""
    g = _slots(bits)
    if kb * 4 > PACKED_MAX_K:
        raise ConfigError("K", kb * 4, f"at most {PACKED_MAX_K} for packed weights (int32 masked sums)")
    gb, _ = packed_blocking(o, bits, block_rows)
    wp = te.placeholder((gb, kb, 16, 4), "uint8", name="wp")
    rb, ri = te.reduce_axis((0, kb), "rb"), te.reduce_axis((0, 4), "ri")
    m = te.compute((rows, gb, g, 16), lambda r, b, s, li: te.sum(
        xq_at(r, rb, ri).astype("int32") * packed_slot_expr(wp[b, rb, li, ri], s, bits), axis=[rb, ri]),
        name="packed_acc")
    un = te.compute((rows, gb, g, 16), lambda r, b, s, li: unmix_expr(lambda t: m[r, b, t, li], s, sx[r], bits),
                    name="unmix")
    return wp, un


def packed_at(un: te.Tensor, bits: int) -> Callable[[Any, Any], Any]:
    """`(r, c) -> unmix[r, c // 16g, (c // 16) % g, c % 16]`: output channel `c`'s accumulator for row `r`."""
    g = _slots(bits)
    return lambda r, c: un[r, c // (16 * g), (c // 16) % g, c % 16]


def packed_linear_acc(x: te.Tensor, n: int, k: int, o: int, bits: int) -> tuple[te.Tensor, Callable[[Any, Any],
                                                                                                    Any]]:
    """TE of `acc[i, j] = sum_k x[i, k] * w[j, k]` (K a multiple of 4) from packed weights: `(wp, acc_at)`
    (`packed_sums`; schedule with `schedule_packed`)."""
    rk = te.reduce_axis((0, k), "rk")
    sx = te.compute((n,), lambda i: te.sum(x[i, rk].astype("int32"), axis=rk), name="sx")
    wp, un = packed_sums(n, k // 4, o, bits, lambda i, rb, ri: x[i, rb * 4 + ri], sx)
    return wp, packed_at(un, bits)


def schedule_packed(sch: s_tir.Schedule, kb: int, bits: int, rows_inside: bool, epilogue: str | None = None) -> Any:
    """Schedule `packed_sums`' stages: blocks of `inner` channel groups of `g` slots (8 zmm accumulators in flight
    where the rows allow) over cores, the reduction through
    `packed_bcast_intrinsic(bits)` with the block's rows (`rows_inside`: the pixels of a pointwise GEMV, each
    weight vector reused by all of them) and groups unrolled inside the reduction step, the unmix of a block while
    it is hot (slots unrolled so its selects fold, lanes vectorised), and `epilogue` (a consumer block of
    "unmix", or None) at the block. Returns the block loop."""
    register_packed_intrinsics()
    g = _slots(bits)
    # "unmix" anchors the block (compute_at of the sums into it: its select chains read every slot, a region
    # reverse_compute_at cannot solve)
    un = sch.get_sblock("unmix")
    u_r, u_b, u_s, u_l = sch.get_loops(un)
    rows_in = int(sch.get(u_r).extent) if rows_inside else 1
    gb = int(sch.get(u_b).extent)
    _, want = packed_blocking(gb * 16 * g, bits, rows_in)
    inner = max(t for t in range(1, want + 1) if gb % t == 0)  # `want`, as `packed_sums` padded the groups
    bo, bi = sch.split(u_b, [None, inner])
    sch.reorder(*((bo, u_r) if rows_inside else (u_r, bo)), bi, u_s, u_l)
    # the multiply-adds, as the int8 GEMVs count them (their estimate is of int8 weights: this kernel reads fewer
    # bytes but issues as many `vpdpbusd`)
    parallel_if_worth(sch, bo, int(sch.get(u_r).extent) * kb * 4 * gb * g * 16, "gemv")
    blk = sch.get_sblock("packed_acc")
    sch.compute_at(blk, bo)
    loops = sch.get_loops(blk)
    at = next(j for j, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(bo)))
    *between, s, li, rb_, ri_ = loops[at + 1:]  # rows and/or groups (compute_at drops loops of extent 1)
    sch.reorder(rb_, *between, s, li, ri_)
    init = sch.decompose_reduction(blk, rb_)
    sch.tensorize(s, packed_bcast_intrinsic(bits))
    for lp in between:
        sch.unroll(lp)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(u_s)
    sch.vectorize(u_l)
    if epilogue is not None:
        sch.reverse_compute_at(sch.get_sblock(epilogue), bo)
    return bo


def schedule_packed_linear(sch: s_tir.Schedule, n: int, k: int, o: int, bits: int) -> None:
    """`schedule_packed` for `packed_linear_acc` (batch rows outside the channel blocks; the output stage stays at
    the root, as the int8 linear GEMV's)."""
    schedule_packed(sch, k // 4, bits, rows_inside=False)
