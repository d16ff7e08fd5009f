"""What the conv kernels of every target share: the conv's kind and geometry, the packed-GEMM stages, and
the one `emit` of the `conv2d_requant` / `conv2d` strategies.

A target (`schedules.x86`, `schedules.arm`) only says which kernel computes a conv (`ConvStrategy.kernel`:
a scheduled PrimFunc, its packed weights and bias operand); `ConvStrategy.emit` reads the OpCall
(`ConvCall`), reshapes the NCHW input to the kernel's layout, calls the kernel and reshapes the result back
to NCHW (integer_semantics.md: layout between kernels stays NCHW; the reshapes are views, not copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx

from qcompile.backends.tvm.schedules.parallel import parallel_if_worth
from qcompile.backends.tvm.schedules.requant import (
    EpilogueStep,
    apply_post,
    post_placeholders,
    preshift_applies,
    preshift_operands,
    requant_expr,
    u8s8_acc_bound,
)
from qcompile.backends.tvm.strategy import OpCall, register_strategy
from qcompile.errors import ConfigError, LoweringError

__all__ = [
    "ConvCall",
    "ConvGeometry",
    "ConvKernel",
    "ConvStrategy",
    "DwConv",
    "const_value",
    "conv_kind",
    "dw_acc_bound",
    "dw_epilogue",
    "dw_preshift_applies",
    "GemmConv",
    "GemmTile",
    "fit_to",
    "gemm_requant_stages",
    "gemm_tile",
    "parallel_chunk_of_tiles",
    "schedule_gemm_chunks",
    "schedule_gemm_pack",
    "schedule_gemm_tiles",
    "pack_weights",
    "pair",
    "register_requant_pair",
]


def pair(v: Any) -> tuple[int, int]:
    """An int or a pair as a pair of ints (stride, padding, dilation)."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_kind(params: dict) -> str | None:
    """'pointwise', 'depthwise', 'full' or None (unsupported) for conv params of batch 1."""
    n, c, _h, _w = params["x_shape"]
    o, cg, kh, kw = params["w_shape"]
    groups = int(params.get("groups", 1))
    if n != 1:
        return None
    if groups == 1:
        pointwise = (kh, kw) == (1, 1) and pair(params.get("stride", 1)) == (1, 1)
        pointwise = pointwise and pair(params.get("padding", 0)) == (0, 0)
        return "pointwise" if pointwise else "full"
    if groups == c == o and cg == 1:
        return "depthwise"
    return None


def const_array(expr: Any) -> np.ndarray | None:
    """numpy value of a Relax constant (this TVM's `relax.Constant` holds it in `.value`, older ones in `.data`),
    None for anything else."""
    for attr in ("value", "data"):
        val = getattr(expr, attr, None)
        if val is not None and hasattr(val, "numpy"):
            return val.numpy()
    return None


def const_value(expr: relax.Expr, what: str, node: str) -> np.ndarray:
    """numpy value of a Relax constant (weights, bias, multipliers are constants by contract)."""
    val = const_array(expr)
    if val is None:
        raise LoweringError(
            node, f"{what} is not a Relax constant ({type(expr).__name__})", "bind weights as relax.const"
        )
    return val


def pack_weights(w: np.ndarray, group: int, dtype: str) -> np.ndarray:
    """[O, K(,1,1)] int8 weights -> [O, ceil(K/g), g] in `dtype`, zero-padded on K (zero adds nothing)."""
    w2 = np.asarray(w).reshape(w.shape[0], -1).astype(np.int64)
    o, k = w2.shape
    kp = -(-k // group) * group
    out = np.zeros((o, kp), dtype=np.int64)
    out[:, :k] = w2
    return out.reshape(o, kp // group, group).astype(dtype)


@dataclass(frozen=True)
class ConvGeometry:
    """Static shape of a conv (batch 1, NCHW): input `C x H x W`, kernel `KH x KW`, the padding code."""

    c: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    pad_value: int = 0

    def __post_init__(self) -> None:
        if self.ho <= 0 or self.wo <= 0:
            raise ConfigError("conv geometry", (self.c, self.h, self.w, self.kh, self.kw, self.stride, self.padding),
                              "a non-empty output")

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.padding[0] - self.dilation[0] * (self.kh - 1) - 1) // self.stride[0] + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.padding[1] - self.dilation[1] * (self.kw - 1) - 1) // self.stride[1] + 1


@dataclass(frozen=True)
class DwConv(ConvGeometry):
    """A depthwise conv (groups == C) and its epilogue, what every target's depthwise kernel computes: uint8
    codes requantized into `[lo, hi]` (`requant.requant_expr`, `shift_min` the layer's smallest shift) then
    passed through the fused elementwise steps `post` (`requant.apply_post`), or the int32 accumulator
    `acc + bias` when `lo is None` (integer_semantics.md `conv2d`)."""

    lo: int | None = 0
    hi: int | None = 255
    shift_min: int = 1
    post: tuple[EpilogueStep, ...] = ()

    @property
    def requant(self) -> bool:
        return self.lo is not None

    def bias(self) -> te.Tensor:
        """The bias operand: int64 `bterm = requant.bias_term(bias, M, s)` when requantizing, else int32."""
        return te.placeholder((self.c,), "int64" if self.requant else "int32",
                              name="bterm" if self.requant else "bias")


def dw_acc_bound(dw: DwConv) -> int:
    """Largest `|acc|` of a depthwise layer's int32 accumulator before its bias: `KH*KW` products of a uint8 code (or
    the padding code, also in [0, 255]) and an int8 weight, `KH*KW*255*128`."""
    return u8s8_acc_bound(dw.kh * dw.kw)


def dw_preshift_applies(dw: DwConv) -> bool:
    """Whether `dw_epilogue(..., pairs=True, preshift=True)` takes the pre-shifted int32 tail: a requantizing layer
    with shifts below 32 (else the int32 tail needs nothing), its clamp inside the uint8 codes, and
    `requant.preshift_applies` for its smallest shift and `dw_acc_bound`."""
    return (dw.requant and dw.shift_min < 32 and 0 <= dw.lo <= dw.hi <= 255
            and preshift_applies(dw.shift_min, dw_acc_bound(dw)))


def dw_epilogue(dw: DwConv, acc_at: Any, bias: te.Tensor, wov: int | None = None,
                bias_at: Any = None, *, pairs: bool = False, shift_branch: bool = False,
                preshift: bool = False) -> list[te.Tensor]:
    """Placeholders and stages after a depthwise accumulator `acc_at(ch, y, x)`: requantize (or add the int32
    bias) over `[C, Ho, wov]` as stage `epilogue`, then, when rows were padded to whole vectors (`wov > Wo`),
    copy the `Wo` valid outputs (`crop`): a ragged vectorised requantize would run scalar int64 code per element
    (measured: a whole 56-wide 7x7 layer 1.6x slower). Returns the tensors after `(x, w, bias)` in the kernel's
    signature: `[mult, shift, *post operands,] out` (`requant.post_placeholders` over `[C, Ho, Wo]`).
    `bias_at(ch, y, x)`: the bias element of an output (default `bias[ch]`; a per-pixel bias folds in constants
    that depend on the output pixel, as `x86.depthwise.depthwise_cvec_x86` does with its padding taps).
    `pairs`: `requant.requant_expr`'s even/odd-lane form (measured faster for the x86 depthwise kernels too,
    docs/peers.md session 11; off by default, so every caller keeps its kernel until it opts in).
    `shift_branch`: where the layer has shifts below 32 (`dw.shift_min`), branch per channel: channels whose
    shift is >= 32 take `requant_expr`'s int32 tail (`shift_min=32`), the others the int64 one; the condition is
    the channel's, so the vectorised row keeps a scalar `if_then_else` (a branch around each form, not a select
    of both). Same integers either way (each form is exact for the shifts it is taken for).
    `preshift` (with `pairs`): where the layer has shifts below 32 and `requant.preshift_applies` holds for its
    smallest shift and accumulator bound (`dw_acc_bound`), every channel takes the int32 tail on pre-shifted
    operands (`requant.preshift_operands`) instead: no branch and no int64 tail; before `shift_branch`."""
    c, ho, wo = dw.c, dw.ho, dw.wo
    wov = wo if wov is None else wov
    if bias_at is None:
        def bias_at(ch, y, xo):
            return bias[ch]
    ins: list[te.Tensor] = []
    if dw.requant:
        mult = te.placeholder((c,), "int32", name="mult")
        shift = te.placeholder((c,), "int32", name="shift")
        post_ins = post_placeholders(dw.post, (c, ho, wo))
        ins = [mult, shift, *post_ins]

        def at(ch, y, xo):  # padded columns of a row read a valid skip element; they are cropped
            return (ch, y, tirx.min(xo, wo - 1) if wov != wo else xo)

        def code(ch, y, xo):
            if preshift and pairs and dw_preshift_applies(dw):
                acc2, bterm2, shift2 = preshift_operands(acc_at(ch, y, xo), bias_at(ch, y, xo), shift[ch])
                return requant_expr(acc2, bterm2, mult[ch], shift2, dw.lo, dw.hi, 32, pairs=True)
            args = (acc_at(ch, y, xo), bias_at(ch, y, xo), mult[ch], shift[ch], dw.lo, dw.hi)
            if shift_branch and dw.shift_min < 32:
                return tirx.if_then_else(shift[ch] >= 32, requant_expr(*args, 32, pairs=pairs),
                                         requant_expr(*args, dw.shift_min, pairs=pairs))
            return requant_expr(*args, dw.shift_min, pairs=pairs)

        res = te.compute((c, ho, wov), lambda ch, y, xo: apply_post(code(ch, y, xo), dw.post, post_ins,
                                                                     at(ch, y, xo)), name="epilogue")
    else:
        res = te.compute((c, ho, wov), lambda ch, y, xo: acc_at(ch, y, xo) + bias_at(ch, y, xo), name="epilogue")
    if wo == wov:
        return [*ins, res]
    return [*ins, te.compute((c, ho, wo), lambda ch, y, xo: res[ch, y, xo], name="crop")]


@dataclass(frozen=True)
class GemmConv:
    """A groups=1 conv as the GEMM `acc[O, P] = sum_k w[O, K] x[K, P]` and its epilogue, what every target's GEMM
    kernel computes: `x` is `[K, P]` for a pointwise conv, or `[C, H, W]` when `conv` describes a full conv (its
    im2col fused into the packing, `K = C*KH*KW` in `(c, kh, kw)` order); the output is uint8 codes requantized
    into `[lo, hi]` then passed through the fused elementwise steps `post` (`requant.apply_post`), or the int32
    accumulator `acc + bias` when `lo is None`."""

    k: int
    p: int
    o: int
    lo: int | None = 0
    hi: int | None = 255
    shift_min: int = 1
    conv: ConvGeometry | None = None
    post: tuple[EpilogueStep, ...] = ()

    @property
    def requant(self) -> bool:
        return self.lo is not None


def fit_to(o: int, to: int) -> int:
    """Largest divisor of `o` not above `to` (the channel tile must divide O: no channel padding)."""
    for t in range(min(to, o), 0, -1):
        if o % t == 0:
            return t
    return 1


@dataclass(frozen=True)
class GemmTile:
    """The blocking of a packed-GEMM conv kernel: `acc[O, P]` over `kb` groups of `g` reduction values, tiles of
    `to` channels x `tp` pixels (whole intrinsic calls of `lanes` pixels), pixels padded to `pp`."""

    o: int
    p: int
    kb: int
    g: int
    to: int
    tp: int
    pp: int
    lanes: int

    def operands(self, wdt: str, requant: bool) -> tuple[te.Tensor, te.Tensor]:
        """Placeholders `wp[O, K/g, g]` (weights packed at emit time) and the bias: the int64 `bterm`
        (`requant.bias_term`) when requantizing, else the int32 bias."""
        wp = te.placeholder((self.o, self.kb, self.g), wdt, name="wp")
        bias = te.placeholder((self.o,), "int64" if requant else "int32", name="bterm" if requant else "bias")
        return wp, bias


def gemm_tile(k: int, p: int, o: int, g: int, to: int, tp: int, align: int, lanes: int) -> GemmTile:
    """The tile of knobs `to x tp` for a `K x P -> O` GEMM: `to` a divisor of O (`fit_to`), `tp` at most P
    rounded up to `align`, in whole intrinsic calls of `lanes` pixels."""
    tp_ = -(-min(tp, -(-p // align) * align) // lanes) * lanes
    return GemmTile(o, p, -(-k // g), g, fit_to(o, to), tp_, -(-p // tp_) * tp_, lanes)


def schedule_gemm_pack(sch: Any, tile: GemmTile, conv: ConvGeometry | None, kind: str, *,
                       pack_tiles: int = 0) -> None:
    """The activation packing `xpack`: parallel over reduction blocks, the group unrolled, pixels inner so the
    writes are contiguous; a full conv's pixels split into output rows and columns (no div/mod by Wo per
    element) when no pixel padding follows. `kind` is the GEMM's `parallel.UNIT_COST_NS` kind: the packing is
    parallel exactly when the GEMM is (one decision per kernel, on its MACs).

    `pack_tiles > 0` (a pointwise GEMM; x86 `GemmKnobs.pack_tiles`): parallel over chunks of `m` pixel tiles
    instead, `m` the largest divisor of the tile count not above `pack_tiles`, reduction blocks then pixels inside
    a chunk. TVM's static parallel launch gives each thread a contiguous range of chunks, the pixels of the tiles
    it then multiplies (`schedule_gemm_tiles` with pixels outer), so the GEMM reads its packed activations from
    its own core's cache (engineer A's hypothesis, docs/peers.md session 12; measured there and in session 13)."""
    pk = sch.get_sblock("xpack")
    b, j, i = sch.get_loops(pk)
    if pack_tiles and conv is None:
        n = tile.pp // tile.tp
        m = max(d for d in range(1, min(pack_tiles, n) + 1) if n % d == 0)
        jo, ji = sch.split(j, [None, tile.tp * m])
        sch.reorder(jo, b, ji, i)
        parallel_if_worth(sch, jo, tile.o * tile.pp * tile.kb * tile.g, kind)
        sch.unroll(i)
        return
    parallel_if_worth(sch, b, tile.o * tile.pp * tile.kb * tile.g, kind)
    sch.unroll(i)
    if conv is not None and tile.pp == tile.p:
        sch.split(j, [None, conv.wo])


def schedule_gemm_tiles(sch: Any, tile: GemmTile, intrin: str, p_outer: bool = True, *, kind: str,
                        unroll_epilogue: bool = False, epilogue_lanes: int | None = None) -> None:
    """The `gemm` micro-kernel: `to x tp` tiles (pixels outside channels with `p_outer`), parallel over tiles
    before decompose_reduction / tensorize (ARCHITECTURE.md, measured), the intrinsic on the innermost
    `lanes` pixels, the zero-init vectorised, and the epilogue (and `crop` of padded pixels) on each hot tile;
    `kind`: the intrinsic's `parallel.UNIT_COST_NS` kind; `unroll_epilogue`, `epilogue_lanes`: `finish_gemm_tile`'s."""
    gm = sch.get_sblock("gemm")
    c, j, rb_, ri_ = sch.get_loops(gm)
    co, ci = sch.split(c, [None, tile.to])
    jo, jm, ji = sch.split(j, [None, tile.tp // tile.lanes, tile.lanes])
    if p_outer:
        sch.reorder(jo, co, rb_, ci, jm, ji, ri_)
        outer = sch.fuse(jo, co)
    else:
        sch.reorder(co, jo, rb_, ci, jm, ji, ri_)
        outer = sch.fuse(co, jo)
    parallel_if_worth(sch, outer, tile.o * tile.pp * tile.kb * tile.g, kind)
    finish_gemm_tile(sch, tile, intrin, gm, outer, rb_, ci, jm, ji, unroll_epilogue=unroll_epilogue,
                     epilogue_lanes=epilogue_lanes)


def parallel_chunk_of_tiles(sch: Any, tile: GemmTile, chunk: Any, co: Any, jo: Any, rest: tuple, p_outer: bool,
                            kind: str) -> Any:
    """The loop nest of a GEMM in one parallel region of chunks: `chunk` outermost (parallel where
    `parallel.parallel_if_worth` says the kernel pays for it), then the chunk's channel tiles `co` and pixel tiles `jo`
    fused into one loop (pixels outside channels with `p_outer`), then `rest` (the reduction block, the tile's
    channel, row and lane loops, the intrinsic's reduction) as given. Returns the fused tile loop. Shared by the
    chunks of channel tiles (`schedule_gemm_chunks`) and of output rows (x86 `gemm.schedule_conv_rows`)."""
    if p_outer:
        sch.reorder(chunk, jo, co, *rest)
        inner = sch.fuse(jo, co)
    else:
        sch.reorder(chunk, co, jo, *rest)
        inner = sch.fuse(co, jo)
    parallel_if_worth(sch, chunk, tile.o * tile.pp * tile.kb * tile.g, kind)
    return inner


def schedule_gemm_chunks(sch: Any, tile: GemmTile, intrin: str, chunks: int, *, kind: str, p_outer: bool = False,
                         pad_split: bool = False, unroll_epilogue: bool = False,
                         epilogue_lanes: int | None = None) -> bool:
    """Pointwise GEMM in one parallel region of `chunks` contiguous blocks of channel tiles, each packing for itself
    all the activations its tiles read (issue 20, x86 `GemmKnobs.chunks`).

    The channel-tile loop is split into `chunks` equal ranges (so each chunk writes a contiguous block of output rows
    and streams only its own channels' packed weights), the chunk's tiles fused inside it (pixels outside channels
    with `p_outer`); the packing `xpack` is computed at the chunk loop into a buffer private to the chunk (all
    `K x Pp` codes: `compute_at` bounds the region by what the chunk's tiles read). Against `schedule_gemm_pack` +
    `schedule_gemm_tiles`, whose packing region splits the reduction blocks between the threads so that every thread
    then reads the other half of the packed activations from the other core: one fork/join instead of two, and the
    packed activations never cross cores, for the price of each thread packing all of them (at 2 threads, quiet
    rounds: MobileNetV2's 7-28 px GEMMs 0.76-0.95x the two-region kernel; docs/peers.md session 14). Same blocks and
    arithmetic, so the same bit-exact result. `pad_split`: the packing's pixel-padding test split off
    (`decompose_padding`) inside the chunk. Returns False, scheduling nothing, where the channel-tile count is not a
    multiple of `chunks` (a ragged split would predicate the tensorized block)."""
    n_c = tile.o // tile.to
    if chunks <= 0 or n_c % chunks:
        return False
    gm = sch.get_sblock("gemm")
    c, j, rb_, ri_ = sch.get_loops(gm)
    co, ci = sch.split(c, [None, tile.to])
    jo, jm, ji = sch.split(j, [None, tile.tp // tile.lanes, tile.lanes])
    ch, co = sch.split(co, [chunks, None])
    inner = parallel_chunk_of_tiles(sch, tile, ch, co, jo, (rb_, ci, jm, ji, ri_), p_outer, kind)
    pk = sch.get_sblock("xpack")
    sch.compute_at(pk, ch)
    pj, pi = sch.get_loops(pk)[-2:]
    sch.unroll(pi)
    if pad_split and sch.can_decompose_padding(pk, pj):
        sch.decompose_padding(pk, pj)
    finish_gemm_tile(sch, tile, intrin, gm, inner, rb_, ci, jm, ji, unroll_epilogue=unroll_epilogue,
                     epilogue_lanes=epilogue_lanes)
    return True


def finish_gemm_tile(sch: Any, tile: GemmTile, intrin: str, gm: Any, at: Any, rb_: Any, ci: Any, jm: Any,
                     ji: Any, *, unroll_epilogue: bool = False, epilogue_lanes: int | None = None) -> None:
    """The common tail of the tiled GEMM schedules: the epilogue (and `crop` of padded pixels) under loop `at`,
    the zero-init split off and vectorised, the intrinsic on `ji`, the tile's register loops unrolled.

    `unroll_epilogue` also unrolls the epilogue's channel and vector loops, so that every accumulator is read at a
    constant index and LLVM keeps the tile in registers (x86 12x16 tile: without it the 12 zmm accumulators were
    stored to the stack and reloaded one channel at a time by the epilogue loop; docs/peers.md session 12).
    `epilogue_lanes`: the epilogue's vector width in pixels (default the intrinsic's `tile.lanes`; 64 for the x86
    epilogue that narrows 64 codes per store, `intrin.x86.narrow_u8_x86`)."""
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, at)
    init = sch.decompose_reduction(gm, rb_)
    sch.tensorize(ji, intrin)
    sch.unroll(ci)
    sch.unroll(jm)
    sch.vectorize(sch.get_loops(init)[-1])
    e_jo, e_ji = sch.split(sch.get_loops(ep)[-1], [None, epilogue_lanes or tile.lanes])
    sch.vectorize(e_ji)
    if unroll_epilogue:
        sch.unroll(sch.get_loops(ep)[-3])
        sch.unroll(e_jo)
    if tile.pp != tile.p:
        sch.reverse_compute_at(sch.get_sblock("crop"), at)


def gemm_requant_stages(gather: Any, kgroups: tuple[int, int], wp: te.Tensor, bias: te.Tensor, o: int, p: int,
                        pp: int, lo: int | None, hi: int | None, shift_min: int,
                        post: tuple[EpilogueStep, ...] = (), opad: int | None = None, *,
                        pairs: bool = False, narrow: Any = None, tail32: str = "hi32",
                        pad_skip: bool = False, add32: bool = False, preshift: bool = False) -> list[te.Tensor]:
    """The stages every packed-GEMM conv kernel shares (x86 VNNI/AVX2, AMX and aarch64), named as their schedules
    expect: `xpack[K/g, Pp, g]` from `gather(k, j)`, `gemm` (int32 `acc[opad, j]`; `opad` = O unless the weights
    `wp` carry zero rows up to a whole tile, as AMX's do), `epilogue` (over the O real rows; requantize with the
    `bterm` bias, or add the int32 bias when `lo is None`) over whole tiles, and `crop` to P columns when the
    pixels were padded to whole tiles (a predicated requantize on ragged tiles would run scalar int64 code).
    The requantized code goes through the fused steps `post` (`requant.apply_post`; their operands
    `requant.post_placeholders` over `[O, P]`). `pairs` selects `requant.requant_expr`'s even/odd-lane form of
    the requantize (the x86 GEMMs), `narrow` its last step and `tail32` its int32 tail (`requant.requant_expr`'s).
    `pad_skip` (pixels padded): a skip tensor (residual `add`) is read at the output's own index `(c, j)` also for
    the padded pixels `j >= P`, whose elements lie in the next channel's row of the skip tensor (row-major), for
    every channel `c < O - ceil((Pp - P) / P)` (in bounds: `c P + j < O P`), and at `min(j, P - 1)` only in the last
    rows; the condition is the channel's, so the vectorised pixels keep contiguous loads. Without it every vector
    reads at `min(j, P - 1)`, which LLVM turns into 16 scalar byte loads (`vpinsrb`) per vector: 1.2-1.3x the time
    of the same GEMM without the add on MobileNetV2's 14 px projects (docs/peers.md, session 15). The padded
    pixels' outputs are cropped, so the result is the same. `add32`: `requant.apply_post`'s (a residual add in
    int32 arithmetic where its constants allow). `preshift` (with `pairs`, a layer with shifts below 32 for which
    `requant.preshift_applies` holds: the caller checks, `x86.gemm.gemm_preshift_applies`): every channel takes the
    int32 tail on `requant.preshift_operands` (one left shift per vector more) instead of the int64 shift and clamp
    of `MADD_SHR_CLAMP` for the whole layer.
    Returns the tensors after `(x, wp, bias)` in the kernel's signature: `[mult, shift, *post operands,] out`."""
    kb, g = kgroups
    xp = te.compute((kb, pp, g), lambda b, j, i: gather(b * g + i, j), name="xpack")
    rb = te.reduce_axis((0, kb), name="rb")
    ri = te.reduce_axis((0, g), name="ri")
    acc = te.compute(
        (o if opad is None else opad, pp),
        lambda c, j: te.sum(xp[rb, j, ri].astype("int32") * wp[c, rb, ri].astype("int32"), axis=[rb, ri]),
        name="gemm",
    )
    shape = (o, pp) if pp != p else (o, p)
    if lo is not None:
        mult = te.placeholder((o,), "int32", name="mult")
        shift = te.placeholder((o,), "int32", name="shift")
        post_ins = post_placeholders(post, (o, p))

        def at(c, j):  # padded pixels read a valid skip element; they are cropped
            return (c, tirx.min(j, p - 1) if pp != p else j)

        # rows read past P (into the next channel's row) stay inside the skip tensor for the first `o - r` rows
        r = -(-(pp - p) // p)

        def operand_at(c, j):
            if not pad_skip or pp == p:
                return at(c, j)

            def read(t: te.Tensor) -> Any:
                # the condition is the channel's, not the lane's: one branch per vector, contiguous loads in the
                # first (the values read past P are those of padded pixels, which are cropped)
                return tirx.if_then_else(c < o - r, t[c, j], t[c, tirx.min(j, p - 1)])

            return read

        pre = preshift and pairs and shift_min < 32

        def code(c, j):
            if pre:  # (acc 2^k, bterm', s + k): every shift >= 32, the int32 tail for every channel
                a, b, s = preshift_operands(acc[c, j], bias[c], shift[c])
                return requant_expr(a, b, mult[c], s, lo, hi, 32, pairs=True, narrow=narrow, tail32=tail32)
            return requant_expr(acc[c, j], bias[c], mult[c], shift[c], lo, hi, shift_min, pairs=pairs, narrow=narrow,
                                tail32=tail32)

        res = te.compute(shape, lambda c, j: apply_post(code(c, j), post, post_ins, operand_at(c, j), add32=add32),
                         name="epilogue")
        ins = [mult, shift, *post_ins]
    else:
        res = te.compute(shape, lambda c, j: acc[c, j] + bias[c], name="epilogue")
        ins = []
    out = te.compute((o, p), lambda c, j: res[c, j], name="crop") if pp != p else res
    return [*ins, out]


@dataclass(frozen=True)
class ConvCall:
    """A `conv2d_requant` / `conv2d` OpCall read once (strategy.py documents its params and args)."""

    node: str
    kind: str  # conv_kind: "pointwise", "full" or "depthwise"
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    ho: int
    wo: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: int
    requant: bool
    lo: int | None  # None: the int32 accumulator op
    hi: int | None
    shift_min: int  # the layer's smallest shift (requant.requant_expr), 1 without requantize
    weight: np.ndarray
    post: tuple[EpilogueStep, ...] = ()  # elementwise ops fused into the epilogue (requant.apply_post)

    @classmethod
    def read(cls, call: OpCall, args: list[relax.Expr], requant: bool) -> ConvCall:
        p = call.params
        node = str(p.get("node", call.op))
        _, c, h, w = (int(v) for v in p["x_shape"])
        o, _, kh, kw = (int(v) for v in p["w_shape"])
        _, _, ho, wo = (int(v) for v in p["out_shape"])
        if requant:
            lo, hi = int(p["lo"]), int(p["hi"])
            shift_np = const_value(args[4], "shift", node)
            shift_min = int(shift_np.min()) if shift_np.size else 1
        else:
            lo = hi = None
            shift_min = 1
        return cls(node, conv_kind(p) or "", c, h, w, o, kh, kw, ho, wo, pair(p.get("stride", 1)),
                   pair(p.get("padding", 0)), pair(p.get("dilation", 1)), int(p.get("pad_value", 0)), requant,
                   lo, hi, shift_min, const_value(args[1], "weight", node), tuple(p.get("post", ())))

    @property
    def tag(self) -> str:
        """Shape part of the kernel's symbol name."""
        kind = "rq" if self.requant else "acc"
        post = "".join(f"_{st.op}" for st in self.post)
        return f"{kind}_{self.c}x{self.h}x{self.w}_{self.o}x{self.kh}x{self.kw}_s{self.stride[0]}{post}"

    @property
    def geometry(self) -> ConvGeometry | None:
        """The im2col geometry of a full conv; None for a pointwise conv (a plain GEMM)."""
        if self.kind != "full":
            return None
        return ConvGeometry(self.c, self.h, self.w, self.kh, self.kw, self.stride, self.padding, self.dilation,
                            self.pad_value)

    @property
    def gemm(self) -> GemmConv:
        """The pointwise or full conv as the GEMM the GEMM kernels take."""
        return GemmConv(self.c * self.kh * self.kw, self.ho * self.wo, self.o, self.lo, self.hi, self.shift_min,
                        self.geometry, self.post)

    @property
    def depthwise(self) -> DwConv:
        """The depthwise conv and epilogue the depthwise kernels take."""
        return DwConv(self.c, self.h, self.w, self.kh, self.kw, self.stride, self.padding, self.dilation,
                      self.pad_value, self.lo, self.hi, self.shift_min, self.post)

    @property
    def out_dtype(self) -> str:
        return "uint8" if self.requant else "int32"


@dataclass(frozen=True)
class ConvKernel:
    """The kernel a target picked for one conv: `func(x, weight, bias[, mult, shift]) -> out`."""

    func: tvm.tirx.PrimFunc
    name: str  # global symbol
    x_shape: tuple[int, ...]  # the NCHW input reshaped for the kernel (a view)
    weight: np.ndarray  # packed weights, bound as a Relax constant
    bias: relax.Expr  # int64 `bterm` (requant.bias_term) with requantize, else the int32 bias
    out_shape: tuple[int, ...]  # the kernel's output, reshaped to (1, O, Ho, Wo)


class ConvStrategy:
    """`conv2d_requant` (u8 out, `requant = True`) and `conv2d` (i32 out) on one target: subclasses say where
    they apply and which kernel computes the conv (`kernel`); `emit` is the same for all targets."""

    name = "conv"
    requant = True

    def applies(self, call: OpCall) -> bool:
        raise NotImplementedError

    def kernel(self, call: OpCall, conv: ConvCall, args: list[relax.Expr]) -> ConvKernel:
        raise NotImplementedError

    def emit(self, bb: relax.BlockBuilder, call: OpCall, args: list[relax.Expr]) -> relax.Expr:
        conv = ConvCall.read(call, args, self.requant)
        k = self.kernel(call, conv, args)
        xr = bb.emit(relax.op.reshape(args[0], k.x_shape))
        gv = bb.add_func(k.func.with_attr("global_symbol", k.name), k.name)
        extra = [args[3], args[4]] if self.requant else []
        # the fused epilogue's operands (args after the offset, `requant.post_placeholders` order): lookup
        # tables as they are, skip tensors viewed in the kernel's output layout
        post_args = iter(args[6:])
        for st in conv.post:
            if st.op == "lut":
                extra.append(next(post_args))
            elif st.op == "add":
                extra.append(bb.emit(relax.op.reshape(next(post_args), k.out_shape)))
        y = bb.emit(relax.call_tir(gv, [xr, relax.const(k.weight), k.bias, *extra],
                                   relax.TensorType(k.out_shape, conv.out_dtype)))
        return bb.emit(relax.op.reshape(y, (1, conv.o, conv.ho, conv.wo)))


def register_requant_pair(base: type, op: str, name: str, names: tuple[str, str], docs: tuple[str, str],
                          priority: int = 10) -> tuple[type, type]:
    """Register `base`'s two flavours as strategies: `<op>_requant` (uint8 codes, `requant = True`, strategy
    `<name>_requant`) and `<op>` (the int32 accumulator, strategy `<name>`). Returns the classes, named
    `names`, with docstrings `docs`."""
    out = []
    for requant, cls_name, doc in zip((True, False), names, docs):
        cls = type(cls_name, (base,), {"__doc__": doc, "__module__": base.__module__, "requant": requant,
                                       "name": f"{name}_requant" if requant else name})
        out.append(register_strategy(f"{op}_requant" if requant else op, priority=priority)(cls))
    return out[0], out[1]
