"""Persistent tuning database: location, reuse across lowerings, corruption handling, exactness of tuned kernels."""

from __future__ import annotations

import json
import logging
from pathlib import Path

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
                            "vquads": knobs.vquads, "slide": knobs.slide, "plane": knobs.plane}
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


# ---- the candidate space (issue 20, session 13): what the untuned rules choose between, default first -----------


@pytest.mark.parametrize("k, p, o, expect", [
    (960, 49, 160, [GemmKnobs(2, 56, True, 8)]),  # 7x7 project: the default's 3 x row fits O as 2 x 56 ymm
    (160, 49, 960, [GemmKnobs(3, 56, True, 8), GemmKnobs(2, 56, True, 8), GemmKnobs(12, 16)]),  # 7x7 expand
    (96, 196, 576, [GemmKnobs(8, 16), GemmKnobs(6, 16), GemmKnobs(6, 32)]),  # 14 px expand
    (16, 12544, 96, [GemmKnobs(6, 32), GemmKnobs(4, 48)]),  # K = 16 at 112 px
    (24, 196, 144, [GemmKnobs(6, 32), GemmKnobs(4, 48)]),  # small K where 32 does not divide P
    # session 13: a large project packs over pixel chunks; the alternatives are the other packings and tiles, and
    # (session 14) the default without the per-lane requantize shift
    (96, 3136, 24, [GemmKnobs(12, 16, pack_tiles=4), GemmKnobs(2, 64, pack_tiles=1, store64=True), GemmKnobs(12, 16)]),
])
def test_gemm_space_covers_the_untuned_rules_default_first(k, p, o, expect):
    """`gemm_space` starts with the untuned default (so tuning never makes a kernel slower), lists the tiles session 12
    measured close (8-lane ymm rows at 7x7, 8x16 / 6x16 / 6x32 at 14 px, 6x32 / 4x48 for small K) within the first
    eight (what `trials=8` times), every candidate is valid for the mode, and no two give the same kernel."""
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs, tile_intrinsic
    from qcompile.backends.tvm.schedules.x86.gemm_space import effective_tile, gemm_space

    space = gemm_space("vnni512", k, p, o)
    assert space[0] == default_knobs("vnni512", k, p, o)
    keys = [effective_tile("vnni512", k, p, o, kn) for kn in space]
    assert len(set(keys)) == len(keys) > 20
    first = {effective_tile("vnni512", k, p, o, kn) for kn in space[:8]}
    for kn in expect:
        assert effective_tile("vnni512", k, p, o, kn) in first, kn
    assert any(kn.lanes == 8 for kn in space) and any(kn.lanes == 0 for kn in space)
    for kn in space:
        _, lanes = tile_intrinsic("vnni512", kn)  # raises for a lane count the mode has no intrinsic for
        assert kn.tp % lanes == 0 and (not kn.store64 or kn.tp % 64 == 0)
    # the packing and store variants are in the grid, but after every plain tile
    grid_flags = [kn.pack_tiles != 0 or kn.store64 for kn in space[len(space) // 2:]]
    assert any(grid_flags) and grid_flags == sorted(grid_flags)
    # session 14: the per-lane requantize shift on and off are both candidates, not on 8-lane epilogues (no-op there)
    assert any(kn.vshift for kn in space) and any(not kn.vshift for kn in space)
    assert not any(kn.vshift and kn.lanes == 8 and not kn.store64 for kn in space)


@pytest.mark.parametrize("k,p,o", [(960, 49, 320), (64, 196, 384), (96, 3136, 24)], ids=lambda v: str(v))
def test_gemm_space_at_two_threads_holds_the_one_region_kernels(k, p, o):
    """At a 2-thread lowering (session 14) the space starts with `default_knobs(..., threads=2)`, lists each near
    tile in its one-region form `chunked` (`GemmKnobs.chunks=2`) within what `trials=8` times, before the plain tile
    on at most `CHUNK_MAX_P` pixels and after it above; the grid has the `chunks` axis; no two candidates give the
    same kernel, and a lowering without a thread count has no `chunks` candidate."""
    from qcompile.backends.tvm.schedules.x86.gemm import CHUNK_MAX_P, default_knobs
    from qcompile.backends.tvm.schedules.x86.gemm_space import chunked, effective_tile, gemm_axes, gemm_space
    from qcompile.backends.tvm.schedules.x86.workloads import SCHEDULE_SPACE

    assert SCHEDULE_SPACE["conv_gemm"] >= 4  # the space changed: records timed among the old candidates are stale
    space = gemm_space("vnni512", k, p, o, threads=2)
    assert space[0] == default_knobs("vnni512", k, p, o, 2)
    assert space[0].chunks == (2 if p <= CHUNK_MAX_P else 0)
    keys = [effective_tile("vnni512", k, p, o, kn) for kn in space]
    assert len(set(keys)) == len(keys)
    first = [effective_tile("vnni512", k, p, o, kn) for kn in space[:8]]
    near = GemmKnobs(8, 16)
    i_plain, i_one = first.index(effective_tile("vnni512", k, p, o, near)), \
        first.index(effective_tile("vnni512", k, p, o, chunked(near, 2)))
    assert (i_one < i_plain) == (p <= CHUNK_MAX_P)
    assert gemm_axes("vnni512", 2)["chunks"] == (0, 2) and gemm_axes("vnni512")["chunks"] == (0,)
    assert sum(kn.chunks == 2 for kn in space) > 20
    assert not any(kn.chunks for kn in gemm_space("vnni512", k, p, o))


@pytest.mark.parametrize("mode", ["vnni", "u8s8", "i16"])
def test_gemm_space_of_8_lane_modes_has_no_narrower_tiles(mode):
    """AVX2 / AVX-VNNI modes run 8 lanes already: no `lanes=8` duplicates, at most 16 accumulators (16 ymm)."""
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs
    from qcompile.backends.tvm.schedules.x86.gemm_space import gemm_space

    space = gemm_space(mode, 64, 196, 96)
    assert space[0] == default_knobs(mode, 64, 196) and len(space) > 10
    assert all(kn.lanes == 0 and kn.to * kn.tp // 8 <= 16 for kn in space[1:])
    assert not any(kn.store64 for kn in space)  # a "vnni512" epilogue only
    with pytest.raises(ConfigError, match="mode"):
        gemm_space("avx9", 64, 196, 96)


def test_gemm_axes_name_gemm_knobs_fields():
    """The grid's axes are `GemmKnobs` fields (one place lists them; a new knob adds its entry there)."""
    import dataclasses

    from qcompile.backends.tvm.schedules.x86.gemm_space import gemm_axes

    fields = {f.name for f in dataclasses.fields(GemmKnobs)}
    for mode in ("vnni512", "vnni", "u8s8", "i16"):
        axes = gemm_axes(mode)
        assert set(axes) <= fields and axes["lanes"][0] == 0
    assert gemm_axes("vnni512")["lanes"] == (0, 8) and gemm_axes("vnni")["lanes"] == (0,)


@pytest.mark.parametrize("wo, ho, stride, default", [
    (14, 14, 1, DwKnobs(16, False, 4, vquads=True)),
    (7, 7, 2, DwKnobs(8, False, 1)),
    (56, 56, 1, DwKnobs(16, True, 2, taps=4)),
])
def test_dw_candidates_cover_the_depthwise_rules_default_first(wo, ho, stride, default):
    """The depthwise space starts with the default and has, within the first five, the other kernels the untuned
    rules choose between (vertical quads, tap quads, the row kernel); one entry per distinct kernel at this Ho."""
    from qcompile.backends.tvm.schedules.x86.depthwise import _fit_rows, dw_candidates

    cands = dw_candidates(wo, True, vnni=True, kw=3, stride=stride, ho=ho)
    assert cands[0] == default
    kinds = {(kn.pairs, kn.taps, kn.vquads) for kn in cands[:5]}
    assert {(False, 2, True), (True, 4, False), (False, 2, False)} <= kinds
    plain = [(kn.vec, kn.pairs, kn.taps, _fit_rows(ho, kn.rows)) for kn in cands if not kn.vquads]
    assert len(set(plain)) == len(plain)
    assert not any(kn.vquads for kn in dw_candidates(wo, True, vnni=True, kw=3, stride=None, ho=ho))  # dilated
    assert not any(kn.taps == 4 or kn.vquads or kn.vec == 16 for kn in dw_candidates(wo, False, kw=3, stride=1))
    # with VBMI the sliding quads are the default and lead the space; still one entry per distinct kernel
    slid = dw_candidates(wo, True, vnni=True, kw=3, stride=stride, ho=ho, vbmi=True)
    assert slid[0].slide and set(cands) <= set(slid) and sum(kn.slide for kn in slid) > 1
    keys = [(kn.vec, kn.pairs, kn.taps, kn.slide, kn.plane, _fit_rows(ho, kn.rows)) for kn in slid if not kn.vquads]
    assert len(set(keys)) == len(keys)
    # the sliding quads' other padded plane (whole, or per channel group in one parallel region): the default's twin
    # second
    other = "whole" if slid[0].plane == "channel" else "channel"
    assert slid[1] == DwKnobs(slid[0].vec, False, slid[0].rows, slide=True, plane=other)


def _spy_threads(monkeypatch):
    """Record TVM's pool size at every timed evaluation of `tuning.pick_fastest`."""
    seen = []
    real = tuning._evaluator
    num = tvm.get_global_func("runtime.NumThreads")

    def spy(lib, number):
        ev = real(lib, number)

        def timed(*args):
            seen.append(int(num()))
            return ev(*args)
        return timed

    monkeypatch.setattr(tuning, "_evaluator", spy)
    return seen


def _target_with_cores(n):
    return tvm.target.Target(dict(AVX2.export(), **{"num-cores": n}))


def test_tuning_times_at_the_targets_thread_count(cache, monkeypatch, runs_avx2):
    """The tuner times at the lowering's thread count (the target's `num-cores`) and gives the pool back as it was;
    asked for more threads than TVM's pool has, it says so."""
    num = tvm.get_global_func("runtime.NumThreads")
    pool = int(num())
    seen = _spy_threads(monkeypatch)
    wl = gemm_workload(_pointwise_call(16, 8, 16).params) | {"mode": "i16"}
    tune.tune_gemm(wl, _target_with_cores(1), [GemmKnobs(4, 8), GemmKnobs(8, 16)], number=2, repeat=1)
    assert seen and set(seen) == {1} and int(num()) == pool
    rec = tuning.database(_target_with_cores(1)).get(wl)  # the record says how it was timed
    assert rec["threads"] == 1 and rec["candidates"] == 2 and rec["first_us"] >= rec["latency_us"] > 0
    seen.clear()
    with pytest.warns(RuntimeWarning, match="TVM_NUM_THREADS"):
        tune.tune_gemm(wl, _target_with_cores(pool + 1), [GemmKnobs(4, 8)], number=2, repeat=1)
    assert set(seen) == {pool} and int(num()) == pool


def test_tuning_at_two_threads_times_at_two_threads(tmp_path, runs_avx2):
    """In a process whose pool has 2 workers (TVM_NUM_THREADS=2), a 2-core target is timed at 2 threads and a 1-core
    target at 1, GEMM and depthwise alike (the test suite itself runs with one TVM thread)."""
    import os
    import subprocess
    import sys

    code = """
import json, pytest, tvm
from tests.backends.tvm import test_tuning as T
from qcompile.backends.tvm.schedules.x86 import depthwise_workload, gemm_workload, tune
from qcompile.backends.tvm.schedules.x86.gemm import GemmKnobs
mp = pytest.MonkeyPatch()
seen = T._spy_threads(mp)
out = {}
params = T._pointwise_call(16, 8, 16).params
dwp = dict(params, w_shape=(16, 1, 3, 3), groups=16, padding=(1, 1))
for n in (2, 1):
    tgt = T._target_with_cores(n)
    tune.tune_gemm(gemm_workload(params) | {"mode": "i16"}, tgt, [GemmKnobs(4, 8), GemmKnobs(8, 16)], number=2,
                   repeat=1)
    tune.tune_depthwise(depthwise_workload(dwp), tgt, number=2, repeat=1, trials=2)
    out[n] = sorted(set(seen))
    seen.clear()
print(json.dumps(out))
"""
    # TVM_THREAD_POOL_SPIN_COUNT=0: pool workers sleep between tasks instead of polling (300000 times by default);
    # beside the other test worker on 2 cores a polling worker holds a core its peer needs, and this test took
    # 205 s on a loaded 2-core Zen 3. The count of threads timed, which is what is checked, does not depend on it.
    env = dict(os.environ, TVM_NUM_THREADS="2", TVM_THREAD_POOL_SPIN_COUNT="0", QCOMPILE_CACHE=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                         cwd=str(Path(__file__).resolve().parents[3]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"2": [2], "1": [1]}


def test_warm_database_lowering_is_exact_and_not_retuned(cache, monkeypatch, caplog):
    """On a tiny network (3x3 stem, pointwise and depthwise convs): a tuned lowering whose records are *not* the
    defaults (the tuner made to keep its last candidate) is bit-exact against the untuned lowering and the reference
    executor; a second `tune=True` lowering against the warm database times nothing and builds the same kernels."""
    from qcompile.backends.tvm import lower_integer_graph
    from tests.backends.tvm import tvm_graphs as G

    ig = G.mbv2_like(seed=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 17, 15)).astype(np.float32)
    untuned = lower_integer_graph(ig, "x86", num_threads=1)  # the database is still empty
    picked = []

    def last(libs, *a, **kw):  # no timing: keep the last candidate, a non-default kernel
        picked.append(libs[-1][0])
        return libs[-1][0], 1e-6

    monkeypatch.setattr(tuning, "pick_fastest", last)
    with caplog.at_level(logging.DEBUG, logger="qcompile.backends.tvm.schedules.x86"):
        tuned = lower_integer_graph(ig, "x86", num_threads=1, tune=True, trials=3)
    assert len(picked) >= 3 and any(isinstance(kn, DwKnobs) for kn in picked)
    gemm = [kn for kn in picked if isinstance(kn, GemmKnobs)]
    assert gemm and all(f"tile {kn}" in caplog.text for kn in gemm)  # built with the stored, non-default tiles
    recs = tuning.database(tvm.target.Target(untuned.spec.tvm_target)).records
    assert len(recs) == len(picked)
    ref = G.reference(ig, x)
    np.testing.assert_array_equal(untuned(x), ref)
    np.testing.assert_array_equal(tuned(x), ref)

    def never(*a, **kw):
        raise AssertionError("a warm database must not be re-tuned")

    monkeypatch.setattr(tune, "tune_gemm", never)
    monkeypatch.setattr(tune, "tune_depthwise", never)
    tuning._DB_CACHE.clear()  # a later process: the records come from disk
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="qcompile.backends.tvm.schedules.x86"):
        again = lower_integer_graph(ig, "x86", num_threads=1, tune=True, trials=3)
    assert all(f"tile {kn}" in caplog.text for kn in gemm)
    np.testing.assert_array_equal(again(x), ref)
    assert again.meta["kernels"] == tuned.meta["kernels"]


def _fake_evaluators(monkeypatch, times):
    """`tuning._evaluator` replaced: lib i's evaluations return `times[i](call number)` seconds."""
    calls = {}

    class Res:
        def __init__(self, t):
            self.results = [t]

    def fake(lib, number):
        def ev(*args):
            calls[lib] = calls.get(lib, 0) + 1
            return Res(times[lib](calls[lib]))
        return ev

    monkeypatch.setattr(tuning, "_evaluator", fake)
    return calls


def test_pick_fastest_keeps_the_default_unless_clearly_faster(monkeypatch):
    """The first candidate (the untuned default) is kept unless another's minimum is `KEEP_FIRST_MARGIN` lower, and it
    is re-timed in the final rounds even after a burst of load spoilt all its first rounds."""
    libs = [("default", 0), ("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    stats = {}
    _fake_evaluators(monkeypatch, [lambda n: 10.0, lambda n: 9.9, lambda n: 12.0, lambda n: 13.0, lambda n: 14.0])
    assert tuning.pick_fastest(libs, [], 2, 3, {}, stats=stats) == ("default", 10.0)  # 1 % faster: noise
    assert stats == {"first_us": 10.0e6, "candidates": 5, "threads": stats["threads"]}
    _fake_evaluators(monkeypatch, [lambda n: 10.0, lambda n: 9.0, lambda n: 12.0, lambda n: 13.0, lambda n: 14.0])
    assert tuning.pick_fastest(libs, [], 2, 3, {}) == ("a", 9.0)
    # the default's first three rounds are slow (load), then its real 10.0; the others are 11..14
    calls = _fake_evaluators(monkeypatch, [lambda n: 1000.0 if n <= 3 else 10.0, lambda n: 11.0, lambda n: 12.0,
                                           lambda n: 13.0, lambda n: 14.0])
    assert tuning.pick_fastest(libs, [], 2, 3, {}) == ("default", 10.0)
    assert calls[0] == 3 + tuning.FINAL_ROUNDS and calls[4] == 3  # finalists: the default and the three fastest
