"""Persistent tuning database: location, reuse across lowerings, corruption handling, exactness of tuned kernels."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from qcompile.backends.tvm import tuning  # noqa: E402
from qcompile.backends.tvm.schedules.x86 import depthwise_workload, gemm_workload, tune  # noqa: E402
from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs  # noqa: E402
from qcompile.backends.tvm.schedules.x86.gemm import GemmKnobs  # noqa: E402
from qcompile.backends.tvm.strategy import OpCall, select_strategy  # noqa: E402
from qcompile.errors import ConfigError  # noqa: E402
from qcompile.ops import reference as R  # noqa: E402
from tests import kernel_isa as isa  # noqa: E402

AVX2 = isa.target("avx2")  # the host's mcpu limited to AVX2 (a generic x86-64-v3 where it has no AVX2)


@pytest.fixture
def runs_avx2():
    """Tuning times kernels: only where this CPU executes the AVX2 family."""
    if not isa.should_execute("avx2"):
        pytest.skip("this CPU cannot execute AVX2 kernels")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))
    tuning._DB_CACHE.clear()
    yield tmp_path / "tuning"
    tuning._DB_CACHE.clear()


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("QCOMPILE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.cache_dir() == tmp_path / "home" / ".cache" / "qcompile" / "tuning"
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path / "elsewhere"))
    assert tuning.cache_dir() == tmp_path / "elsewhere" / "tuning"


def test_target_key_separates_targets():
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    vnni = isa.target("avx512-vnni")  # never executed: only its key
    keys = {tuning.target_key(t) for t in (AVX2, arm, vnni)}
    assert len(keys) == 3
    assert tuning.target_key(AVX2) == tuning.target_key(tvm.target.Target(dict(AVX2.export())))


def test_db_round_trip_keeps_the_best(cache):
    db = tuning.TuningDB(AVX2)
    wl = {"op": "conv_gemm", "k": 16, "p": 64, "o": 8, "im2col": False, "mode": "i16"}
    db.put(wl, {"to": 4, "tp": 16, "p_outer": True}, 10.0)
    db.put(wl, {"to": 8, "tp": 8, "p_outer": False}, 12.0)  # slower: ignored
    again = tuning.TuningDB(AVX2)
    assert again.get(wl)["knobs"] == {"to": 4, "tp": 16, "p_outer": True}
    assert again.get(wl)["latency_us"] == 10.0
    assert tune.lookup_knobs(wl, AVX2) == GemmKnobs(4, 16, True)
    assert tune.lookup_knobs(dict(wl, o=16), AVX2) is None


@pytest.mark.parametrize("damage", ["garbage", "checksum", "schema"])
def test_corrupt_db_is_ignored_with_a_warning(cache, damage):
    db = tuning.TuningDB(AVX2)
    wl = {"op": "conv_gemm", "k": 16, "p": 64, "o": 8, "im2col": False, "mode": "i16"}
    db.put(wl, {"to": 4, "tp": 16, "p_outer": True}, 10.0)
    path = db.path
    if damage == "garbage":
        path.write_bytes(b"\x00{not json")
    else:
        data = json.loads(path.read_text())
        if damage == "checksum":
            next(iter(data["records"].values()))["knobs"]["to"] = 3  # tampered record
        else:
            data["schema"] = 99
        path.write_text(json.dumps(data))
    tuning._DB_CACHE.clear()
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert tune.lookup_knobs(wl, AVX2) is None
    assert path.with_suffix(".corrupt").exists() and not path.exists()
    tuning._DB_CACHE.clear()
    assert tune.lookup_knobs(wl, AVX2) is None  # and it stays a clean, empty database


def _pointwise_call(c, hw, o):
    params = {
        "x_shape": (1, c, hw, hw),
        "w_shape": (o, c, 1, 1),
        "out_shape": (1, o, hw, hw),
        "stride": (1, 1),
        "padding": (0, 0),
        "dilation": (1, 1),
        "groups": 1,
        "pad_value": 0,
        "lo": 0,
        "hi": 255,
        "node": "pw",
    }
    return OpCall("conv2d_requant", params, AVX2)


def test_tuned_record_is_used_by_later_lowerings_and_stays_exact(cache, caplog, runs_avx2):
    c, hw, o = 24, 8, 16
    call = _pointwise_call(c, hw, o)
    wl = gemm_workload(call.params) | {"mode": "i16"}
    cands = [GemmKnobs(2, 8, False), GemmKnobs(4, 16, True)]
    best, secs = tune.tune_gemm(wl, AVX2, cands, number=3, repeat=2)
    assert best in cands and secs > 0
    assert tune.lookup_knobs(wl, AVX2) == best

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, c, hw, hw)).astype(np.uint8)
    w = rng.integers(-128, 128, (o, c, 1, 1)).astype(np.int8)  # 8-bit x 8-bit: the i16 workload
    bias = rng.integers(-3000, 3000, o).astype(np.int32) + (128 << 10)
    mult = np.full(o, 1 << 26, np.int32)
    shift = np.full(o, 36, np.int32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    strat = select_strategy(call)
    with caplog.at_level(logging.DEBUG, logger="qcompile.backends.tvm.schedules.x86"), bb.function("main", [xv]):
        with bb.dataflow():
            y = strat.emit(bb, call, [xv, *(relax.const(a) for a in (w, bias, mult, shift))])
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    assert f"tile {best}" in caplog.text  # the emitted kernel was built with the tuned tile
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=AVX2), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    acc = R.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias))
    ref = R.requantize(acc, torch.from_numpy(mult), torch.from_numpy(shift), lo=0, hi=255).numpy()
    assert len(np.unique(ref)) > 10
    np.testing.assert_array_equal(got, ref)


@pytest.mark.slow
def test_meta_schedule_tuning_persists(cache, runs_avx2):
    """Meta-schedule (generic kernels) writes its JSONDatabase under the cache and reuses it."""
    from tvm import te

    a = te.placeholder((32, 32), "int32", name="a")
    b = te.compute((32, 32), lambda i, j: a[i, j] * 3 + 1, name="b")
    func = te.create_prim_func([a, b])
    lib = tuning.ms_tune_primfunc(func, AVX2, max_trials=2)
    x = np.arange(32 * 32, dtype=np.int32).reshape(32, 32)
    out = tvm.runtime.tensor(np.zeros((32, 32), np.int32))
    lib(tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), x * 3 + 1)
    recs = (cache / f"ms-{tuning.target_key(AVX2)}" / "database_tuning_record.json").read_text().splitlines()
    assert len(recs) >= 1 and all(json.loads(r) for r in recs)
    lib2 = tuning.ms_apply(func, AVX2)
    out2 = tvm.runtime.tensor(np.zeros((32, 32), np.int32))
    lib2(tvm.runtime.tensor(x), out2)
    np.testing.assert_array_equal(out2.numpy(), x * 3 + 1)


def test_tune_opcall_tunes_once_then_reuses(cache, monkeypatch, runs_avx2):
    call = _pointwise_call(16, 8, 16)
    calls = []
    real = tune.tune_gemm

    def counting(wl, target, candidates=None, **kw):
        calls.append(wl)
        return real(wl, target, [GemmKnobs(4, 8), GemmKnobs(8, 16)], number=2, repeat=1)

    monkeypatch.setattr(tune, "tune_gemm", counting)
    w = np.full((16, 16, 1, 1), 3, np.int8)  # small weights: the u8s8 intrinsic is exact for them
    knobs, _ = tune.tune_opcall(call, w)
    assert calls == [gemm_workload(call.params) | {"mode": "u8s8"}]
    tuning._DB_CACHE.clear()  # a later process: served from disk, not re-timed
    again, _ = tune.tune_opcall(call, w)
    assert again == knobs and len(calls) == 1
    linear = OpCall("linear_requant", {"x_shape": (1, 16), "w_shape": (8, 16), "out_shape": (1, 8)}, AVX2)
    assert tune.tune_opcall(linear) is None  # nothing to tune


def test_depthwise_tuning_picks_a_schedule_and_is_reused(cache, runs_avx2):
    """Depthwise convs are tuned too (row or tap-pair kernel, vector width); the record is reused."""
    params = dict(_pointwise_call(16, 12, 16).params, w_shape=(16, 1, 3, 3), groups=16, padding=(1, 1))
    dw = OpCall("conv2d_requant", params, AVX2)
    knobs, secs = tune.tune_opcall(dw)
    assert isinstance(knobs, DwKnobs) and knobs.vec in (4, 8) and secs > 0  # AVX2: no 16-lane candidate
    rec = tuning.TuningDB(AVX2).get(depthwise_workload(params))
    assert rec["knobs"] == {"vec": knobs.vec, "pairs": knobs.pairs, "rows": knobs.rows, "taps": knobs.taps,
                            "vquads": knobs.vquads, "slide": knobs.slide}
    tuning._DB_CACHE.clear()
    assert tune.lookup_dw_knobs(depthwise_workload(params), AVX2) == knobs
    db = tuning.database(AVX2)
    db.records[tuning.workload_key(depthwise_workload(params))] = {"knobs": {"vec": 3}, "latency_us": 1.0}
    assert tune.lookup_dw_knobs(depthwise_workload(params), AVX2) is None  # a bad record is ignored


@pytest.mark.parametrize("family, c, hw, k, stride", [
    ("avx512-vnni", 96, 4, 7, 1),  # 4x4 map: the channel-vector kernel (16 lanes)
    ("avx512-vnni", 48, 8, 3, 2),  # 8x8 -> 4x4 at stride 2: channel-vector too
    ("avx2", 32, 2, 7, 1),  # no VNNI: the small-input scalar kernel
])
def test_depthwise_without_knobs_is_not_tuned(cache, monkeypatch, family, c, hw, k, stride):
    """A depthwise layer that takes the channel-vector or small-input kernel has no knobs to tune: `tune_opcall`
    times nothing and stores nothing (a tuning space of one); the same geometry on a larger map still tunes."""
    from qcompile.backends.tvm.schedules.x86.dw_choice import depthwise_knobs_used

    target = isa.target(family)
    ho = (hw + 2 * (k // 2) - k) // stride + 1
    params = dict(_pointwise_call(c, hw, c).params, w_shape=(c, 1, k, k), groups=c, padding=(k // 2, k // 2),
                  stride=(stride, stride), out_shape=(1, c, ho, ho))
    call = OpCall("conv2d_requant", params, target)
    timed = []
    monkeypatch.setattr(tune, "tune_depthwise", lambda wl, *a, **kw: timed.append(wl) or (DwKnobs(), 1e-6))
    assert not depthwise_knobs_used(call)
    assert tune.tune_opcall(call) is None and timed == []
    assert not tuning.database(target).records
    big = dict(params, x_shape=(1, c, 4 * hw, 4 * hw), out_shape=(1, c, 4 * ho, 4 * ho))
    big_call = OpCall("conv2d_requant", big, target)
    assert depthwise_knobs_used(big_call)
    assert tune.tune_opcall(big_call) is not None and timed == [depthwise_workload(big)]


def test_trials_caps_the_schedules_timed_and_keeps_the_default(cache, monkeypatch, runs_avx2):
    """`trials=N` times the N most promising candidates, the untuned default first; bad values are refused."""
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs

    timed = []
    real = tuning.pick_fastest

    def spy(libs, *a, **kw):
        timed.extend(kn for kn, _ in libs)
        return real(libs, *a, **kw)

    monkeypatch.setattr(tuning, "pick_fastest", spy)
    wl = gemm_workload(_pointwise_call(16, 8, 16).params) | {"mode": "i16"}
    knobs, _ = tune.tune_gemm(wl, AVX2, number=2, repeat=1, trials=2)
    assert len(timed) == 2 and timed[0] == default_knobs("i16") and knobs in timed
    with pytest.raises(ConfigError, match="trials"):
        from qcompile.backends.tvm import lower_integer_graph

        lower_integer_graph(None, "x86", tune=True, trials=0)


def test_records_of_an_older_schedule_space_are_not_reused(cache):
    """A record timed among an older kernel's candidates (its key lacks the current `space`) is ignored, so a newer
    default is not overridden by a stale tile; the current key is found."""
    from qcompile.backends.tvm.schedules.x86 import SCHEDULE_SPACE

    params = _pointwise_call(16, 8, 16).params
    wl = gemm_workload(params) | {"mode": "i16"}
    assert wl["space"] == SCHEDULE_SPACE["conv_gemm"]
    old = {k: v for k, v in wl.items() if k != "space"}  # how session-1/2 databases keyed it
    tuning.database(AVX2).put(old, {"to": 16, "tp": 16, "p_outer": True}, 1.0)
    assert tune.lookup_knobs(wl, AVX2) is None
    tuning.database(AVX2).put(wl, {"to": 8, "tp": 16, "p_outer": True}, 2.0)
    assert tune.lookup_knobs(wl, AVX2) == GemmKnobs(8, 16)
    dw = depthwise_workload(dict(params, w_shape=(16, 1, 3, 3), groups=16, padding=(1, 1)))
    assert dw["space"] == SCHEDULE_SPACE["conv_dw"]
