"""Tuning of the aarch64 GEMM tiles through TVM RPC (`schedules.arm.tune`), against qcompile's aarch64 RPC server
under qemu-aarch64 (`qemu.QemuRpcServer`: an emulated board; its timings are not ARM latency)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_graphs as G
from conftest import make_input
from tvm_graphs import conv_call_params

from qcompile.backends.tvm import lower_integer_graph, tuning
from qcompile.backends.tvm.qemu import QemuRpcServer, qemu_available
from qcompile.backends.tvm.schedules.arm import strategy as arm_strategy
from qcompile.backends.tvm.schedules.arm import tune
from qcompile.backends.tvm.schedules.arm.gemm import ArmGemmKnobs
from qcompile.backends.tvm.strategy import OpCall
from qcompile.backends.tvm.targets import ARM_CPU_TARGET
from qcompile.errors import ConfigError, LoweringError

SDOT = tvm.target.Target(dict(ARM_CPU_TARGET))
I8MM = tvm.target.Target(dict(ARM_CPU_TARGET, mattr=["+neon", "+dotprod", "+i8mm"]))
needs_qemu = pytest.mark.skipif(not qemu_available(), reason="needs qemu-aarch64 and aarch64-linux-gnu-g++")


@pytest.fixture
def db_root(tmp_path, monkeypatch):
    """A private tuning database (only the tuning root moves: the aarch64 runtime and runners stay cached)."""
    monkeypatch.setattr(tuning, "cache_dir", lambda: tmp_path / "tuning")
    return tmp_path / "tuning"


@pytest.fixture(scope="module")
def qemu_rpc():
    with QemuRpcServer() as srv:
        yield srv


def _pw_call(c=24, hw=(7, 7), o=16, target=SDOT):
    params = conv_call_params((1, c, *hw), (o, c, 1, 1), s=1, p=0, groups=1, pad_value=0, node="pw", lo=0, hi=255)
    return OpCall("conv2d_requant", params, target)


@pytest.mark.parametrize("mode", ["sdot", "neon", "i8mm"])
@pytest.mark.parametrize(("o", "p"), [(16, 49), (96, 196), (13, 5), (1, 1), (24, 3136), (2, 3)])
def test_candidates_valid_per_mode(mode, o, p):
    step = 2 if mode == "i8mm" else 1  # smmla: 2 channels per call
    if o % step:
        with pytest.raises(ConfigError, match="multiple of 2"):
            tune.arm_gemm_candidates(o, p, mode)
        return
    cands = tune.arm_gemm_candidates(o, p, mode)
    assert len(cands) == len(set(cands))
    p4 = -(-p // 4) * 4
    # the untuned tile first, as the kernel would run it (`conv.gemm_tile`: to divides O, tp clamped to P)
    assert cands[0] == ArmGemmKnobs(max(t for t in range(step, 5, step) if o % t == 0), min(16, p4))
    act = 2 if mode == "i8mm" else 4  # pixels per activation vector
    for kn in cands:
        assert o % kn.to == 0 and kn.to % step == 0 and kn.tp % 4 == 0 and kn.tp <= p4
        # accumulators + activation vectors + the mode's operands fit the 32 NEON registers
        assert kn.to * kn.tp // 4 + kn.tp // act + tune.OPERAND_REGS[mode] == tune.registers_used(kn, mode) <= 32


def test_candidates_register_budget_differs_by_mode():
    assert tune.registers_used(ArmGemmKnobs(4, 16), "sdot") == 21
    assert tune.registers_used(ArmGemmKnobs(4, 16), "neon") == 25
    sdot, neon = (set(tune.arm_gemm_candidates(96, 3136, m)) for m in ("sdot", "neon"))
    assert neon < sdot  # NEON's smull/saddlp temporaries leave fewer registers for the tile
    assert ArmGemmKnobs(6, 16) in sdot and ArmGemmKnobs(6, 16) not in neon  # 24 + 4 + 1 = 29 vs 33
    assert ArmGemmKnobs(8, 16) not in sdot  # 32 accumulators alone fill the register file
    with pytest.raises(ConfigError, match="mode"):
        tune.arm_gemm_candidates(8, 8, "i8mm-typo")


def test_tune_for_foreign_target_needs_a_remote(mbv2_graph):
    with pytest.raises(ConfigError, match="remote.*host:port.*arm_cpu"):
        lower_integer_graph(mbv2_graph, "arm_cpu", tune=True)
    with pytest.raises(ConfigError, match="remote.*tune=False"):
        lower_integer_graph(mbv2_graph, "arm_cpu", remote="127.0.0.1:9090")
    with pytest.raises(ConfigError, match="remote.*x86"):
        lower_integer_graph(mbv2_graph, "x86", tune=True, remote="127.0.0.1:9090")
    with pytest.raises(ConfigError, match="host:port"):
        lower_integer_graph(mbv2_graph, "arm_cpu", tune=True, remote="board")
    with pytest.raises(ConfigError, match="remote"):
        tune.tune_opcall(_pw_call(), remote=None)


def test_records_reused_and_board_outranks_emulation(db_root, monkeypatch):
    """A stored record is reused without timing; an emulated record is re-tuned on a board (and replaced), never
    the other way round."""
    call = _pw_call()
    wl = tune.gemm_workload(call.params, "sdot")
    timed = []

    def fake_tune(wl_, target, sess, **kw):
        timed.append(sess)
        tune._store(wl_, target, ArmGemmKnobs(2, 8), 5e-6, "board:9090", None)
        return ArmGemmKnobs(2, 8), 5e-6

    monkeypatch.setattr(tune, "tune_gemm", fake_tune)
    emulated = {"value": True}
    monkeypatch.setattr(tune, "_is_emulated", lambda sess: emulated["value"])
    monkeypatch.setattr(tune, "_session", _fake_session)

    tune._store(wl, SDOT, ArmGemmKnobs(1, 4), 900e-6, "127.0.0.1:1", "qemu-aarch64")
    rec = tuning.database(SDOT).get(wl)
    assert rec["emulated"] is True and rec["emulation"] == "qemu-aarch64" and rec["knobs"] == {"to": 1, "tp": 4}
    # emulated record, emulated remote: reused, nothing timed
    assert tune.tune_opcall(call, remote="qemu") == (ArmGemmKnobs(1, 4), pytest.approx(900e-6))
    assert timed == []
    # a board re-tunes it and its (not comparable) timing replaces the emulated record
    emulated["value"] = False
    assert tune.tune_opcall(call, remote="board")[0] == ArmGemmKnobs(2, 8)
    assert len(timed) == 1
    rec = tuning.database(SDOT).get(wl)
    assert rec["emulated"] is False and rec["knobs"] == {"to": 2, "tp": 8}
    # board record: reused without even connecting; an emulated timing does not replace it
    monkeypatch.setattr(tune, "_session", None)  # calling it would fail
    assert tune.tune_opcall(call, remote="board")[0] == ArmGemmKnobs(2, 8)
    tune._store(wl, SDOT, ArmGemmKnobs(1, 4), 1e-9, "127.0.0.1:1", "qemu-aarch64")
    assert tuning.database(SDOT).get(wl)["knobs"] == {"to": 2, "tp": 8} and len(timed) == 1
    # the strategy builds the recorded tile
    assert tune.lookup_knobs(wl, SDOT) == ArmGemmKnobs(2, 8)


class _fake_session:  # noqa: N801 - stands in for the `tune._session` context manager
    def __init__(self, remote):
        self.remote = remote

    def __enter__(self):
        return self.remote, self.remote

    def __exit__(self, *exc):
        return False


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("mode", ["sdot", "i8mm"])
def test_tune_gemm_through_qemu_rpc(db_root, qemu_rpc, mode):
    """Candidates cross-compiled, uploaded, checked bit-exact and timed on the aarch64 RPC server under qemu; the
    fastest is stored, tagged emulated."""
    target = SDOT if mode == "sdot" else I8MM
    wl = {"op": "conv_gemm_arm", "k": 24, "p": 49, "o": 16, "im2col": False, "mode": mode, "space": 1}
    cands = [ArmGemmKnobs(4, 16), ArmGemmKnobs(2, 8), ArmGemmKnobs(16, 4)]
    best, secs = tune.tune_gemm(wl, target, qemu_rpc.address, cands, number=2, repeat=2)
    assert best in cands and secs > 0
    rec = tuning.database(target).get(wl)
    assert rec["knobs"] == {"to": best.to, "tp": best.tp} and rec["emulated"] is True
    assert rec["remote"] == qemu_rpc.address and rec["latency_us"] == pytest.approx(secs * 1e6)


@needs_qemu
@pytest.mark.qemu
def test_wrong_kernel_is_never_recorded(db_root, qemu_rpc, monkeypatch):
    real = tune._problem

    def off_by_one(*a):
        args, ref, smin = real(*a)
        ref = ref.copy()
        ref[0, 0] ^= 1
        return args, ref, smin

    monkeypatch.setattr(tune, "_problem", off_by_one)
    wl = {"op": "conv_gemm_arm", "k": 8, "p": 8, "o": 4, "im2col": False, "mode": "neon", "space": 1}
    neon = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    with pytest.raises(LoweringError, match="not bit-exact on the remote"):
        tune.tune_gemm(wl, neon, qemu_rpc.address, [ArmGemmKnobs(4, 8)], number=1, repeat=1)
    assert tuning.database(neon).get(wl) is None


@needs_qemu
@pytest.mark.qemu
def test_tuned_arm_lowering_bit_exact_under_qemu(db_root, qemu_rpc, mbv2_graph, monkeypatch):
    """`lower(..., "arm_cpu", tune=True, remote=...)`: every GEMM conv is tuned on the remote, the lowering builds
    the recorded tiles, and the library is bit-exact against the reference executor under qemu."""
    used = []
    real = arm_strategy.gemm_conv_arm
    monkeypatch.setattr(arm_strategy, "gemm_conv_arm", lambda gc, mode, knobs: used.append(knobs) or real(gc, mode,
                                                                                                          knobs))
    low = lower_integer_graph(mbv2_graph, "arm_cpu", tune=True, remote=qemu_rpc.address, trials=2)
    records = tuning.database(low.spec.target()).records
    assert records and all(r["emulated"] for r in records.values())
    final = used[len(used) // 2:]  # tuning emits once to list the calls, then once more with the records
    assert final and {(k.to, k.tp) for k in final} <= {(r["knobs"]["to"], r["knobs"]["tp"]) for r in records.values()}
    for seed in range(2):
        x = make_input(mbv2_graph, seed)
        np.testing.assert_array_equal(low(x), G.reference(mbv2_graph, x))


@needs_qemu
@pytest.mark.qemu
def test_qemu_server_runs_libraries_but_never_passes_for_a_board(qemu_rpc, mbv2_graph, mbv2_arm):
    """The aarch64 server under qemu runs a lowered arm_cpu library through RPC bit-exact; `benchmark` labels its
    timing emulated, and a latency table refuses it as a board."""
    from qcompile.search.latency.remote import Boards

    low = mbv2_arm
    x = make_input(mbv2_graph, 5)
    np.testing.assert_array_equal(low.run_remote(x, qemu_rpc.address), G.reference(mbv2_graph, x))
    res = low.benchmark(repeat=2, remote=qemu_rpc.address, kernels=False)
    assert res.where == f"rpc {qemu_rpc.address} (qemu-aarch64: emulated, not device latency)"
    with pytest.raises(ConfigError, match="emulated timings are not latency"):
        Boards(remote=qemu_rpc.address, cpu_model="qemu").sessions()
