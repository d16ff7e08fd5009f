"""x86 pointwise (1x1, stride 1, groups 1) conv with fused bias + requantize, tensorized for AVX2/VNNI.

The conv is the GEMM `acc[o, p] = sum_k w[o, k] * x[k, p]` over pixels `p = h*W + w` (integer_semantics.md
`conv2d`; MobileNetV2's expand/project layers, Sandler et al. 2018). Layout choice: the network stays NCHW
between kernels (no layout transforms in the graph), and inside the kernel

- activations are packed per call to `xp[K/g, P, g]` (g = 4 u8 codes or 2 int16 codes adjacent per pixel),
  a cheap O(K*P) pass before the O(O*K*P) GEMM, so the intrinsic's 256-bit vector operand is 8 pixels;
- weights are packed once at compile time (`pack_weights`) to `[O, K/g, g]`, so one output channel's
  g weights are a single 32-bit broadcast;
- the result tile `To x Tp` (channels x pixels) is 8-lane rows of the NCHW output, and the
  requantize epilogue runs on the tile while it is hot (`reverse_compute_at`).

The intrinsic is picked per layer (see `intrin.x86`): VNNI when the target has it, else AVX2
`vpmaddubsw` when the actual weights cannot saturate int16 for the layer's activation range, else the
exact int16 `vpmaddwd` path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from qcompile.backends.tvm.intrin.x86 import (
    I16_8x2_AVX2,
    U8S8_8x4_AVX2,
    U8S8_8x4_VNNI,
    U8S8_16x4_VNNI512,
    has_avx512_vnni,
    has_vnni,
    narrow_u8_x86,
    register_x86_intrinsics,
    u8s8_pairs_safe,
)
from qcompile.backends.tvm.schedules.conv import (
    GemmConv,
    finish_gemm_tile,
    gemm_requant_stages,
    gemm_tile,
    pack_weights,
    parallel_chunk_of_tiles,
    schedule_gemm_chunks,
    schedule_gemm_pack,
    schedule_gemm_tiles,
)
from qcompile.backends.tvm.schedules.parallel import estimated_us, min_parallel_us, parallel_if_worth
from qcompile.backends.tvm.schedules.requant import preshift_applies, u8s8_acc_bound
from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "GEMM_PRESHIFT",
    "GemmKnobs",
    "gemm_preshift_applies",
    "activation_gather",
    "schedule_pack_padding",
    "schedule_xpad",
    "choose_mode",
    "default_knobs",
    "CHUNK_MAX_P",
    "CHUNK_THREADS",
    "CONV_ROWS",
    "conv_rows_chunk",
    "schedule_conv_rows",
    "pointwise_conv_x86",
    "tile_intrinsic",
    "tile_on_stack",
    "MODES",
    "MODE_KIND",
    "NARROW_INTRIN",
    "STACK_TILE_BYTES",
    "LANES",
]

# mode -> (intrinsic, reduction group g, packed dtype of activations and weights)
MODES = {
    "u8s8": (U8S8_8x4_AVX2, 4, "uint8", "int8"),
    "vnni": (U8S8_8x4_VNNI, 4, "uint8", "int8"),
    "vnni512": (U8S8_16x4_VNNI512, 4, "uint8", "int8"),
    "i16": (I16_8x2_AVX2, 2, "int16", "int16"),
}
LANES = {"u8s8": 8, "vnni": 8, "vnni512": 16, "i16": 8}  # int32 lanes (pixels) per intrinsic call
#: mode -> its `parallel.UNIT_COST_NS` kind (serial cost per MAC)
MODE_KIND = {"u8s8": "gemm_int16", "vnni": "gemm_dot", "vnni512": "gemm_dot", "i16": "gemm_int16"}


#: `GemmKnobs.conv_rows`' default: output rows per chunk of a full conv's one parallel region (`schedule_conv_rows`):
#: the stem's 112 rows in 14 chunks of 8 (7:7 at 2 threads; each chunk's 7 x 896 x 4 packed codes and 3 x 17 x 225
#: padded input about fill L1). 4, 14 and 56 rows measured 58.5, 59.9 and 59.2 us against 8 rows' 53.6-64.9 at 2
#: threads, 114.8, 103.0 and 103.2 against 104.4 at 1 (interleaved minima, loaded host, docs/peers.md session 16)
CONV_ROWS = 8


@dataclass(frozen=True)
class GemmKnobs:
    """Tile of one micro-kernel step: `to` output channels x `tp` pixels (tp a multiple of 8).

    `lanes`: int32 lanes (pixels) per intrinsic call; 0 is the mode's own width (`LANES`), 8 on a "vnni512"
    mode takes the 256-bit `vpdpbusd` (`U8S8_8x4_VNNI`, AVX512-VL encoding), so that pixels are padded to a
    multiple of 8 instead of 16 (`tile_intrinsic`; 49 px: 56 instead of 64).

    `pack_tiles`: the loop the activation packing is parallel over (`conv.schedule_gemm_pack`): 0 its reduction
    blocks (a pointwise GEMM's packing then writes, per thread, half of what the other thread multiplies); `m > 0`
    chunks of (the largest divisor of the pixel-tile count not above) `m` pixel tiles, the GEMM's own outer loop
    with `p_outer`, so each thread packs the pixels it multiplies. A full conv (im2col) keeps its packing.

    `store64` ("vnni512" only, `tp` a multiple of 64): the epilogue runs on 64 pixels of a channel at a time and
    narrows their codes with two `vpackssdw`, a `vpackuswb` and a `vpermd` into one 64-byte store
    (`intrin.x86.narrow_u8_x86`) instead of four `vpmaxsd` + `vpmovusdb`.

    `chunks` (a pointwise GEMM): 0 is the two parallel regions (packing, then tiles); `n > 0` one region of `n`
    contiguous blocks of channel tiles, each packing all its activations itself into a private buffer
    (`conv.schedule_gemm_chunks`; `p_outer` then orders the tiles inside a block), so no thread reads packed
    activations from the other core. `n` should be the thread count the kernel runs at (`default_knobs`'s
    `threads`): at 1 thread 2 blocks pack everything twice. Where the channel tiles do not split into `n` equal
    blocks, or the kernel stays serial (`parallel.parallel_if_worth`), the two-region kernel is built.

    `vshift` ("vnni512" only): the requantize's int32 tail (every shift >= 32) shifts each lane by `s - 32` with
    `vpsravd` (`requant.requant_expr(..., tail32="shr")`) instead of a shift by an xmm count, which on Zen 4 competes
    with `vpdpbusd` for its pipe; it costs one `vpandd` and a register per channel of the tile (docs/peers.md,
    session 14).

    `conv_rows` (a full conv, im2col): one parallel region over chunks of (the smallest multiple of) `conv_rows`
    output rows that make whole pixel tiles, each chunk padding and packing its own input rows
    (`schedule_conv_rows`); 0, or where no such chunk exists (padded pixels), the separate padding, packing and tile
    regions. The default `CONV_ROWS` is every GEMM's, tuned records included (a pointwise GEMM ignores it)."""

    to: int = 4
    tp: int = 24
    p_outer: bool = True  # loop pixels outside channels (activation tile reused across channels)
    lanes: int = 0
    pack_tiles: int = 0
    store64: bool = False
    chunks: int = 0
    vshift: bool = False
    conv_rows: int = CONV_ROWS

    def __post_init__(self) -> None:
        if self.tp % 8 or self.tp <= 0:
            raise ConfigError("GemmKnobs.tp", self.tp, "positive multiples of 8")
        if self.to <= 0:
            raise ConfigError("GemmKnobs.to", self.to, "positive integers")
        if self.lanes not in (0, 8, 16):
            raise ConfigError("GemmKnobs.lanes", self.lanes, "0 (the mode's width), 8 or 16")
        if self.pack_tiles < 0:
            raise ConfigError("GemmKnobs.pack_tiles", self.pack_tiles,
                              "0 (pack over reduction blocks) or a positive count of pixel tiles per chunk")
        if self.chunks < 0:
            raise ConfigError("GemmKnobs.chunks", self.chunks,
                              "0 (separate packing region) or a positive count of parallel chunks")
        if self.chunks and self.pack_tiles:
            raise ConfigError("GemmKnobs.pack_tiles", self.pack_tiles,
                              f"0 with chunks={self.chunks} (each chunk packs its own activations)")
        if self.store64 and self.tp % 64:
            raise ConfigError("GemmKnobs.tp", self.tp, "a multiple of 64 with store64=True")
        if self.conv_rows < 0:
            raise ConfigError("GemmKnobs.conv_rows", self.conv_rows,
                              "0 (separate padding and packing regions) or a positive count of output rows")


#: mode -> {lanes: intrinsic} of the narrower intrinsics a mode may run its tiles with (`GemmKnobs.lanes`)
NARROW_INTRIN = {"vnni512": {8: U8S8_8x4_VNNI}}


def tile_intrinsic(mode: str, knobs: GemmKnobs) -> tuple[str, int]:
    """The intrinsic and its int32 lanes that the tiles of `mode` with `knobs` are tensorized with: the mode's own
    (`MODES`, `LANES`) unless `knobs.lanes` names a narrower one of `NARROW_INTRIN`; `ConfigError` otherwise."""
    if knobs.lanes in (0, LANES[mode]):
        return MODES[mode][0], LANES[mode]
    narrow = NARROW_INTRIN.get(mode, {})
    if knobs.lanes not in narrow:
        raise ConfigError("GemmKnobs.lanes", knobs.lanes, f"0 or {sorted({LANES[mode], *narrow})} with mode {mode!r}")
    return narrow[knobs.lanes], knobs.lanes


#: TVM's LowerTVMBuiltin keeps an allocation on the stack only below this many bytes; a larger accumulator
#: tile inside the parallel loop becomes a TVMBackendAllocWorkspace/FreeWorkspace pair *per tile*, which
#: measured 1.2-1.6x slower on MobileNetV2's expand layers (24x3136x144: 16x16 tile 71 us, 12x16 51 us)
STACK_TILE_BYTES = 1024


def tile_on_stack(knobs: GemmKnobs) -> bool:
    """Whether the `to x tp` int32 accumulator tile stays a stack array (no workspace call per tile)."""
    return knobs.to * knobs.tp * 4 < STACK_TILE_BYTES


#: `default_knobs`: GEMMs on at most this many pixels take one whole-row tile of 8-lane calls on "vnni512"
#: where that pads fewer pixels (MobileNetV2's 7x7 layers: 49 -> 56 instead of 64)
NARROW_ROW_MAX_P = 64
#: accumulators (`to` x vectors) of that whole-row tile: 3 x 7 at 49 px, leaving registers for the 7 activations
NARROW_ROW_ACC = 21
#: `default_knobs`: GEMMs of at most this reduction depth K (whose requantize epilogue outweighs the K/4
#: `vpdpbusd` per vector) take two zmm per channel (6 x 32) where P is a multiple of 32, 2 x 64 where 64 divides P.
#: 28 (session 15): the stem's im2col GEMM (K = 27, padded to 28) on 12544 px 0.93x the 12 x 16 tile, pointwise
#: K = 28 at 112 px 0.92x, K = 27 at 56 px 0.93x (1 thread, interleaved minima, docs/peers.md session 15)
SMALL_K_MAX = 28
#: `default_knobs`: GEMMs of at least this many pixels with more reduction rows than output channels (K > O:
#: MobileNetV2's project layers 32x12544->16, 96x3136->24, 144x3136->24) pack their activations over chunks of
#: `PACK_CHUNK_PX` pixels (`GemmKnobs.pack_tiles`), so at 2 threads each thread packs what it multiplies
PACK_PIXELS_MIN_P = 3136
#: pixels per packing chunk: 64 (one cache line per activation row; 4 tiles of 16) cost 1.005-1.017x the block
#: packing at 1 thread where single 16-pixel tiles cost 1.007-1.074x (docs/peers.md session 13)
PACK_CHUNK_PX = 64


#: `default_knobs`: at `CHUNK_THREADS` threads, "vnni512" GEMMs on at most this many pixels run as one parallel
#: region of channel-tile blocks, one per thread, each packing its own activations (`GemmKnobs.chunks`): MobileNetV2's
#: 7-28 px GEMMs at 2 threads 0.76-0.96x the two-region kernel; on 3136 and 12544 px, where each thread would pack
#: 0.3-0.8 MB twice over, 1.0-1.14x (AMD EPYC Zen 4, interleaved minima, docs/peers.md session 14)
CHUNK_MAX_P = 784
#: the thread counts the `chunks` rule was measured at (every thread packs all activations, a cost that does not
#: shrink with more threads: other counts keep the two-region kernel until measured)
CHUNK_THREADS = (2,)


def default_knobs(mode: str, k: int | None = None, p: int | None = None, o: int | None = None,
                  threads: int | None = None) -> GemmKnobs:
    """The untuned tile of a GEMM (`_default_tile`) and, given the lowering's `threads`, its parallel structure: at
    `CHUNK_THREADS` threads "vnni512" GEMMs on at most `CHUNK_MAX_P` pixels take one parallel region of `threads`
    blocks of channel tiles (`GemmKnobs.chunks`, channels outside pixels inside a block), where the channel tiles split
    into equal blocks and the kernel is parallel (`parallel.parallel_if_worth`'s estimate)."""
    kn = _default_tile(mode, k, p, o)
    if mode != "vnni512" or None in (k, p, o) or threads not in CHUNK_THREADS or p > CHUNK_MAX_P or kn.pack_tiles:
        return kn
    _, lanes = tile_intrinsic(mode, kn)
    tile = gemm_tile(k, p, o, MODES[mode][1], kn.to, kn.tp, 8, lanes)
    # only where the blocks are equal and the kernel is parallel at all: elsewhere `chunks` builds the old kernel
    work = tile.o * tile.pp * tile.kb * tile.g
    if (o // tile.to) % threads or estimated_us(work, MODE_KIND[mode]) < min_parallel_us():
        return kn
    return replace(kn, chunks=int(threads), p_outer=False)


def _default_tile(mode: str, k: int | None = None, p: int | None = None, o: int | None = None) -> GemmKnobs:
    """Untuned tile per mode: the most accumulators that still keep the tile on the stack (`tile_on_stack`);
    12 zmm rows of 16 pixels with AVX-512, 8 ymm rows of 16 pixels (two 8-lane steps) with 256-bit VNNI ("vnni");
    the AVX2 modes ("i16", "u8s8") `_avx2_tile`'s 12 ymm accumulators (6 x 16, or 12 x 8 on 7x7 maps).

    Given the GEMM's reduction depth `k` and pixel count `p`, "vnni512" has two shape rules (1 thread, minima of
    interleaved rounds, docs/peers.md "session 12"):

    - `p <= NARROW_ROW_MAX_P` where 8-lane padding is shorter than 16-lane padding: one tile over the whole
      (8-padded) row of 256-bit calls (`lanes=8`), `NARROW_ROW_ACC // (tp/8)` channels (160->960, 960->160 and
      320->1280 at 7x7: 0.71-0.87x the 12x16 tile's time);
    - `k <= SMALL_K_MAX` with `p % 32 == 0`: 6 x 32, two zmm per channel, so the epilogue's per-channel
      operands are loaded once per two vectors and the accumulators stay in registers (16->96 at 112 px 0.88x,
      24->144 at 56 px 0.94x; where 32 does not divide P the padded tile and its crop were 1.6x slower; the stem,
      K = 27, takes the 2 x 64 below since session 15);
      where 64 divides P, 2 x 64 with `store64` instead (64 codes narrowed per store: 16->96 at 112 px and
      24->144 at 56 px 0.935x and 0.947x the 6 x 32 tile, docs/peers.md session 13).

    Every `store64` tile (four vectors per channel) also takes `vshift` (the per-lane shift of the requantize's int32
    tail: 16->96 at 112 px 0.96x, the others 0.98-1.0x at 1 thread; on the 12 x 16 tile, one vector per channel,
    it ranged 0.96-1.13x, docs/peers.md session 14).

    Given also the output channels `o`, "vnni512" GEMMs with `k > o`, `p >= PACK_PIXELS_MIN_P` and no padded
    pixels (16 | P) pack over chunks of `PACK_CHUNK_PX` pixels (`GemmKnobs.pack_tiles`; 2 threads, quiet rounds:
    0.76-0.79x the kernel with block packing, docs/peers.md sessions 12 and 13), in 2 x 64 tiles with `store64`
    where 64 | P (MobileNetV2's three such layers: 0.94-0.99x the 12 x 16 tile at 2 threads, 0.96-0.98x at 1).
    """
    if mode in AVX2_MODES:
        return _avx2_tile(p)
    if LANES.get(mode, 8) != 16:
        return GemmKnobs(8, 16)
    if mode == "vnni512" and p is not None:
        tp8 = -(-p // 8) * 8
        if p <= NARROW_ROW_MAX_P and tp8 < -(-p // 16) * 16:
            return GemmKnobs(max(1, NARROW_ROW_ACC // (tp8 // 8)), tp8, True, 8)
        if k is not None and k <= SMALL_K_MAX and p % 64 == 0:
            return GemmKnobs(2, 64, store64=True, vshift=True)
        if k is not None and k <= SMALL_K_MAX and p % 32 == 0:
            return GemmKnobs(6, 32)
        if k is not None and o is not None and k > o and p >= PACK_PIXELS_MIN_P and p % 64 == 0:
            return GemmKnobs(2, 64, p_outer=True, pack_tiles=PACK_CHUNK_PX // 64, store64=True, vshift=True)
        if k is not None and o is not None and k > o and p >= PACK_PIXELS_MIN_P and p % 16 == 0:
            return GemmKnobs(12, 16, pack_tiles=PACK_CHUNK_PX // 16)
    return GemmKnobs(12, 16)


#: the AVX2 modes (no VNNI): 8-lane `vpmaddwd` / `vpmaddubsw` + `vpmaddwd` steps on ymm, 16 registers in all
AVX2_MODES = ("i16", "u8s8")
#: `_avx2_tile`: accumulators of the AVX2 tile. 16 ymm registers hold 12 accumulators, the tile's activation vectors
#: (2 of 16 pixels), the broadcast weight pair and `vpmaddwd`'s product before its `vpaddd`. The 8 x 16 tile (16
#: accumulators, the default until session 17) spilled: LLVM kept accumulators on the stack and rotated 12
#: `vmovdqa` per reduction step. The new tiles on MobileNetV2's 20 GEMMs: 0.81x the 8 x 16 sum at 1 thread, every
#: layer 0.77-0.89x (AMD EPYC Zen 3, interleaved minima of thread CPU time, `benchmarks.avx2_tiles`, docs/peers.md
#: session 17, engineer C)
AVX2_ACC = 12
#: `_avx2_tile`: GEMMs on at most this many pixels take one 8-lane vector per channel (`AVX2_ACC` x 8) where that pads
#: fewer pixels than 16 (MobileNetV2's 7x7 layers: 49 -> 56 instead of 64)
AVX2_NARROW_MAX_P = 64


def _avx2_tile(p: int | None) -> GemmKnobs:
    """The untuned tile of the AVX2 modes (`AVX2_MODES`): `AVX2_ACC` accumulators, 6 channels x 16 pixels (two
    vectors per channel), or 12 x 8 on at most `AVX2_NARROW_MAX_P` pixels where 8-lane padding is shorter than
    16-lane (MobileNetV2's five 7x7 GEMMs: 0.93-1.05x the 6 x 16 tile at 1 thread, weighted sum 0.97x).
    `conv.fit_to` takes the largest divisor of O not above the channel count (O = 16, 32, 64: 4 channels; 160,
    320, 1280 on 7x7: 10). "u8s8" (`vpmaddubsw`, then `vpmaddwd` with a register of ones) keeps 2 ymm stack
    references in the 6 x 16 reduction loop against 12 with 8 x 16 (untimed: no 8-bit MobileNetV2 GEMM proves its
    pairs safe). AVX-512 targets without VNNI also run "i16" on ymm, with 32 registers: this tile is not measured
    there."""
    if p is not None and p <= AVX2_NARROW_MAX_P and -(-p // 8) * 8 < -(-p // 16) * 16:
        return GemmKnobs(AVX2_ACC, 8)
    return GemmKnobs(AVX2_ACC // 2, 16)


#: the requantize of a layer with shifts below 32 (`gemm_preshift_applies`): True takes the pre-shifted int32 tail
#: for every channel (`requant.preshift_operands`, `conv.gemm_requant_stages(preshift=True)`), False (default) the
#: int64 shift and clamp (`MADD_SHR_CLAMP`) for every channel. Off: no MobileNetV2 GEMM has a shift below 32, and the
#: pre-shifted form measured 0.85x the int64 one on the 112 and 56 px expands but 1.1x on the 7 px ones at 1 thread
#: (docs/peers.md, session 16, engineer B, second round). Read at schedule time.
GEMM_PRESHIFT = False


def gemm_preshift_applies(gc: GemmConv, mode: str) -> bool:
    """Whether `pointwise_conv_x86` requantizes `gc` with the pre-shifted int32 tail (`GEMM_PRESHIFT`): a
    requantizing layer with a shift below 32, uint8 activations and int8 weights (`|acc| <= K 255 128`, the
    padded reduction rows being zero), and `requant.preshift_applies` for its smallest shift and that bound
    (K = 16: shifts >= 20 (as 3x3 depthwise); K = 960: >= 26)."""
    return (gc.lo is not None and gc.shift_min < 32 and MODES[mode][2:] == ("uint8", "int8")
            and preshift_applies(gc.shift_min, u8s8_acc_bound(gc.k)))


def choose_mode(target: tvm.target.Target, w: np.ndarray | None, act_max: int) -> str:
    """Exact intrinsic for this layer: 'vnni512'/'vnni' if available, 'u8s8' if no pair can saturate, else 'i16'.

    `w=None` (weights unknown, as in `plan_kernels`): 'u8s8' when no int8 weight pair can saturate int16 at
    `act_max` (2 * act_max * 128 <= 32767), else 'i16' (what the worst-case weights would need)."""
    if has_avx512_vnni(target):
        return "vnni512"
    if has_vnni(target):
        return "vnni"
    if w is None:
        return "u8s8" if 2 * int(act_max) * 128 <= 32767 else "i16"
    _, g, _, _ = MODES["u8s8"]
    if u8s8_pairs_safe(pack_weights(w, g, "int8"), act_max):
        return "u8s8"
    return "i16"


def pointwise_conv_x86(gc: GemmConv, mode: str, knobs: GemmKnobs = GemmKnobs(), *,
                       pairs: bool = True, unroll_epilogue: bool = True,
                       split_pack_padding: bool = True, pad_skip: bool = True,
                       add32: bool = True) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x, wp[O, K/g, g], bterm[O] i64, mult[O] i32, shift[O] i32) -> out[O, P]`.

    `x` is `[K, P]` uint8 for a pointwise conv, or `[C, H, W]` when `gc.conv` describes a full (groups=1)
    conv, whose im2col (with `pad_value` in the padding) is then fused into the activation packing;
    `K = C*KH*KW` in `(c, kh, kw)` order, the order of `w.reshape(O, -1)`. `out` is uint8 requantized
    codes, or the int32 accumulator `acc + bias` when `gc.lo is None` (op `conv2d` alone; `mult`/`shift`
    are then not parameters). `pairs` (default) requantizes the even and odd int32 lanes of the accumulator in
    place (`requant.requant_expr(..., pairs=True)`, `requant.pair_lowering`); `pairs=False` is the widening form.
    `unroll_epilogue` (default): the epilogue reads the accumulator tile in registers (`conv.finish_gemm_tile`).
    `split_pack_padding` (default): the packing of pixel-padded pointwise GEMMs without a test per element
    (`schedule_pack_padding`). False for either is the kernel before session 12 (kept for `benchmarks.gemm_tiles`).
    `pad_skip` (default): a fused residual add on pixel-padded tiles reads its skip tensor with contiguous vector
    loads, the padded pixels' lanes from the next channel's row (`conv.gemm_requant_stages`); False is the kernel
    before session 15 (16 scalar loads per vector; kept for `benchmarks.gemm_add`). `add32` (default): that add in
    int32 arithmetic where its constants allow (`requant.add_int32`), and on `store64` tiles the requantized codes
    go to the fused steps without the 64-code narrowing, which they would widen again (144 x 3136 -> 24 + add at 1
    thread: 0.97x); False is the kernel before session 15.
    """
    if mode not in MODES:
        raise ConfigError("mode", mode, sorted(MODES))
    if knobs.store64 and mode != "vnni512":
        raise ConfigError("GemmKnobs.store64", knobs.store64, f"False with mode {mode!r} (True needs 'vnni512')")
    if knobs.vshift and mode != "vnni512":
        raise ConfigError("GemmKnobs.vshift", knobs.vshift, f"False with mode {mode!r} (True needs 'vnni512')")
    register_x86_intrinsics()
    _, g, xdt, wdt = MODES[mode]
    intrin, lanes = tile_intrinsic(mode, knobs)
    k, p, o, conv, requant = gc.k, gc.p, gc.o, gc.conv, gc.requant
    tile = gemm_tile(k, p, o, g, knobs.to, knobs.tp, 8, lanes)  # whole intrinsic calls per tile row
    pp, kb = tile.pp, tile.kb
    # requantize: the int64 bias term `bias*M + 2^(s-1)` (requant.bias_term); accumulator: the int32 bias
    wp, bias = tile.operands(wdt, requant)
    x, gather, pad = activation_gather(gc, xdt, pp)
    # 64 codes per store: only where a tile row is whole 64-pixel vectors (a padded tile's crop reads them back)
    store64 = knobs.store64 and tile.tp % 64 == 0 and pairs
    stages = gemm_requant_stages(gather, (kb, g), wp, bias, o, p, pp, gc.lo, gc.hi, gc.shift_min, gc.post,
                                 pairs=pairs, narrow=narrow_u8_x86 if store64 and not (add32 and gc.post) else None,
                                 tail32="shr" if knobs.vshift else "hi32", pad_skip=pad_skip, add32=add32,
                                 preshift=pairs and GEMM_PRESHIFT and gemm_preshift_applies(gc, mode))
    args = [x, wp, bias, *stages]
    func = te.create_prim_func(args).with_attr("global_symbol", "main")
    sch = s_tir.Schedule(func)

    if conv is None and knobs.p_outer and pack_in_tiles() and pack_in_tiles_applies(k, o, tile.pp // tile.tp):
        schedule_gemm_pack_in_tiles(sch, tile, intrin, MODE_KIND[mode], unroll_epilogue=unroll_epilogue,
                                    epilogue_lanes=64 if store64 else None)
        return sch.mod["main"]
    if conv is None and knobs.chunks and estimated_us(tile.o * tile.pp * tile.kb * g, MODE_KIND[mode]) >= \
            min_parallel_us() and schedule_gemm_chunks(
                sch, tile, intrin, knobs.chunks, kind=MODE_KIND[mode], p_outer=knobs.p_outer,
                pad_split=split_pack_padding and tile.pp != p, unroll_epilogue=unroll_epilogue,
                epilogue_lanes=64 if store64 else None):
        return sch.mod["main"]
    if conv is not None and knobs.conv_rows and schedule_conv_rows(
            sch, tile, conv, pad, intrin, knobs.conv_rows, MODE_KIND[mode], p_outer=knobs.p_outer,
            unroll_epilogue=unroll_epilogue,
            epilogue_lanes=64 if store64 else None):
        return sch.mod["main"]
    schedule_gemm_pack(sch, tile, conv, MODE_KIND[mode], pack_tiles=knobs.pack_tiles)
    # chunks of pixel tiles (`pack_tiles`): the padding is in the last chunk only, a fill of every chunk would
    # not remove the per-element test, so that packing keeps it (no default takes it: `default_knobs`)
    schedule_pack_padding(sch, conv, split_pack_padding and tile.pp != p and not knobs.pack_tiles)
    schedule_xpad(sch, conv, pad)
    schedule_gemm_tiles(sch, tile, intrin, knobs.p_outer, kind=MODE_KIND[mode], unroll_epilogue=unroll_epilogue,
                        epilogue_lanes=64 if store64 else None)
    return sch.mod["main"]


#: Environment variable: "1" packs a pointwise GEMM's activations per pixel tile inside its one parallel region
#: (`schedule_gemm_pack_in_tiles`) where its pixel tiles split evenly (`pixel_tiles_balanced`); unset, "" or "0"
#: (default) keeps the separate packing region. Read at schedule time, so one process can build both
#: (`benchmarks.parallel_split`, issue 20). Default off until timed at 2 threads on a quiet machine.
ENV_PACK_IN_TILES = "QCOMPILE_GEMM_PACK_IN_TILES"


def pack_in_tiles() -> bool:
    """Whether `ENV_PACK_IN_TILES` selects the one-region pointwise GEMM; `ConfigError` for other values."""
    raw = os.environ.get(ENV_PACK_IN_TILES, "")
    if raw not in ("", "0", "1"):
        raise ConfigError(ENV_PACK_IN_TILES, raw, "'1' (pack per pixel tile), '0' or unset (separate packing)")
    return raw == "1"


#: Largest slowest-thread share (over the ideal) that the one-region GEMM accepts for its pixel-tile loop on
#: `PACK_IN_TILES_THREADS` threads: 49 tiles (28x28 px) split 25:24 (1.02) qualify, 13 tiles (14x14 px) split 7:6
#: (1.077, ~30 us of MobileNetV2's 14x14 GEMMs at 2 threads) keep the separate packing region and its even
#: tiles x channel-tiles extent.
PACK_IN_TILES_MAX_RATIO = 1.03
PACK_IN_TILES_THREADS = 2


def pixel_tiles_balanced(n_tiles: int, threads: int = PACK_IN_TILES_THREADS) -> bool:
    """Whether `n_tiles` pixel tiles split over `threads` contiguous chunks of ceil(n/threads) (TVM's static
    parallel launch) within `PACK_IN_TILES_MAX_RATIO` of the ideal share."""
    busy = min(threads, n_tiles)
    return n_tiles > 0 and -(-n_tiles // busy) / (n_tiles / threads) <= PACK_IN_TILES_MAX_RATIO


def pack_in_tiles_applies(k: int, o: int, n_tiles: int) -> bool:
    """Where `ENV_PACK_IN_TILES` takes the one-region GEMM: pixel tiles split evenly (`pixel_tiles_balanced`) and
    `K <= 2 O`. With more reduction rows than that per output channel the per-tile packing (K x tp codes, reused by
    only O/to channel tiles) cost more serially than the bulk pass (1-thread minima, interleaved: 192x784->32
    1.16-1.17x, 96x3136->24 1.05x; expand layers 0.9-1.0x; `benchmarks.parallel_split --time-gemm`)."""
    return k <= 2 * o and pixel_tiles_balanced(n_tiles)


def schedule_gemm_pack_in_tiles(sch: s_tir.Schedule, tile: Any, intrin: str, kind: str, *,
                                unroll_epilogue: bool = False, epilogue_lanes: int | None = None) -> None:
    """Pointwise GEMM with one parallel region: parallel over pixel tiles only, each iteration packing its own
    `K x tp` activations (`xpack` computed at the pixel tile) before its channel tiles, instead of a separate
    parallel packing loop over reduction blocks (a second fork/join per kernel: 35 of MobileNetV2 224's 88
    regions, `benchmarks.parallel_split`). Same blocks and arithmetic as `schedule_gemm_pack` +
    `schedule_gemm_tiles` with `p_outer`, so the same bit-exact result; the parallel extent is the pixel-tile
    count (`pp / tp`: 13 at 14x14, a 7:6 split on 2 threads), not tiles x channel tiles."""
    gm = sch.get_sblock("gemm")
    c, j, rb_, ri_ = sch.get_loops(gm)
    co, ci = sch.split(c, [None, tile.to])
    jo, jm, ji = sch.split(j, [None, tile.tp // tile.lanes, tile.lanes])
    sch.reorder(jo, co, rb_, ci, jm, ji, ri_)
    parallel_if_worth(sch, jo, tile.o * tile.pp * tile.kb * tile.g, kind)
    pk = sch.get_sblock("xpack")
    sch.compute_at(pk, jo)
    sch.unroll(sch.get_loops(pk)[-1])
    finish_gemm_tile(sch, tile, intrin, gm, co, rb_, ci, jm, ji, unroll_epilogue=unroll_epilogue,
                     epilogue_lanes=epilogue_lanes)


def conv_rows_chunk(tile: Any, conv: Any, rows: int) -> int:
    """Output rows per chunk of `schedule_conv_rows`: the smallest multiple of `rows` that divides the output
    height and makes a chunk whole pixel tiles; 0 where none does or the pixels are padded."""
    if tile.pp != tile.p or rows <= 0:
        return 0
    for r in range(rows, conv.ho + 1, rows):
        if conv.ho % r == 0 and (r * conv.wo) % tile.tp == 0:
            return r
    return 0


def schedule_conv_rows(sch: s_tir.Schedule, tile: Any, conv: Any, pad: tuple[int, int], intrin: str, rows: int,
                       kind: str, *, p_outer: bool = True, unroll_epilogue: bool = False,
                       epilogue_lanes: int | None = None) -> bool:
    """A full conv (im2col GEMM) in one parallel region over chunks of whole output rows (`conv_rows_chunk`): each
    chunk pads the input rows it reads (`xpad`) and packs its own pixels (`xpack`, all K rows) into buffers
    private to it, then multiplies its pixel tiles (pixels outside channels). Against `schedule_gemm_pack` +
    `schedule_gemm_tiles`, with a serial padded copy of the whole input, a packing region parallel over the
    K/g reduction blocks (7 for the stem: a 4:3 split) and a tile region in which every thread reads the packed
    rows the other core wrote: one fork/join instead of two, no serial pass, no packed code crossing cores. Same
    blocks and arithmetic, so the same bit-exact result. Returns False, scheduling nothing, where no chunk of
    whole tiles exists (`conv_rows_chunk`)."""
    r = conv_rows_chunk(tile, conv, rows)
    if not r:
        return False
    gm = sch.get_sblock("gemm")
    c, j, rb_, ri_ = sch.get_loops(gm)
    co, ci = sch.split(c, [None, tile.to])
    jc, jo, jm, ji = sch.split(j, [None, r * conv.wo // tile.tp, tile.tp // tile.lanes, tile.lanes])
    inner = parallel_chunk_of_tiles(sch, tile, jc, co, jo, (rb_, ci, jm, ji, ri_), p_outer, kind)
    pk = sch.get_sblock("xpack")
    sch.compute_at(pk, jc)
    _, pj, pi = sch.get_loops(pk)[-3:]
    sch.unroll(pi)
    sch.split(pj, [r, conv.wo])
    xp_blk = sch.get_sblock("xpad")
    sch.compute_at(xp_blk, jc)
    xl = sch.get_loops(xp_blk)
    # the fill, then the copy of the chunk's input rows, at the loop under the chunk `xl[0]` (its channels; its
    # rows where one input channel leaves no channel loop): decomposing at the chunk loop itself would rebuild the
    # chunk loop and drop the tile loops scheduled under it (a 1-channel 3x3 conv failed so, session 16)
    if (len(xl) > 1 and (any(conv.padding) or pad != (conv.h, conv.w))
            and sch.can_decompose_padding(xp_blk, xl[1])):
        sch.decompose_padding(xp_blk, xl[1])
    sch.vectorize(sch.get_loops(sch.get_sblock("xpad"))[-1])
    finish_gemm_tile(sch, tile, intrin, gm, inner, rb_, ci, jm, ji, unroll_epilogue=unroll_epilogue,
                     epilogue_lanes=epilogue_lanes)
    return True


def activation_gather(gc: GemmConv, xdt: str, pp: int) -> tuple[te.Tensor, Any, tuple[int, int]]:
    """The kernel's input placeholder and `gather(k, j)`, the activation code of reduction row `k` and pixel `j`
    (0 beyond K, or beyond P when pixels are padded to `pp`), in `xdt`; and the padded input's (H, W).

    A full conv reads an explicitly padded copy `xpad` (a fill plus a vectorised interior copy, `schedule_xpad`),
    so that the im2col gather has no bounds test per element (with one, the stem's packing ran scalar and cost
    more than its GEMM)."""
    k, p, conv = gc.k, gc.p, gc.conv
    if conv is None:
        x = te.placeholder((k, p), "uint8", name="x")

        # only the bounds that can fail (K padded to the group, g | 4; pixels padded to the tile): a predicate on
        # the pixel alone is a padding pattern `schedule_pack_padding` splits off

        def gather_pw(kk: Any, j: Any) -> Any:
            conds = ([] if k % 4 == 0 else [kk < k]) + ([] if pp == p else [j < p])
            if not conds:
                return x[kk, j].astype(xdt)
            return tirx.if_then_else(tirx.all(*conds), x[kk, j].astype(xdt), tirx.const(0, xdt))

        return x, gather_pw, (0, 0)
    cg = conv
    x = te.placeholder((cg.c, cg.h, cg.w), "uint8", name="x")
    hp_ = max(cg.h + 2 * cg.padding[0], (cg.ho - 1) * cg.stride[0] + (cg.kh - 1) * cg.dilation[0] + 1)
    wp2 = max(cg.w + 2 * cg.padding[1], (cg.wo - 1) * cg.stride[1] + (cg.kw - 1) * cg.dilation[1] + 1)
    xpad = te.compute(
        (cg.c, hp_, wp2),
        lambda c_, yy, xx: tirx.if_then_else(
            tirx.all(yy >= cg.padding[0], yy < cg.h + cg.padding[0],
                     xx >= cg.padding[1], xx < cg.w + cg.padding[1]),
            x[c_, yy - cg.padding[0], xx - cg.padding[1]], tirx.const(cg.pad_value, "uint8")),
        name="xpad",
    )

    def gather(kk: Any, j: Any) -> Any:
        # rows of K beyond k meet zero weights (pack_weights): read any valid code there, branch-free
        kc = tirx.min(kk, k - 1)
        c_, kh, kw = kc // (cg.kh * cg.kw), (kc // cg.kw) % cg.kh, kc % cg.kw
        yy = (j // cg.wo) * cg.stride[0] + kh * cg.dilation[0]
        xx = (j % cg.wo) * cg.stride[1] + kw * cg.dilation[1]
        if pp == p:
            return xpad[c_, yy, xx].astype(xdt)
        return tirx.if_then_else(j < p, xpad[c_, tirx.min(yy, hp_ - 1), xx], tirx.const(0, "uint8")).astype(xdt)

    return x, gather, (hp_, wp2)


def schedule_pack_padding(sch: s_tir.Schedule, conv: Any, padded: bool) -> None:
    """A pointwise GEMM whose pixels are padded to whole tiles (`padded`): split the activation packing `xpack`
    into a zero fill and a branch-free copy of the P real pixels (`decompose_padding` inside the parallel
    reduction-block loop). With the `j < P` test in every element the packing ran scalar: MobileNetV2's 14x14 and
    7x7 projects spent 12-15 us of 39-56 us packing (1 thread, docs/peers.md session 12). Nothing for a full conv
    (its gather reads `xpad`) or when the predicate is not a padding pattern (K not a multiple of 4 as well)."""
    if conv is not None or not padded:
        return
    pk = sch.get_sblock("xpack")
    j = sch.get_loops(pk)[1]
    if sch.can_decompose_padding(pk, j):
        sch.decompose_padding(pk, j)


def schedule_xpad(sch: s_tir.Schedule, conv: Any, pad: tuple[int, int]) -> None:
    """Schedule `activation_gather`'s padded copy of a full conv's input (nothing for a pointwise conv)."""
    if conv is None:
        return
    xp_blk = sch.get_sblock("xpad")
    if any(conv.padding) or pad != (conv.h, conv.w):  # unpadded (1x1 stride-2): nothing to decompose
        sch.decompose_padding(xp_blk, sch.get_loops(xp_blk)[1])
    sch.vectorize(sch.get_loops(sch.get_sblock("xpad"))[-1])
