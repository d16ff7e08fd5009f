"""AMX-INT8 GEMM conv kernels (`schedules/x86/amx.py`) bit-exact against qcompile.ops.reference.

Each case goes through the conv strategy with the `amx-int8` family target (the host's mcpu where it has AMX,
else `x86-64-v4` + AMX, built and checked in the assembly only); the assembly must hold `tdpbsud` on tile
registers and `ldtilecfg`, and no case may fall back to the VNNI kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402
from tvm_graphs import conv_call_params  # noqa: E402

from qcompile.backends.tvm.intrin.amx import AmxBlock, enable_amx, has_amx  # noqa: E402
from qcompile.backends.tvm.schedules.x86.amx import AMX_MIN_K, amx_kernel_applies, amx_plan, use_amx  # noqa: E402
from qcompile.backends.tvm.strategy import OpCall, select_strategy  # noqa: E402
from qcompile.ops import reference as R  # noqa: E402
from tests import kernel_isa as isa  # noqa: E402

AMX = isa.target("amx-int8")
AMX_ASM = (r"tdpbsud\s+%tmm", r"ldtilecfg", r"tilestored", r"tileloadd")


def _case(rng, c, h, w, o, k, *, extreme=False):
    x = rng.integers(0, 256, (1, c, h, w)).astype(np.uint8)
    wt = rng.integers(-128, 128, (o, c, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, o).astype(np.int32)
    mult = rng.integers(2**29, 2**31, o).astype(np.int32)
    shift = rng.integers(34, 42, o).astype(np.int32)
    if extreme:  # the largest |accumulator| codes give: every product 255 * -128 or 255 * 127
        x[:] = 255
        wt[:] = -128
        wt[: o // 2] = 127
        bias[:] = 0
        shift[:] = 46
    return x, wt, bias, mult, shift


def _build(x, wt, bias, mult, shift, *, s, p, pad_value, requant=True):
    """The conv through the x86 strategy for the AMX target: a Relax executable whose one kernel is on AMX."""
    op = "conv2d_requant" if requant else "conv2d"
    lohi = {"lo": 3, "hi": 250} if requant else {}
    call = OpCall(op, conv_call_params(x.shape, wt.shape, s=s, p=p, groups=1, pad_value=pad_value, **lohi), AMX)
    strat = select_strategy(call)
    assert strat.describe(call, wt)["mode"] == "amx"
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    consts = [relax.const(wt), relax.const(bias)] + ([relax.const(mult), relax.const(shift)] if requant else [])
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(strat.emit(bb, call, [xv, *consts]))
        bb.emit_func_output(out)
    mod = bb.get()
    assert any("qc_gemm_amx_" in gv.name_hint for gv in mod.get_global_vars())
    ex = tvm.compile(mod, target=AMX)
    isa.check_instructions(ex, "amx-int8", *AMX_ASM)
    return ex


def _run(x, wt, bias, mult, shift, *, s, p, pad_value, requant=True):
    ex = _build(x, wt, bias, mult, shift, s=s, p=p, pad_value=pad_value, requant=requant)
    if not isa.should_execute("amx-int8"):
        pytest.skip("built and checked the AMX assembly; this CPU has no AMX-INT8")
    assert enable_amx(), "this CPU has AMX-INT8 but Linux refused the tile data (arch_prctl)"
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _reference(x, wt, bias, mult, shift, *, s, p, pad_value, requant=True):
    acc = R.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(wt),
        torch.from_numpy(bias),
        stride=s,
        padding=p,
        groups=1,
        pad_value=pad_value,
    )
    if not requant:
        return acc.numpy()
    return R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=3, hi=250).numpy()


# (c, h, w, o, k, stride, pad, pad_value): one per shape class; every case has K >= AMX_MIN_K
CASES = [
    # MobileNetV2's project layer at 14x14: K = 576 (9 chunks of 64 bytes), O = 96, P = 196 (pixels padded)
    pytest.param(576, 14, 14, 96, 1, 1, 0, 0, id="pointwise-1x1"),
    # a 3x3 im2col conv with the padding code: K = 16*9 = 144 (3 chunks of 48 bytes)
    pytest.param(16, 16, 16, 64, 3, 1, 1, 113, id="im2col-3x3"),
    # odd everything: K = 33*9 = 297 (padded to 300), O = 37 (padded to whole tiles), P = 13*13 = 169, stride 2
    pytest.param(33, 25, 25, 37, 3, 2, 1, 5, id="odd-channels-padded"),
]


@pytest.mark.parametrize(
    "c,h,w,o,k,s,p,pad_value,extreme",
    [pytest.param(*case.values, False, id=f"random-{case.id}") for case in CASES]
    + [pytest.param(*CASES[2].values, True, id="extreme-odd-channels-padded")],
)
def test_amx_conv_requant_bit_exact(c, h, w, o, k, s, p, pad_value, extreme):
    rng = np.random.default_rng(c * 100 + k)
    x, wt, bias, mult, shift = _case(rng, c, h, w, o, k, extreme=extreme)
    kw = dict(s=s, p=p, pad_value=pad_value)
    got = _run(x, wt, bias, mult, shift, **kw)
    ref = _reference(x, wt, bias, mult, shift, **kw)
    assert got.dtype == np.uint8 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(ref)) > 2  # codes other than the clamp bounds: the accumulators matter


def test_amx_conv_accumulator_bit_exact():
    """The int32 accumulator itself (op `conv2d` without requantize) on the padded odd case."""
    rng = np.random.default_rng(3)
    x, wt, bias, mult, shift = _case(rng, 33, 25, 25, 37, 3)
    kw = dict(s=2, p=1, pad_value=5, requant=False)
    got = _run(x, wt, bias, mult, shift, **kw)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _reference(x, wt, bias, mult, shift, **kw))


def test_amx_chosen_per_workload():
    """AMX for large-K GEMMs on AMX targets only; small reductions stay on VNNI (docs/benchmarks.md, AMX-INT8)."""
    assert has_amx(AMX) and not has_amx(isa.target("avx512-vnni"))
    assert use_amx(96, 576, 196) and use_amx(64, 144, 256)
    assert not use_amx(144, 24, 3136)  # MobileNetV2's first expand layer: K = 24
    assert not use_amx(16, AMX_MIN_K, 16)  # too little work for a tile configuration
    assert amx_kernel_applies(AMX, 96, 576, 196) == (enable_amx() or not isa.can_run("amx-int8"))
    assert not amx_kernel_applies(isa.target("avx512-vnni"), 96, 576, 196)
    call = OpCall(
        "conv2d_requant",
        conv_call_params((1, 24, 56, 56), (144, 24, 1, 1), s=1, p=0, groups=1, pad_value=0, lo=3, hi=250),
        AMX,
    )
    assert select_strategy(call).describe(call, None)["mode"] != "amx"


@pytest.mark.parametrize("okp", [(96, 576, 196), (37, 297, 49), (1280, 320, 49), (24, 144, 3136), (16, 128, 512)])
def test_amx_plan_covers_the_gemm(okp):
    """Blocks tile the padded GEMM exactly, use at most 8 tile registers, and pad K by less than one group per chunk."""
    o, k, p = okp
    plan = amx_plan(o, k, p, num_threads=2)
    blk = plan.block()
    assert isinstance(blk, AmxBlock) and blk.to * blk.tp + blk.to + blk.tp <= 8
    assert plan.opad % blk.so == 0 and plan.pp % blk.sp == 0 and plan.opad >= o and plan.pp >= p
    assert 4 * plan.kb >= k and 4 * plan.kb - k < 4 * (plan.nk + 1) and plan.kc4 <= 16
    assert blk.so * blk.sp * 4 <= 128 * 1024 or (blk.so, blk.sp) == (16 * blk.to, 16 * blk.tp)
    blocks = (plan.opad // blk.so) * (plan.pp // blk.sp)
    assert blocks >= min(2, (-(-o // 16)) * (-(-p // 16)) // (blk.to * blk.tp))  # both threads get work


@pytest.mark.slow
def test_amx_network_bit_exact():
    """The largest `mobilenet_v2` space subnet (8-bit, 128 px) lowered for this host: its large 1x1 convs run on AMX
    and the whole network matches the reference integer executor bit for bit."""
    import qcompile as qc
    from qcompile.backends.tvm import lower_integer_graph

    if not isa.should_execute("amx-int8"):
        pytest.skip("this CPU has no AMX-INT8: the host lowering has no AMX kernel")
    torch.manual_seed(0)
    space = qc.spaces.mobilenet_v2(num_classes=10, resolutions=(128,))
    qnet = qc.quantize(qc.trace(space.build_supernet()), weight_bits=(8,), act_bits=(8,), first_layer=8)
    sub = qc.extract(qnet, space.largest(bits=8))
    gen = torch.Generator().manual_seed(0)
    qc.calibrate(sub, [torch.randn(2, 3, 128, 128, generator=gen) for _ in range(2)])
    ig = qc.to_integer(sub)
    low = lower_integer_graph(ig, "x86", input_shape=(1, 3, 128, 128))
    n_amx = sum(1 for k in low.meta["kernels"] if k["workload"].get("mode") == "amx")
    assert n_amx >= 10, n_amx
    x = torch.randn(2, 3, 128, 128, generator=gen)
    got = np.concatenate([low(x[i : i + 1].numpy()) for i in range(len(x))])
    np.testing.assert_array_equal(got.astype(np.float64), ig(x).numpy().astype(np.float64))


def test_amx_block_refuses_shapes_the_tiles_cannot_hold():
    from qcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="8 registers"):
        AmxBlock(48, 32, 24, 12, 3, 2)  # 6 C + 3 A + 2 B tiles
    with pytest.raises(ConfigError, match="kc4"):
        AmxBlock(32, 32, 34, 17, 2, 2)  # a 68-byte tile row


def test_amx_kernels_carry_the_fused_epilogue():
    """Large 1x1 convs followed by a LUT and by a residual add, lowered for this (AMX) host: the emitter fuses
    both into the conv epilogue and the strategy puts both convs on AMX; the AMX kernels apply the fused steps
    (ragged 15 x 13 pixels: padded tiles read a valid skip element) and the network equals the reference
    integer executor."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import tvm_graphs as G

    from qcompile.backends.tvm import lower_integer_graph

    ig = G.amx_residual()
    if not isa.should_execute("amx-int8"):
        pytest.skip("this CPU has no AMX-INT8: the host lowering has no AMX kernel")
    low = lower_integer_graph(ig, "x86")
    convs = [k for k in low.meta["kernels"] if k["op"] == "conv2d_requant"]
    assert [(k["workload"].get("mode"), k["workload"].get("epilogue")) for k in convs] == [
        ("amx", ["lut"]), ("amx", ["add"])]
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = (rng.standard_normal((1, 128, 15, 13)) * 1.5).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(low(x)), G.reference(ig, x))


@pytest.mark.slow  # two RPC servers, each a fresh Python process that imports qcompile (47 s at load 15)
def test_amx_kernel_runs_on_the_rpc_server(tmp_path):
    """An AMX conv library run through a local RPC server (127.0.0.1) started by `rpc.start_rpc_server`: the server
    process asked for the AMX tile data before serving, so the kernel runs there, bit-exact. A plain
    `tvm.rpc.Server` does not ask, and the same library kills its session (SIGILL)."""
    from tvm import rpc

    from qcompile.backends.tvm.rpc import remote_session, start_rpc_server

    if not isa.should_execute("amx-int8"):
        pytest.skip("this CPU has no AMX-INT8")
    x, wt, bias, mult, shift = _case(np.random.default_rng(7), 128, 16, 16, 64, 1)
    ref = _reference(x, wt, bias, mult, shift, s=1, p=0, pad_value=0)
    _build(x, wt, bias, mult, shift, s=1, p=0, pad_value=0).export_library(str(tmp_path / "amx.so"))

    def run_on(server) -> np.ndarray:
        try:
            with remote_session(f"127.0.0.1:{server.port}", timeout=30) as sess:
                sess.upload(str(tmp_path / "amx.so"), "amx.so")
                dev = sess.cpu()
                vm = relax.VirtualMachine(sess.load_module("amx.so"), dev)
                return vm["main"](tvm.runtime.tensor(x, dev)).numpy()
        finally:
            server.terminate()

    np.testing.assert_array_equal(run_on(start_rpc_server("127.0.0.1", 9620, 9700, silent=True)), ref)
    with pytest.raises(Exception):  # noqa: B017  (the session dies: TVM reports a closed connection)
        run_on(rpc.Server(host="127.0.0.1", port=9700, port_end=9780, silent=True))
