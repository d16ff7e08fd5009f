"""Per-layer kernels of qcompile (the exact PrimFuncs the x86 strategies emit) and their peers, timed alone."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks._common import time_min
from benchmarks.mbv2 import ConvLayer

__all__ = ["ort_layer", "qc_layer_kernel", "time_min", "torch_ao_layer"]


def qc_layer_kernel(ly: ConvLayer, target, *, w_bits: int = 8, x_max: int = 255, knobs=None, seed: int = 0,
                    pairs: bool = True, shift: int = 40, with_out: bool = False, unroll_epilogue: bool = True,
                    split_pack_padding: bool = True):
    """Compile the conv2d+requantize kernel of one layer; returns `(run, mode)` with `run()` one call.

    `pairs`: the GEMM's requantize form (`pointwise_conv_x86(..., pairs=)`); `shift`: every channel's shift (>= 32
    selects the int32 tail of the epilogue, below 32 the int64 one); `with_out=True` returns `(run, mode, out)`
    with `out()` the output tensor as numpy; `unroll_epilogue`, `split_pack_padding`: `pointwise_conv_x86`'s;
    `knobs`: the schedule (`GemmKnobs`, or `DwKnobs` for a depthwise layer) instead of the strategy's."""
    import tvm

    from qcompile.backends.tvm.schedules.conv import ConvGeometry, DwConv, GemmConv, pack_weights
    from qcompile.backends.tvm.schedules.requant import bias_term
    from qcompile.backends.tvm.schedules.x86 import depthwise_workload, gemm_workload
    from qcompile.backends.tvm.schedules.x86.depthwise import depthwise_kernel, dw_weights, target_dw_knobs
    from qcompile.backends.tvm.schedules.x86.gemm import MODES, choose_mode, default_knobs, pointwise_conv_x86
    from qcompile.backends.tvm.schedules.x86.tune import lookup_dw_knobs, lookup_knobs
    from qcompile.backends.tvm.threads import target_threads

    rng = np.random.default_rng(seed)
    hw = 2 ** (w_bits - 1)
    w = rng.integers(-hw, hw, (ly.o, ly.c // ly.groups, ly.k, ly.k)).astype(np.int8)
    mult = np.full(ly.o, (1 << 28) >> max(0, 40 - shift), np.int32)
    shift = np.full(ly.o, shift, np.int32)
    bias = bias_term(rng.integers(-1000, 1000, ly.o), mult, shift)
    pad = ly.k // 2
    if ly.kind == "depthwise":  # the schedule the strategy would pick: tuned record, else the default
        params = {"x_shape": (1, ly.c, ly.h, ly.h), "w_shape": w.shape, "stride": ly.stride, "padding": pad}
        dk = knobs or lookup_dw_knobs(depthwise_workload(params), target) or target_dw_knobs(ly.ho, target, ly.k,
                                                                                            ly.stride)
        dw = DwConv(ly.c, ly.h, ly.h, ly.k, ly.k, (ly.stride,) * 2, (pad, pad), shift_min=int(shift[0]))
        func = depthwise_kernel(dw, dk, target=target)
        x = rng.integers(0, x_max + 1, (ly.c, ly.h, ly.h)).astype(np.uint8)
        wk = dw_weights(w, ly.k, ly.k, dk, ly.stride)
        kind = ("quads" if dk.taps == 4 else "pairs") if dk.pairs else (
            "vquads" if dk.vquads else "slide" if dk.slide else "rows")
        mode = f"dw-{kind}{dk.vec}"
        out = np.zeros((ly.o, ly.ho, ly.ho), np.uint8)
    else:
        mode = choose_mode(target, w, x_max)
        _, g, _, wdt = MODES[mode]
        wl = gemm_workload({"x_shape": (1, ly.c, ly.h, ly.h), "w_shape": (ly.o, ly.c, ly.k, ly.k),
                             "out_shape": (1, ly.o, ly.ho, ly.ho)})  # the strategy's own tuning key
        geom = None
        x = rng.integers(0, x_max + 1, (ly.c, ly.h * ly.h)).astype(np.uint8)
        if ly.kind == "full":
            geom = ConvGeometry(ly.c, ly.h, ly.h, ly.k, ly.k, (ly.stride,) * 2, (pad, pad))
            x = x.reshape(ly.c, ly.h, ly.h)
        gc = GemmConv(ly.c * ly.k * ly.k, ly.ho * ly.ho, ly.o, shift_min=int(shift[0]), conv=geom)
        knobs = knobs or lookup_knobs(wl | {"mode": mode}, target) or default_knobs(mode, gc.k, gc.p, gc.o,
                                                                                    target_threads(target))
        func = pointwise_conv_x86(gc, mode, knobs, pairs=pairs, unroll_epilogue=unroll_epilogue,
                                  split_pack_padding=split_pack_padding)
        wk = pack_weights(w, g, wdt)
        out = np.zeros((ly.o, ly.ho * ly.ho), np.uint8)
    lib = tvm.compile(func, target=target)
    args = [tvm.runtime.tensor(a) for a in (x, wk, bias, mult, shift, out)]
    fn = lib.mod["main"]
    if with_out:
        return (lambda: fn(*args)), mode, (lambda: args[-1].numpy())
    return (lambda: fn(*args)), mode


def ort_layer(ly: ConvLayer, threads: int = 2) -> Callable[[], object]:
    """onnxruntime QDQ int8 conv+ReLU6 of the same shape; returns a one-call closure."""
    from benchmarks.mbv2 import SingleConv, ort_int8

    shape = (1, ly.c, ly.h, ly.h)
    run = ort_int8(SingleConv(ly), shape, threads)
    xf = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return lambda: run(xf)


def torch_ao_layer(ly: ConvLayer, threads: int = 2) -> Callable[[], object]:
    """torch.ao int8 conv+ReLU6 of the same shape; returns a one-call closure (float input, as the peer)."""
    import torch

    from benchmarks.mbv2 import SingleConv, torch_ao_int8

    torch.set_num_threads(threads)
    shape = (1, ly.c, ly.h, ly.h)
    run = torch_ao_int8(SingleConv(ly), shape)
    xf = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return lambda: run(xf)
