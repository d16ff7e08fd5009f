"""x86 GEMM conv (pointwise and im2col) on AMX-INT8 tiles, with the fused requantize epilogue.

The same GEMM as `gemm.pointwise_conv_x86` (`acc[o, p] = sum_k w[o, k] x[k, p]`, integer_semantics.md `conv2d`),
with the same operand layouts (activations packed per call to `xpack[K/4, P, 4]`, weights packed at compile time
to `[O, K/4, 4]`), computed by `intrin.amx`: the output is cut into blocks of `so x sp` (channels x pixels), one
per parallel iteration, each block accumulated in AMX tiles (`tdpbsud`) into an int32 scratch and requantized
from there while it is hot. Padding to tile multiples, all with zero weights or zero codes that add nothing:
K to `nk` chunks of `4*kc4` bytes, O to whole blocks (the padded channels are never stored), P to whole blocks
(cropped like the VNNI kernel's ragged tiles).

When AMX pays (`use_amx`): a block pays one `ldtilecfg` (~235 ns measured here) plus the packing and epilogue
passes the VNNI kernel pays too; the tiles do the MACs about 4x faster than AVX512-VNNI. So small GEMMs
(little work per call) stay on VNNI; see docs/benchmarks.md, "AMX-INT8 kernels", for the measured rule.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, te

from qcompile.backends.tvm.intrin.amx import AmxBlock, amx_intrin, enable_amx, has_amx
from qcompile.backends.tvm.schedules.conv import GemmConv, GemmTile, gemm_requant_stages, schedule_gemm_pack
from qcompile.backends.tvm.schedules.parallel import parallel_if_worth
from qcompile.backends.tvm.schedules.x86.gemm import activation_gather, schedule_xpad
from qcompile.backends.tvm.targets import host_cpu_features

log = logging.getLogger(__name__)

__all__ = [
    "AMX_MIN_K",
    "AMX_MIN_MACS",
    "AmxPlan",
    "amx_kernel_applies",
    "amx_plan",
    "conv_amx",
    "pack_amx_weights",
    "use_amx",
]

#: the smallest reduction (K = C*KH*KW) that AMX computes: below it the int32 tile traffic (zero, load, store,
#: requantize read-back) costs more than the faster MACs save (measured crossover, docs/benchmarks.md "AMX-INT8")
AMX_MIN_K = 128
#: the smallest GEMM (O*K*P multiply-accumulates) that AMX computes: below it one block's `ldtilecfg` and the
#: parallel launch are not paid back
AMX_MIN_MACS = 1 << 20
#: int32 scratch per block (bytes): stays in L2 while the epilogue reads it back
_SCRATCH_BYTES = 128 * 1024
#: multiply-accumulates per block, enough to amortise its `ldtilecfg` (~235 ns against ~1 MAC/ps on the tiles)
_BLOCK_MACS = 1 << 22


@dataclass(frozen=True)
class AmxPlan:
    """The blocking of one AMX conv kernel: C tiles `to x tp` per step, blocks of `mo x mp` steps, reduction in
    `nk` chunks of `kc4` groups of 4; `opad`, `pp`, `kpad` the padded GEMM sizes."""

    o: int
    p: int
    k: int
    to: int
    tp: int
    mo: int
    mp: int
    kc4: int
    nk: int

    @property
    def so(self) -> int:
        return 16 * self.to * self.mo

    @property
    def sp(self) -> int:
        return 16 * self.tp * self.mp

    @property
    def opad(self) -> int:
        return -(-self.o // self.so) * self.so

    @property
    def pp(self) -> int:
        return -(-self.p // self.sp) * self.sp

    @property
    def kb(self) -> int:
        return self.kc4 * self.nk

    def block(self) -> AmxBlock:
        return AmxBlock(self.so, self.sp, self.kb, self.kc4, self.to, self.tp)


def use_amx(o: int, k: int, p: int) -> bool:
    """Whether a GEMM conv of `o x k x p` runs on AMX (given a target that has it): `K >= AMX_MIN_K` and
    `O*K*P >= AMX_MIN_MACS`."""
    return k >= AMX_MIN_K and o * k * p >= AMX_MIN_MACS


def amx_kernel_applies(target: tvm.target.Target, o: int, k: int, p: int) -> bool:
    """Whether the conv strategy builds this GEMM on AMX: the target has AMX-INT8, `use_amx`, and, when this
    host has AMX too (the library may run here), Linux granted this process the tile data (`enable_amx`)."""
    if not (has_amx(target) and use_amx(o, k, p)):
        return False
    return "amx-int8" not in host_cpu_features() or enable_amx()


def amx_plan(o: int, k: int, p: int, num_threads: int = 2) -> AmxPlan:
    """The blocking for `o x k x p`: 2x2 C tiles where O and P fill them (else 1x2 / 2x1 / 1x3), reduction chunks
    of at most 64 bytes with the least padding, then blocks of about `_BLOCK_MACS` (at least one per thread when
    there are enough tiles), whose int32 scratch stays under `_SCRATCH_BYTES`."""
    k4 = -(-k // 4)
    nk = -(-k4 // 16)
    kc4 = -(-k4 // nk)
    ot, pt = -(-o // 16), -(-p // 16)  # 16 x 16 tiles, unpadded counts
    # C tiles per step: the shape with the least padding, then the most tiles (fewer A/B loads per tdpbsud)
    shapes = [(2, 2), (1, 3), (3, 1), (1, 2), (2, 1), (1, 1)]

    def waste(s: tuple[int, int]) -> tuple[int, int]:
        to, tp = s
        return (-(-ot // to) * to * -(-pt // tp) * tp, -to * tp)

    to, tp = min(shapes, key=waste)
    n_o, n_p = -(-ot // to), -(-pt // tp)  # steps along O and P
    macs_step = 256 * to * tp * 4 * kc4 * nk
    want = max(1, math.ceil(n_o * n_p * macs_step / _BLOCK_MACS))
    want = max(want, min(num_threads, n_o * n_p))
    best = None
    for mo in (d for d in range(1, n_o + 1) if n_o % d == 0):
        for mp in (d for d in range(1, n_p + 1) if n_p % d == 0):
            if 16 * to * mo * 16 * tp * mp * 4 > _SCRATCH_BYTES and (mo, mp) != (1, 1):
                continue
            blocks = (n_o // mo) * (n_p // mp)
            rounds = -(-blocks // num_threads)
            # closest to the wanted block count; balanced over threads; then wider pixel runs
            key = (abs(math.log(blocks / want)), rounds * num_threads - blocks, -mp)
            if best is None or key < best[0]:
                best = (key, mo, mp)
    _, mo, mp = best
    return AmxPlan(o, p, k, to, tp, mo, mp, kc4, nk)


def conv_amx(gc: GemmConv, plan: AmxPlan | None = None, num_threads: int = 2) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc `(x, wp[Opad, Kpad/4, 4] s8, bterm[O] i64, mult[O] i32, shift[O] i32) -> out[O, P]`.

    The signature of `gemm.pointwise_conv_x86` (same `x`, epilogue and output), except that the weights are
    packed zero-padded to the plan's `Opad x Kpad` (`pack_weights` on `w` padded to `Opad` rows)."""
    k, p, o, conv = gc.k, gc.p, gc.o, gc.conv
    plan = plan or amx_plan(o, k, p, num_threads)
    blk = plan.block()
    intrin = amx_intrin(blk)
    opad, pp, kb = plan.opad, plan.pp, plan.kb
    x, gather, pad = activation_gather(gc, "uint8", pp)
    wp = te.placeholder((opad, kb, 4), "int8", name="wp")
    bias = te.placeholder((o,), "int64" if gc.requant else "int32", name="bterm" if gc.requant else "bias")
    stages = gemm_requant_stages(gather, (kb, 4), wp, bias, o, p, pp, gc.lo, gc.hi, gc.shift_min, gc.post, opad)
    func = te.create_prim_func([x, wp, bias, *stages]).with_attr("global_symbol", "main")
    sch = s_tir.Schedule(func)

    schedule_gemm_pack(sch, GemmTile(opad, p, kb, 4, blk.so, blk.sp, pp, 16), conv, "gemm_amx")
    schedule_xpad(sch, conv, pad)
    gm = sch.get_sblock("gemm")
    c, j, rb_, ri_ = sch.get_loops(gm)
    co, ci = sch.split(c, [None, blk.so])
    jo, ji = sch.split(j, [None, blk.sp])
    sch.reorder(jo, co, ci, ji, rb_, ri_)
    outer = sch.fuse(jo, co)
    parallel_if_worth(sch, outer, opad * pp * kb * 4, "gemm_amx")
    ep = sch.get_sblock("epilogue")
    sch.reverse_compute_at(ep, outer)
    init = sch.decompose_reduction(gm, ci)
    sch.tensorize(ci, intrin)
    sch.vectorize(sch.split(sch.get_loops(init)[-1], [None, 16])[1])
    _, e_ji = sch.split(sch.get_loops(ep)[-1], [None, 16])
    sch.vectorize(e_ji)
    if pp != p:
        sch.reverse_compute_at(sch.get_sblock("crop"), outer)
    return sch.mod["main"]


def pack_amx_weights(w: np.ndarray, plan: AmxPlan) -> np.ndarray:
    """[O, K(, KH, KW)] int8 weights -> `[Opad, Kpad/4, 4]` int8, zero rows and columns added (zero adds nothing)."""
    w2 = np.asarray(w).reshape(w.shape[0], -1)
    out = np.zeros((plan.opad, plan.kb * 4), np.int8)
    out[: w2.shape[0], : w2.shape[1]] = w2
    return out.reshape(plan.opad, plan.kb, 4)
