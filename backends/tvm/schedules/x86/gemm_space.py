"""The tuner's tile space of the x86 GEMM: which `GemmKnobs` `tune.tune_gemm` times for a workload, in what order.

Order matters because `trials=N` times the first N (`qc.lower(..., tune=True, trials=N)`):

1. the untuned default (`gemm.default_knobs(mode, k, p, o)`), so a tuned kernel is never slower than the untuned one;
2. the tiles session 12 measured close to the winner for this shape (docs/peers.md, "GEMM tiles by shape"): on
   "vnni512", the whole-row 8-lane ymm tiles 3 x row and 2 x row where 8-lane padding is shorter (7x7: 3x56, 2x56),
   6x32 and 4x48 for small K, 8x16, 6x16 and 6x32 elsewhere (the 14 px expands: 0.94-0.96x), and the old
   default 12x16; then, for "vnni512", the session 13 variants (docs/peers.md, engineer B): 2 x 64 with `store64`
   where 64 | P, and where K > O (a project layer, whose packing pays at 2 threads) the pixel-chunk packing
   `pack_tiles` on 2 x 64 / 12 x 16, and (session 14) 12 x 16 with `vshift`;
3. the grid of `gemm_axes`, most promising first (`grid_rank`).

At a lowering's thread count above 1, every tile of 2. is also listed in its one-region form (`chunked`:
`GemmKnobs.chunks` = threads, session 14; before the plain tile where the default takes it), and the grid holds both.

Knobs that give the same kernel for this shape (`to` fitted to a divisor of O, `tp` capped at the padded pixel
count: `conv.gemm_tile`) are listed once (`effective_tile`), so every trial times a different kernel.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace

from qcompile.backends.tvm.schedules.conv import gemm_tile
from qcompile.backends.tvm.schedules.x86.gemm import (
    CHUNK_MAX_P,
    LANES,
    MODES,
    NARROW_INTRIN,
    NARROW_ROW_MAX_P,
    SMALL_K_MAX,
    GemmKnobs,
    default_knobs,
    tile_intrinsic,
    tile_on_stack,
)
from qcompile.errors import ConfigError

__all__ = ["chunked", "effective_tile", "gemm_axes", "gemm_space", "grid_rank", "near_tiles", "vector_registers"]


def vector_registers(mode: str) -> int:
    """Vector registers the tile's accumulators and activations share: 32 with AVX-512 (zmm, and ymm0-31 for the
    8-lane calls of "vnni512"), 16 with AVX2 / AVX-VNNI."""
    return 32 if mode == "vnni512" else 16


def gemm_axes(mode: str, threads: int | None = None) -> dict[str, tuple]:
    """The values each `GemmKnobs` field takes in the grid of `mode`: the one place that lists the axes (a new
    knob adds its entry here; its first value is the default's). `lanes` is 0 (the mode's width) plus every
    narrower intrinsic of `gemm.NARROW_INTRIN` ("vnni512": 8, the 256-bit `vpdpbusd`). `pack_tiles` (0: packing
    over reduction blocks; 4: chunks of 4 pixel tiles), `store64` ("vnni512", `tp` 64) and `vshift` ("vnni512") as
    `GemmKnobs` documents them; `chunks` 0 (two parallel regions) and, at `threads` > 1, one region of `threads`
    blocks of channel tiles (`GemmKnobs.chunks`); combinations `GemmKnobs` refuses are left out of the grid."""
    if mode not in MODES:
        raise ConfigError("mode", mode, sorted(MODES))
    return {
        "to": (2, 3, 4, 6, 8, 12, 16),
        "tp": (8, 16, 24, 32, 40, 48, 56, 64),
        "p_outer": (True, False),
        "lanes": (0, *sorted(NARROW_INTRIN.get(mode, {}))),
        "pack_tiles": (0, 4),
        "store64": (False, True) if mode == "vnni512" else (False,),
        "chunks": (0, int(threads)) if threads and threads > 1 else (0,),
        "vshift": (False, True) if mode == "vnni512" else (False,),
    }


def effective_tile(mode: str, k: int, p: int, o: int, knobs: GemmKnobs) -> tuple:
    """What the kernel of `knobs` is for this shape (`conv.gemm_tile`): channels and pixels per tile, padded pixels,
    intrinsic lanes, loop order (irrelevant with one pixel tile or one channel tile) and every other knob (`vshift`
    only where the epilogue has 16-lane vectors)."""
    _, g, _, _ = MODES[mode]
    _, lanes = tile_intrinsic(mode, knobs)
    t = gemm_tile(k, p, o, g, knobs.to, knobs.tp, 8, lanes)
    p_outer = knobs.p_outer or t.pp == t.tp or t.to == o
    if knobs.chunks and (o // t.to) % knobs.chunks:  # unequal blocks: `pointwise_conv_x86` builds the two regions
        knobs = replace(knobs, chunks=0)
    rest = {f: v for f, v in vars(knobs).items() if f not in ("to", "tp", "lanes", "p_outer")}
    if lanes % 16 and not knobs.store64:  # an epilogue of 8-lane vectors shifts as before (`requant.sra_lanes`)
        rest["vshift"] = False
    rest = tuple(sorted(rest.items()))
    return t.to, t.tp, t.pp, lanes, p_outer, rest


def _valid(mode: str, knobs: GemmKnobs) -> bool:
    """A grid point worth timing: `tp` whole calls of its intrinsic and at least 4 accumulators that stay in
    registers: with 32 registers, accumulators plus one row of activation vectors at most 32 (7x7's 4 x 56 ymm, 28 +
    7, spilled and was 1.09-1.29x slower, docs/peers.md session 12); with 16, at most 16 accumulators (the weight
    broadcast and activations reuse registers, as the 8 x 16 default does)."""
    try:
        _, lanes = tile_intrinsic(mode, knobs)
    except ConfigError:
        return False
    if knobs.tp % lanes:
        return False
    vecs = knobs.tp // lanes
    acc = knobs.to * vecs
    regs = vector_registers(mode)
    return acc >= 4 and (acc + vecs <= regs if regs == 32 else acc <= regs)


def grid_rank(mode: str, knobs: GemmKnobs) -> tuple:
    """Sort key of the grid: tiles that stay on the stack (no workspace call per tile), pixels outside channels (the
    untuned order), then about 2/3 of the vector registers as accumulators (12 of 32 zmm rows of 16 lanes measured
    best, 10 of 16 ymm), the mode's own width first; `vshift` variants after the plain tiles, `pack_tiles` /
    `store64` variants last."""
    _, lanes = tile_intrinsic(mode, knobs)
    best_acc = 12 if vector_registers(mode) == 32 else 10
    # the packing and store variants after every plain tile: `near_tiles` already holds the ones measured to pay
    return (knobs.pack_tiles != 0 or knobs.store64, knobs.vshift, not tile_on_stack(knobs), not knobs.p_outer,
            abs(knobs.to * knobs.tp // lanes - best_acc), knobs.lanes != 0)


def near_tiles(mode: str, k: int, p: int, o: int | None = None) -> list[GemmKnobs]:
    """The tiles measured close to the default for this shape (docs/peers.md, sessions 12 and 13), most likely
    first; only "vnni512" has such measurements (the AVX2 / AVX-VNNI modes take the grid)."""
    if mode != "vnni512":
        return []
    wide = [GemmKnobs(2, 64, store64=True)] if p % 64 == 0 else []
    if o is not None and k > o:  # a project layer: packing over pixel chunks (session 13, 2 threads 0.72-0.80x)
        wide = [GemmKnobs(2, 64, pack_tiles=1, store64=True)] * (p % 64 == 0) + [GemmKnobs(12, 16, pack_tiles=4)] \
            + wide
    tp8 = -(-p // 8) * 8
    row = [GemmKnobs(3, tp8, True, 8), GemmKnobs(2, tp8, True, 8)] if p <= NARROW_ROW_MAX_P else []
    small_k = [GemmKnobs(6, 32), GemmKnobs(4, 48)]
    mid = [GemmKnobs(8, 16), GemmKnobs(6, 16), GemmKnobs(6, 32)]
    if k <= SMALL_K_MAX:
        order = small_k + row + mid
    elif row:
        order = row + mid + small_k
    else:
        order = mid + small_k
    # session 14: the per-lane shift of the requantize (`vshift`; the default's on 2 x 64) on the 12 x 16 tile
    return [*order, GemmKnobs(12, 16), *wide, GemmKnobs(12, 16, vshift=True)]


def chunked(knobs: GemmKnobs, threads: int) -> GemmKnobs:
    """The one-region form of `knobs` at `threads` threads (`GemmKnobs.chunks`, channels outside pixels inside a
    block, the untuned default's order), the pixel-chunk packing `pack_tiles` dropped (each block packs its own)."""
    return replace(knobs, chunks=int(threads), pack_tiles=0, p_outer=False)


def gemm_space(mode: str, k: int, p: int, o: int, extra: Iterable[GemmKnobs] = (),
               threads: int | None = None) -> list[GemmKnobs]:
    """Every candidate tile of a `K x P -> O` GEMM in `mode` for a lowering at `threads` threads, in the order
    `trials` cuts it: the default (`default_knobs(mode, k, p, o, threads)`), then `near_tiles` (at `threads` > 1
    each also in its one-region form `chunked`, first on at most `gemm.CHUNK_MAX_P` pixels, session 14), `extra`,
    the grid of `gemm_axes` sorted by `grid_rank`; one per distinct kernel (`effective_tile`)."""
    axes = gemm_axes(mode, threads)
    names = list(axes)
    grid = []
    for vals in itertools.product(*axes.values()):
        try:
            grid.append(GemmKnobs(**dict(zip(names, vals))))
        except ConfigError:  # e.g. store64 with a tp that is not a multiple of 64
            continue
    # the mode's own width written as 0: `lanes=LANES[mode]` is the same kernel
    grid = [kn for kn in grid if _valid(mode, kn) and kn.lanes != LANES[mode]]
    grid.sort(key=lambda kn: grid_rank(mode, kn))
    out, seen = [], set()
    near = near_tiles(mode, k, p, o)
    if threads and threads > 1:  # each near tile in both forms, the one-region form first where it is the default's
        first = p <= CHUNK_MAX_P
        near = [v for kn in near for v in ((chunked(kn, threads), kn) if first else (kn, chunked(kn, threads)))]
    for kn in (default_knobs(mode, k, p, o, threads), *near, *extra, *grid):
        key = effective_tile(mode, k, p, o, kn)
        if key not in seen:
            seen.add(key)
            out.append(kn)
    return out
