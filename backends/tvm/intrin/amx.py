"""AMX-INT8 tensor intrinsic: a whole `SO x SP` int32 block of the conv GEMM in tile registers (`tdpbsud`).

The block computes `C[c, j] = sum_{b, i} W[c, b, i] * X[b, j, i]` (integer_semantics.md `conv2d` as a GEMM) with
the operand layouts the VNNI kernels already use: weights `W[O, K/4, 4]` packed at compile time (rows of an
AMX "A" tile: 16 channels x up to 64 reduction bytes) and activations `X[K/4, P, 4]` packed per call (rows of a
"B" tile: 4 reduction codes per pixel, 16 pixels = 64 bytes). `tdpbsud` (signed A x unsigned B, Intel SDM,
"TDPBSUD") then produces `C[16 channels, 16 pixels]`, i.e. NCHW rows: no transposition anywhere.

Exactness: each int32 lane accumulates `sum of s8 x u8 products` with wrap-around and no intermediate
saturation, exactly like `vpdpbusd` (`intrin.x86`): bit-exact for every code range.

Per block: one `ldtilecfg` (measured here ~235 ns, against ~14 ns per 16x16x64 `tdpbsud` with its loads, so
the configuration is paid once per block, not per tile), then for each `TO x TP` group of C tiles: `tileloadd` of
the accumulator (zeroed by the schedule's init block: TVM's tensorize matches the reduction update only),
`NK` reduction chunks of `tileloadd` A/B and `TO*TP` `tdpbsud`, `tilestored`; `tilerelease` at the end (the
next kernel may configure other shapes). Tile registers: C in 0..TO*TP-1, A next, B last (8 in all).

Linux hands AMX tile data to a process only after `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`
(kernel 5.16+, Documentation/arch/x86/xstate.rst); `enable_amx` does it once per process, before any AMX kernel
runs (the first `tileloadd` of a process without it dies with SIGILL).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform
from dataclasses import dataclass
from typing import Any

import tvm
from tvm.s_tir import TensorIntrin

from qcompile.backends.tvm.intrin.common import target_features
from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["AmxBlock", "amx_intrin", "enable_amx", "has_amx"]

_SYS_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


@functools.cache
def enable_amx() -> bool:
    """Ask Linux for AMX tile data in this process (once); True when granted (or already granted)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)
    if rc != 0:
        log.info("arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) refused (errno %d): no AMX kernels", ctypes.get_errno())
        return False
    return True


def has_amx(target: tvm.target.Target) -> bool:
    """True when the target may execute AMX-INT8 (`amx-tile` + `amx-int8`)."""
    return {"amx-tile", "amx-int8"} <= target_features(target)


@dataclass(frozen=True)
class AmxBlock:
    """One tensorized block: `so x sp` outputs (`to x tp` C tiles of 16 x 16 per step), `kb` groups of 4 reduction
    values taken in `nk` chunks of `kc4` groups (`kc4 <= 16`: an A tile row holds at most 64 bytes)."""

    so: int
    sp: int
    kb: int
    kc4: int
    to: int
    tp: int

    def __post_init__(self) -> None:
        if min(self.to, self.tp) < 1 or self.to * self.tp + self.to + self.tp > 8:
            raise ConfigError("AmxBlock.to x tp", (self.to, self.tp), "C, A and B tiles within AMX's 8 registers")
        if self.so % (16 * self.to) or self.sp % (16 * self.tp) or min(self.so, self.sp) < 1:
            raise ConfigError(
                "AmxBlock.so x sp", (self.so, self.sp), f"positive multiples of {(16 * self.to, 16 * self.tp)}"
            )
        if not 1 <= self.kc4 <= 16 or self.kb % self.kc4:
            raise ConfigError("AmxBlock.kc4", self.kc4, f"1..16 dividing kb={self.kb} (a tile row holds 64 bytes)")

    @property
    def nk(self) -> int:
        return self.kb // self.kc4

    @property
    def name(self) -> str:
        return f"qcompile_amx_s8u8_{self.so}x{self.sp}x{self.kb}_k{self.kc4}_t{self.to}x{self.tp}"

    def config(self) -> list[int]:
        """The 64-byte tile configuration (palette 1): C tiles 16 x 64 B, A tiles 16 x 4*kc4 B, B tiles kc4 x 64 B."""
        cfg = [0] * 64
        cfg[0] = 1
        shapes = [(16, 64)] * (self.to * self.tp) + [(16, 4 * self.kc4)] * self.to + [(self.kc4, 64)] * self.tp
        for t, (rows, colsb) in enumerate(shapes):
            cfg[16 + 2 * t] = colsb & 0xFF
            cfg[17 + 2 * t] = colsb >> 8
            cfg[48 + t] = rows
        return cfg


def _desc_source(b: AmxBlock) -> str:
    return f"""
@T.prim_func(s_tir=True)
def desc(w: T.handle, x: T.handle, c: T.handle) -> None:
    W = T.match_buffer(w, ({b.so}, {b.kb}, 4), "int8", offset_factor=1)
    X = T.match_buffer(x, ({b.kb}, {b.sp}, 4), "uint8", offset_factor=1)
    C = T.match_buffer(c, ({b.so}, {b.sp}), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:{b.so}, 0:{b.sp}], X[0:{b.kb}, 0:{b.sp}, 0:4], W[0:{b.so}, 0:{b.kb}, 0:4])
        T.writes(C[0:{b.so}, 0:{b.sp}])
        for i, j, r, q in T.grid({b.so}, {b.sp}, {b.kb}, 4):
            with T.sblock("update"):
                vi, vj, vr, vq = T.axis.remap("SSRR", [i, j, r, q])
                C[vi, vj] = C[vi, vj] + T.Cast("int32", X[vr, vj, vq]) * T.Cast("int32", W[vi, vr, vq])
"""


def _impl_source(b: AmxBlock) -> str:
    """The implementation as TVMScript text: tile numbers are immediates, so the tile loops are unrolled here."""
    nc = b.to * b.tp
    ta = [nc + i for i in range(b.to)]
    tb = [nc + b.to + j for j in range(b.tp)]
    cfg = b.config()
    lines = [f"cfg[{i}] = T.uint8({v})" for i, v in enumerate(cfg) if v]
    step = []
    for i in range(b.to):
        step.append(
            f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8({ta[i]}), '
            f"T.address_of(W[ob * {16 * b.to} + {16 * i}, q * {b.kc4}, 0]), T.int64(sw)))"
        )
    for j in range(b.tp):
        step.append(
            f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8({tb[j]}), '
            f"T.address_of(X[q * {b.kc4}, pb * {16 * b.tp} + {16 * j}, 0]), T.int64(sx)))"
        )
    for i in range(b.to):
        for j in range(b.tp):
            step.append(
                f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbsud", T.int8({i * b.tp + j}), '
                f"T.int8({ta[i]}), T.int8({tb[j]})))"
            )
    load_c = [
        f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8({i * b.tp + j}), '
        f"T.address_of(C[ob * {16 * b.to} + {16 * i}, pb * {16 * b.tp} + {16 * j}]), T.int64(sc * 4)))"
        for i in range(b.to)
        for j in range(b.tp)
    ]
    store = [
        f'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8({i * b.tp + j}), '
        f"T.address_of(C[ob * {16 * b.to} + {16 * i}, pb * {16 * b.tp} + {16 * j}]), T.int64(sc * 4)))"
        for i in range(b.to)
        for j in range(b.tp)
    ]
    ind = " " * 16
    return f"""
@T.prim_func(s_tir=True)
def impl(w: T.handle, x: T.handle, c: T.handle) -> None:
    sw = T.int32()
    sx = T.int32()
    sc = T.int32()
    W = T.match_buffer(w, ({b.so}, {b.kb}, 4), "int8", offset_factor=1, strides=[sw, 4, 1])
    X = T.match_buffer(x, ({b.kb}, {b.sp}, 4), "uint8", offset_factor=1, strides=[sx, 4, 1])
    C = T.match_buffer(c, ({b.so}, {b.sp}), "int32", offset_factor=1, strides=[sc, 1])
    with T.sblock("root"):
        T.reads(C[0:{b.so}, 0:{b.sp}], X[0:{b.kb}, 0:{b.sp}, 0:4], W[0:{b.so}, 0:{b.kb}, 0:4])
        T.writes(C[0:{b.so}, 0:{b.sp}])
        cfg = T.alloc_buffer((64,), "uint8", scope="local")
        for z in range(64):
            cfg[z] = T.uint8(0)
        {(chr(10) + " " * 8).join(lines)}
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0])))
        for ob in range({b.so // (16 * b.to)}):
            for pb in range({b.sp // (16 * b.tp)}):
                {(chr(10) + ind).join(load_c)}
                for q in range({b.nk}):
                    {(chr(10) + ind + "    ").join(step)}
                {(chr(10) + ind).join(store)}
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilerelease"))
"""


def amx_intrin(block: AmxBlock) -> str:
    """Register (once) and return the name of the tensor intrinsic computing `block`."""
    if TensorIntrin.get(block.name, allow_missing=True) is None:
        from tvm.script import tirx as T

        env: dict[str, Any] = {"T": T}
        desc = tvm.script.from_source(_desc_source(block), extra_vars=env)
        impl = tvm.script.from_source(_impl_source(block), extra_vars=env)
        TensorIntrin.register(block.name, desc, impl)
    return block.name
