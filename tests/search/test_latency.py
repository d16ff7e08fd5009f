"""kernel_workloads against real lowerings, LatencyTable timing/fit/persistence/refusals, kernel predictor.

Tiny space (2 blocks per stage, 16x16 input): three untuned x86 lowerings shared by the session.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time

import numpy as np
import pytest
import torch

import qcompile as qc
import qcompile.search as qs
from qcompile.errors import ConfigError
from qcompile.search.latency.libraries import emitter_key
from qcompile.search.latency.predictor import KernelPredictor
from qcompile.search.latency.table import covering_configs, machine_keys

pytestmark = pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="x86 host kernels")


def _tiny():
    return qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.25, resolutions=(16,), depths=(2,), kernels=(3, 5),
                                  expands=(3, 6))


def _lower(space, qnet, cfg, seed):
    """A real lowering: trained-like weights differ from kernel_workloads' skeleton (other seed), other data."""
    sub = qc.extract(qnet, cfg)
    g = torch.Generator().manual_seed(seed)
    qc.calibrate(sub, [torch.rand(4, 3, cfg.resolution, cfg.resolution, generator=g) * 4 - 2 for _ in range(2)])
    return qc.lower(sub, "x86", num_threads=1)


@pytest.fixture(scope="session")
def lowered():
    """(space, [(cfg, Lowered)]): the covering config of 1 and two random mixed-bit subnets."""
    space = _tiny()
    torch.manual_seed(123)
    qnet = qc.quantize(qc.trace(space.build_supernet()))
    cfgs = [covering_configs(space, 1, seed=0)[0]] + [space.sample(seed=s, bits=(2, 3, 4)) for s in (7, 8)]
    return space, [(c, _lower(space, qnet, c, i)) for i, c in enumerate(cfgs)]


def test_kernel_workloads_equal_emitted(lowered):
    space, pairs = lowered
    for cfg, low in pairs:
        emitted = [k["workload"] for k in low.meta["kernels"]]
        planned = qs.kernel_workloads(space, cfg, target="x86", memo=False)
        assert planned == emitted
        assert qs.kernel_workloads(space, cfg, target="x86") == emitted  # whole plan, windows or memo
        assert len(planned) == len(low.meta["kernels"]) > 20
        assert all("op" in w and "groups" in w for w in planned)
        convs = [w for w in planned if w["op"] == "conv2d_requant"]
        assert any(w["groups"] > 1 and w["kind"] == "depthwise" for w in convs)
        assert any(w["groups"] == 1 and w["kind"] == "pointwise" for w in convs)


def test_emitted_kernels_equal_lowered(lowered):
    """`emitted_kernels` (emission without the TVM build, what the slow sweep compares against) writes exactly
    the `meta["kernels"]` of a real lowering: PrimFunc names, strategies and workloads."""
    from qcompile.backends.tvm.lowered import emitted_kernels

    for _cfg, low in lowered[1][:2]:
        assert emitted_kernels(low.program, "x86", num_threads=1) == low.meta["kernels"]


def test_kernel_workloads_block_memo(lowered):
    """A config made of blocks already seen is answered from the per-block memo, equal to the slow path."""
    space, pairs = lowered
    a, b = pairs[1][0], pairs[2][0]
    for cfg in (a, b):
        qs.kernel_workloads(space, cfg)
    mixed = a.__class__(resolution=a.resolution, depths=a.depths,
                        kernels=tuple(x if i % 2 else y for i, (x, y) in enumerate(zip(a.kernels, b.kernels))),
                        expands=tuple(x if i % 2 else y for i, (x, y) in enumerate(zip(a.expands, b.expands))),
                        widths=a.widths, channels=a.channels, policy=b.policy)
    import qcompile.search.latency.workloads as qw

    planned: list = []
    real_plan = qw.plan_config
    try:  # the slow path (a whole-config emission) must not run: a spy, not a clock (the machine may be shared)
        qw.plan_config = lambda *a, **k: planned.append(a) or real_plan(*a, **k)
        fast = qs.kernel_workloads(space, mixed)
    finally:
        qw.plan_config = real_plan
    assert planned == [], "a config of seen blocks was planned whole, not answered from the memo"
    assert fast == qs.kernel_workloads(space, mixed, memo=False)


@pytest.fixture(scope="session")
def table(lowered):
    space, pairs = lowered
    t = qs.LatencyTable(space, machine_keys("x86", 1))
    for i, (cfg, low) in enumerate(pairs):
        t.add_lowered(cfg, low, role="cover" if i == 0 else "fit", network_repeat=60, kernel_window_us=50,
                      kernel_repeat=5)
    t.fit()
    return t


def test_table_samples_and_sums(table, lowered):
    space, pairs = lowered
    for v in table.kernels.values():
        assert len(v["samples_ms"]) == 5 and v["median_ms"] == statistics.median(v["samples_ms"]) > 0
    cfg, low = pairs[1]
    keys = [json.dumps(k["workload"], sort_keys=True, separators=(",", ":")) for k in low.meta["kernels"]]
    expect = sum(table.kernels[k]["median_ms"] for k in keys)  # every emitted kernel was timed (or its twin)
    s, n = table.kernel_sum(cfg)
    assert n == len(keys) and math.isclose(s, expect, rel_tol=1e-12)
    for net in table.networks:
        assert len(net["samples_ms"]) == 60 and net["median_ms"] > 0


def test_table_predicts_fit_networks(table, lowered):
    _, pairs = lowered
    f = table.fit_params
    assert f["scale"] > 0 and f["networks"] == 3
    for cfg, _ in pairs:
        measured = next(n["median_ms"] for n in table.networks if n["config"] == cfg.to_json())
        pred = table.predict(cfg)
        assert abs(pred - measured) / measured < 0.35, (pred, measured)
    per_call = []
    for _ in range(5):  # CPU time of this thread, the least disturbed of 5 batches: the machine may be shared
        t0 = time.thread_time()
        for _ in range(20):
            table.predict(pairs[1][0])
        per_call.append((time.thread_time() - t0) / 20)
    assert min(per_call) < 1e-3, f"predict took {min(per_call) * 1e3:.2f} ms of CPU"


def test_table_save_load_and_refusals(table, lowered, tmp_path):
    space, pairs = lowered
    path = table.save(tmp_path / "t.json")
    loaded = qs.LatencyTable.load(path)
    for cfg, _ in pairs:
        assert loaded.predict(cfg) == pytest.approx(table.predict(cfg), rel=1e-12)
    d = json.loads(path.read_text())
    d["keys"]["cpu_model"] = "Some Other CPU"
    (tmp_path / "other.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="cpu_model"):
        qs.LatencyTable.load(tmp_path / "other.json")
    d = json.loads(path.read_text())  # same CPU and version, kernels of another emitter (sources changed)
    assert d["keys"]["emitter"] == emitter_key("x86")["key"]
    d["keys"]["emitter"] = "0123456789abcdef"
    (tmp_path / "stale.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="emitter"):
        qs.LatencyTable.load(tmp_path / "stale.json")
    assert qs.LatencyTable.load(tmp_path / "stale.json", check=False).predict(pairs[0][0]) == pytest.approx(
        table.predict(pairs[0][0]), rel=1e-12)
    other = qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.25, resolutions=(16,), depths=(3,))
    with pytest.raises(ConfigError):
        table.predict(other.sample(seed=0, bits=(2, 3, 4)))
    with pytest.raises(ConfigError, match="space"):
        qs.LatencyTable.build(other, "x86", 1, table=loaded, max_cover=1, n_fit=0, progress=False)
    with pytest.raises(ConfigError, match="num_threads"):
        qs.LatencyTable.build(space, "x86", 2, table=loaded, max_cover=1, n_fit=0, progress=False)


def test_second_build_is_lookup(table, lowered, monkeypatch):
    """A build whose plan the table already holds lowers and times nothing (spies on both phases, no clock)."""
    space, _ = lowered
    calls: list[str] = []
    for name in ("_lower_saved", "_time_rounds", "_time_on_boards", "add_lowered"):
        monkeypatch.setattr(qs.LatencyTable, name, lambda *a, _n=name, **k: calls.append(_n))
    again = qs.LatencyTable.build(space, "x86", 1, table=table, max_cover=1, n_fit=0, progress=False)
    assert calls == []
    assert len(again.networks) == 3


def test_latency_objective(table, lowered):
    _, pairs = lowered
    obj = qs.objectives.latency(table)
    cfgs = [c for c, _ in pairs]
    assert obj.direction == "min" and obj.unit == "ms"
    np.testing.assert_allclose(obj(cfgs), [table.predict(c) for c in cfgs])
    with pytest.raises(ConfigError, match="LatencyTable"):
        qs.objectives.latency({"not": "a table"})


def test_kernel_predictor_held_out():
    """Forest per kernel type recovers a synthetic latency law (ms = 1e-6 * FLOPs + 1e-3) within 25 % held out."""
    rng = np.random.default_rng(0)
    ws, ms = [], []
    for _ in range(160):
        c, o, h = int(rng.choice([8, 16, 24, 32, 48])), int(rng.choice([8, 16, 32, 64])), int(rng.choice([4, 8, 16]))
        w = {"op": "conv2d_requant", "strategy": "x86_conv_requant", "kind": "pointwise", "mode": "vnni512",
             "shapes": [[1, c, h, h], [o, c, 1, 1], [o], [o], [o], [o]], "out_shape": [1, o, h, h], "groups": 1,
             "stride": [1, 1]}
        ws.append(w)
        ms.append(1e-6 * c * o * h * h + 1e-3)
    p = KernelPredictor(seed=0).fit(ws[:120], ms[:120])
    err = [abs(p.predict(w) - m) / m for w, m in zip(ws[120:], ms[120:])]
    assert float(np.median(err)) < 0.10 and max(err) < 0.25


def test_cli_latency_table_show(table, tmp_path, capsys):
    from qcompile.cli import main

    path = table.save(tmp_path / "t.json")
    assert main(["latency-table", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(table.kernels)} timed kernel workloads, 3 timed networks" in out and "usable on this machine" in out
    assert main(["latency-table", "show", str(tmp_path / "missing.json")]) == 2
    assert "latency table path" in capsys.readouterr().err


@pytest.fixture(scope="module")
def rpc_tracker():
    """A TVM RPC tracker on 127.0.0.1 with two servers registered under one key (two "boards" of this host)."""
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9300, port_end=9400, silent=True)
    key = f"qcompile-test-{os.getpid()}"  # xdist workers each run their own tracker
    servers = [rpc.Server(host="127.0.0.1", port=9400, port_end=9600, key=key, silent=True,
                          tracker_addr=("127.0.0.1", tracker.port)) for _ in range(2)]
    client = rpc.connect_tracker("127.0.0.1", tracker.port)
    deadline = time.monotonic() + 300  # servers register once their worker process has imported TVM
    while client.summary().get("queue_info", {}).get(key, {}).get("free", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    yield tracker, key
    for s in servers:
        s.terminate()
    tracker.terminate()


def test_table_timed_through_rpc(lowered, rpc_tracker, tmp_path):
    """Kernels and network timed on "boards" behind a local RPC server / tracker: the same kernels as a local
    table, positive samples, keys naming the recorded CPU and where it was timed; such a table is checked against
    its recorded CPU, not this host's."""
    from qcompile.search.latency.remote import Boards

    space, pairs = lowered
    tracker, key = rpc_tracker
    boards = Boards(tracker=f"127.0.0.1:{tracker.port}", key=key, cpu_model="test board")
    sessions = boards.sessions()
    assert len(sessions) == 2
    keys = machine_keys("x86", 1, boards)
    assert keys["cpu_model"] == "test board" and keys["remote"] == f"tracker 127.0.0.1:{tracker.port} key {key}"
    t = qs.LatencyTable(space, keys)
    cfg, low = pairs[1]
    t.add_lowered(cfg, low, role="fit", network_repeat=10, kernel_repeat=3, session=sessions[1], where=boards.where)
    emitted = {json.dumps(k["workload"], sort_keys=True, separators=(",", ":")) for k in low.meta["kernels"]
               if k["primfuncs"]}
    assert set(t.kernels) == emitted
    assert all(len(v["samples_ms"]) == 3 and v["median_ms"] > 0 for v in t.kernels.values())
    assert len(t.networks[0]["samples_ms"]) == 10 and t.networks[0]["median_ms"] > 0
    path = t.save(tmp_path / "remote.json")
    loaded = qs.LatencyTable.load(path)  # checked against the recorded board, not this host's CPU
    assert loaded.keys["cpu_model"] == "test board"
    assert loaded.kernel_sum(cfg) == pytest.approx(t.kernel_sum(cfg), rel=1e-12)
    with pytest.raises(ConfigError, match="cpu_model"):
        loaded.check(boards=Boards(remote="127.0.0.1:1", cpu_model="another board"))


def test_rpc_and_arm_refusals():
    """arm_cpu tables need boards (qemu is emulation); boards need an address, a key with a tracker, a CPU model;
    an unreachable server is one LoweringError naming it."""
    from qcompile.errors import LoweringError
    from qcompile.search.latency.remote import Boards

    with pytest.raises(ConfigError, match="qemu"):
        machine_keys("arm_cpu", 1)
    arm = machine_keys("arm_cpu", 1, Boards(remote="127.0.0.1:1", cpu_model="ARM Cortex-A72"))
    assert arm["target"] == "arm_cpu" and arm["cpu_model"] == "ARM Cortex-A72" and arm["remote"] == "rpc 127.0.0.1:1"
    with pytest.raises(ConfigError, match="cpu_model"):
        Boards(remote="127.0.0.1:9090")
    with pytest.raises(ConfigError, match="key"):
        Boards(tracker="127.0.0.1:9190", cpu_model="x")
    with pytest.raises(ConfigError, match="exactly one"):
        Boards(remote="127.0.0.1:9090", tracker="127.0.0.1:9190", key="k", cpu_model="x")
    with pytest.raises(ConfigError, match="host:port"):
        Boards(remote="nohost", cpu_model="x")
    with pytest.raises(LoweringError, match="127.0.0.1:1"):
        qs.LatencyTable.build(_tiny(), "arm_cpu", 1, remote="127.0.0.1:1", cpu_model="ARM Cortex-A72",
                              max_cover=1, n_fit=0, progress=False)


def test_cli_latency_table_build_boards_refusals(tmp_path, capsys):
    """`latency-table build --target arm_cpu` needs --remote or --tracker; an unreachable board is named."""
    from qcompile.cli import main

    base = ["latency-table", "build", "--space", "mobilenet_v3", "--width-mult", "0.25", "--resolutions", "16",
            "--target", "arm_cpu", "--out", str(tmp_path / "arm.json")]
    assert main(base) == 2
    assert "qemu" in capsys.readouterr().err
    assert main([*base, "--remote", "127.0.0.1:1"]) == 2
    assert "cpu_model" in capsys.readouterr().err
    assert main([*base, "--remote", "127.0.0.1:1", "--cpu-model", "ARM Cortex-A72"]) == 2
    assert "127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "arm.json").exists()


def test_cli_latency_table_time_only_refusals(tmp_path, capsys):
    """`--lower-only` and `--time-only` exclude each other; `--time-only` lowers nothing and names the libraries
    it lacks (seconds: it stops before any lowering or timing)."""
    from qcompile.cli import main

    base = ["latency-table", "build", "--space", "mobilenet_v3", "--width-mult", "0.25", "--resolutions", "16",
            "--max-cover", "2", "--n-fit", "1", "--validate", "2", "--libs", str(tmp_path / "libs"),
            "--out", str(tmp_path / "t.json")]
    assert main([*base, "--lower-only", "--time-only"]) == 2
    assert "--lower-only/--time-only" in capsys.readouterr().err
    assert main([*base, "--time-only"]) == 2
    assert "5 of 5 missing" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


@pytest.fixture(scope="session")
def saved_lib(lowered, tmp_path_factory):
    """The second lowering of `lowered`, written once by `save_for_timing` (writing the object takes seconds)."""
    from qcompile.search.latency.libraries import save_for_timing

    return save_for_timing(lowered[1][1][1], tmp_path_factory.mktemp("saved") / "lib")


def test_saved_library_times_like_the_lowered_one(lowered, saved_lib, tmp_path):
    """`save_for_timing` + `SavedTimer` (the prepare/time split of benchmarks/latency_table.py): the reloaded
    library computes the same codes as the lowered one, and every kernel of `meta["kernels"]` is timed from it."""
    from qcompile.search.latency.libraries import SavedTimer, saved
    from qcompile.search.latency.remote import network_samples, primfunc_samples

    _space, pairs = lowered
    low = pairs[1][1]
    d = saved_lib
    assert saved(d) and not saved(tmp_path / "missing")
    assert not (d / "program").exists() and low.program is not None  # graph left out, not taken from `low`
    timer = SavedTimer(d, 1)
    x = np.random.default_rng(3).standard_normal(low.input_shape).astype(low.input_dtype)
    np.testing.assert_array_equal(timer.low(x), low(x))
    names = sorted({f for k in low.meta["kernels"] for f in k["primfuncs"]})
    assert all(timer.function(f) is not None for f in names)
    timed = primfunc_samples(timer, names[:4], 20.0, 3)
    assert set(timed) == set(names[:4]) and all(len(v) == 3 and min(v) > 0 for v in timed.values())
    net = network_samples(timer, 3)
    assert len(net) == 3 and min(net) > 0


def test_emitter_key_follows_the_sources(tmp_path, monkeypatch):
    """Prepared libraries are keyed by the sources that make them: editing one changes the key, nothing else."""
    from qcompile.search.latency import libraries

    src = tmp_path / "backends" / "tvm" / "emitter.py"
    src.parent.mkdir(parents=True)
    src.write_text("A = 1\n")
    (tmp_path / "search").mkdir()
    monkeypatch.setattr(libraries, "_repo_root", lambda: tmp_path)
    k1 = libraries.emitter_key()
    (tmp_path / "search" / "other.py").write_text("B = 2\n")  # not a library source
    libraries.emitter_key.cache_clear()
    assert libraries.emitter_key()["key"] == k1["key"] and len(k1["key"]) == 16
    src.write_text("A = 2\n")
    assert libraries.emitter_key()["key"] == k1["key"]  # cached per process: sources do not change under it
    libraries.emitter_key.cache_clear()
    k2 = libraries.emitter_key()
    assert k2["key"] != k1["key"]
    k2["target"]["mcpu"] = "changed by the caller"  # each call returns its own dict
    assert libraries.emitter_key() != k2
    assert libraries.emitter_key({"kind": "llvm", "mcpu": "znver4"})["key"] != k2["key"]  # a dict: not cached


def test_emitter_key_follows_the_schedule_variables(monkeypatch):
    """A schedule variable that is set (here the opt-in one-region GEMM, or the parallel rule's threshold) makes
    other kernels, so another key; unset, the key is the default one, and the cache does not hide a change."""
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US
    from qcompile.backends.tvm.schedules.x86.gemm import ENV_PACK_IN_TILES
    from qcompile.search.latency import libraries

    for n in (ENV_PACK_IN_TILES, ENV_MIN_US, "QCOMPILE_PARALLEL_MIN_WORK"):
        monkeypatch.delenv(n, raising=False)
    base = libraries.emitter_key("x86")
    assert base["env"] == {}
    monkeypatch.setenv(ENV_PACK_IN_TILES, "1")
    packed = libraries.emitter_key("x86")
    assert packed["key"] != base["key"] and packed["env"] == {ENV_PACK_IN_TILES: "1"}
    monkeypatch.setenv(ENV_MIN_US, "0")
    both = libraries.emitter_key("x86")
    assert len({base["key"], packed["key"], both["key"]}) == 3
    monkeypatch.delenv(ENV_PACK_IN_TILES)
    monkeypatch.delenv(ENV_MIN_US)
    assert libraries.emitter_key("x86")["key"] == base["key"]


def test_emitter_key_cached_per_target_and_process(monkeypatch):
    """`machine_keys` asks for the emitter key on every call: the sources are hashed (and git asked) once per
    target name, not again until `emitter_key.cache_clear()`."""
    from qcompile.search.latency import libraries

    libraries.emitter_key.cache_clear()
    reads = []
    real = libraries._emitter_key
    monkeypatch.setattr(libraries, "_emitter_key", lambda *a: reads.append(a) or real(*a))
    keys = [machine_keys("x86", 1)["emitter"] for _ in range(3)] + [libraries.emitter_key("x86")["key"]]
    assert len(set(keys)) == 1 and len(reads) == 1
    libraries.emitter_key("arm_cpu")
    assert len(reads) == 2
    libraries.emitter_key.cache_clear()
    assert libraries.emitter_key("x86")["key"] == keys[0] and len(reads) == 3


def test_round_statistics_by_hand():
    """`rmin` = median over rounds of the per-round minimum; `median`/`min` over all samples; even/odd halves."""
    from qcompile.search.latency.rounds import item_stats, round_order, round_stat, split_reproducibility

    rounds = [[3.0, 1.0, 2.0], [5.0, 4.0, 9.0], [2.5, 7.0, 8.0], [1.5, 6.0, 6.0]]
    assert round_stat(rounds, "rmin") == statistics.median([1.0, 4.0, 2.5, 1.5]) == 2.0
    assert round_stat(rounds, "median") == statistics.median(sum(rounds, [])) and round_stat(rounds, "min") == 1.0
    st = item_stats(rounds)
    assert st["even"]["rmin_ms"] == statistics.median([1.0, 2.5]) and st["odd"]["rmin_ms"] == 2.75
    assert item_stats(rounds[:1])["even"] is None
    rep = split_reproducibility([st])
    assert rep["n"] == 1 and math.isclose(rep["median_rel_diff"], abs(2.75 - 1.75) / 1.75)
    with pytest.raises(ValueError):
        round_stat(rounds, "mean")
    orders = [round_order(20, 0, r) for r in range(3)]
    assert all(sorted(o) == list(range(20)) for o in orders) and orders[0] != orders[1]
    assert round_order(20, 0, 1) == orders[1]  # a resumed run repeats its orders


def test_rounds_reproduce_under_slow_host_drift():
    """Simulated host whose speed drifts +-25 % on a time scale longer than one burst (as on the shared VM):
    the burst protocol (each item in two bursts of 100 consecutive calls, pass 1 vs pass 2) does not reproduce,
    the round-robin protocol (60 rounds x 3 calls, rmin on even vs odd rounds) does, and its estimate is within
    a few percent of the true latency times the window's median host factor."""
    from qcompile.search.latency.rounds import round_order, round_stat

    rng = np.random.default_rng(0)
    true = rng.uniform(0.2, 2.0, 60)
    window = 120.0  # s

    def host(t):  # slow factor, period 40-90 s, + preemption spikes
        return 1.0 + 0.25 * np.sin(2 * np.pi * t / 70.0) * np.sin(2 * np.pi * t / 23.0 + 1.0)

    def calls(i, t, n):
        return list(true[i] * host(t) * (1 + rng.exponential(0.02, n)) * np.where(rng.random(n) < 0.05, 3.0, 1.0))

    burst = {p: [round_stat([calls(i, (p - 1) * window / 2 + rng.uniform(0, window / 2), 100)], "median")
                 for i in range(len(true))] for p in (1, 2)}
    rel_b = np.abs(np.array(burst[2]) - burst[1]) / burst[1]
    per_round = window / 60
    rounds: list[list] = [[] for _ in true]
    for r in range(60):
        for j, i in enumerate(round_order(len(true), 0, r)):
            rounds[i].append(calls(i, r * per_round + j * per_round / len(true), 3))
    even = np.array([round_stat(x[0::2]) for x in rounds])
    odd = np.array([round_stat(x[1::2]) for x in rounds])
    rel_r = np.abs(odd - even) / even
    assert np.mean(rel_b <= 0.10) < 0.8 and np.mean(rel_r <= 0.05) == 1.0
    ratio = np.array([round_stat(x) for x in rounds]) / true
    assert np.ptp(ratio) / np.median(ratio) < 0.05  # the same host factor for every item: a table stays valid


def test_time_phase_rounds_resume_and_report_reads_them(lowered, saved_lib, tmp_path, monkeypatch):
    """`benchmarks.latency_table time` on two prepared libraries: one line per round with every distinct kernel
    workload's and every network's samples, resumed at the next round with the same items, read back by the
    report's loader."""
    import argparse

    from benchmarks import latency_table as lt

    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    _space, pairs = lowered
    root = tmp_path / "prep" / "k0"
    (root / "tiny").mkdir(parents=True)
    entries = []
    for i in range(2):  # the same library twice: its kernel workloads are timed once
        (root / "tiny" / f"fit_{i}").symlink_to(saved_lib, target_is_directory=True)
        entries.append({"name": f"fit_{i}", "role": "fit", "config": pairs[1][0].to_json()})
    (root / "tiny" / "plan.json").write_text(json.dumps({"entries": entries}))
    args = argparse.Namespace(out=tmp_path, key="k0", accept_key=True, spaces="tiny", run="r", threads=1, cpus=None,
                              rounds=2, calls=2, window_us=20.0, kernels_from="all", seed=0)
    assert lt.time_phase(args) == 0
    lt.time_phase(argparse.Namespace(**(vars(args) | {"rounds": 3})))
    run = lt.load_timings(root / "timings" / "r")[1]
    kinds = [it["kind"] for it in run["items"]]
    distinct = {json.dumps(k["workload"], sort_keys=True) for k in pairs[1][1].meta["kernels"] if k["primfuncs"]}
    assert kinds.count("network") == 2 and kinds.count("kernel") == len(distinct)
    assert run["protocol"] == "3 round-robin rounds"
    for it in run["items"]:
        assert [len(r) for r in it["rounds_ms"]] == [2, 2, 2] and min(it["samples_ms"]) > 0
        assert it["rmin_ms"] == statistics.median(min(r) for r in it["rounds_ms"]) and it["even"] is not None
    with pytest.raises(ConfigError, match="--calls"):
        lt.time_phase(argparse.Namespace(**(vars(args) | {"calls": 0})))


def _neighbour_configs(space):
    """A: 8-bit everywhere, kernel 3; B: A with the successor of block X float; D: A with kernel 5 at X."""
    import dataclasses

    x, nxt = sorted(space._slot_of)[:2]
    a = space.sample(seed=0, bits=(8,))
    a = dataclasses.replace(a, kernels=tuple(3 for _ in a.kernels))
    bits = list(a.policy.bits)
    for sl in space._slot_of[nxt]:
        bits[sl] = (32, 32)
    b = dataclasses.replace(a, policy=dataclasses.replace(a.policy, bits=tuple(bits)))
    ks = list(a.kernels)
    ks[space.block_slot(*x)] = 5
    return x, a, b, dataclasses.replace(a, kernels=tuple(ks))


def test_block_keys_edges():
    """Block X's key differs when its successor is float (its kernels then end with that layer's dequantize:
    the slow test below checks it against the emitter's plan), and not when the successor is integer at other
    bits (a 2-bit or an 8-bit neighbour changes only its own kernels), so integer configs keep sharing blocks."""
    import dataclasses

    from qcompile.search.latency.workloads import block_keys

    space = _tiny()
    x, a, b, _ = _neighbour_configs(space)
    assert block_keys(space, a)[x] != block_keys(space, b)[x]
    low = dataclasses.replace(a, policy=dataclasses.replace(a.policy, bits=tuple((2, 2) for _ in a.policy.bits)))
    ka, kl = block_keys(space, a), block_keys(space, low)
    assert ka[x][-1] == kl[x][-1] == ("i", "i") and ka["head"] == kl["head"]


@pytest.mark.slow
def test_block_memo_keys_carry_the_neighbouring_bit_classes(monkeypatch):
    """A block followed by a float layer ends with that layer's `dequantize` (the emitter's own plan says so), so
    its memo key must differ from the same block followed by an integer layer; otherwise a config whose blocks
    were all seen in other contexts is answered with the wrong kernels. A: 8-bit everywhere; B: A with block
    X's successor float; D: A with another kernel size at X. After B and D every block of A was seen (X only
    before a float layer), and A must still come out as the emitter plans it."""
    from qcompile.search.latency import workloads

    monkeypatch.setattr(workloads, "_MEMO", {})
    # with float islands fused, the dequantize joins the next block's island kernel and such a config is not
    # memoised at all (`_split` refuses kernels spanning blocks); the keys matter for the unfused emitter
    from qcompile.backends.tvm import emitter

    monkeypatch.setattr(emitter, "FUSE_FLOAT_ISLANDS", False)
    space = _tiny()
    x, a, b, d = _neighbour_configs(space)
    plan_a = workloads._split(workloads.plan_config(space, a, "x86", 1))
    plan_b = workloads._split(workloads.plan_config(space, b, "x86", 1))
    assert plan_a[x] != plan_b[x] and plan_b[x][-1]["op"] == "dequantize"  # the fact the key must carry
    for cfg in (b, d):
        qs.kernel_workloads(space, cfg, "x86", 1)
    assert qs.kernel_workloads(space, a, "x86", 1) == [w for g in plan_a.values() for w in g]


def test_float_island_across_blocks_is_memoised(monkeypatch):
    """With float islands fused, block X's 8-bit output codes are dequantized inside the island of its float
    successor, one kernel holding nodes of both blocks. It belongs to the successor (`_group_of`), so the config
    is memoised, and a config made of blocks seen in two such configs is answered from the memo exactly as the
    emitter plans it. B: X before a float block; F: B with kernel 5 at X and at a later block; G: B with kernel
    5 at X only (X from F, the rest from B)."""
    import dataclasses

    from qcompile.search.latency import workloads

    monkeypatch.setattr(workloads, "_MEMO", {})
    space = _tiny()
    x, _, b, _ = _neighbour_configs(space)
    later = sorted(space._slot_of)[2]
    ks = list(b.kernels)
    ks[space.block_slot(*x)] = 5
    g = dataclasses.replace(b, kernels=tuple(ks))
    ks[space.block_slot(*later)] = 5
    f = dataclasses.replace(b, kernels=tuple(ks))
    records = workloads.plan_config(space, b, "x86", 1)
    spans = [r for r in records if len({m.groups() for m in map(workloads._BLOCK_RE.match, r.nodes) if m}) > 1]
    assert spans and spans[0].op == "float_island" and spans[0].nodes[0].endswith("out_q_dequantize")
    assert workloads._group_of(spans[0].nodes, x) != x  # the successor's kernel
    for cfg in (b, f):
        qs.kernel_workloads(space, cfg, "x86", 1)
    table = next(iter(workloads._MEMO.values()))
    assert all(k in table for k in workloads.block_keys(space, b).values())
    exact = [r.workload for r in workloads.plan_config(space, g, "x86", 1)]  # the emitter's plan, memo untouched

    def no_slow_path(*a, **k):
        raise AssertionError("slow path taken")

    monkeypatch.setattr(workloads, "plan_config", no_slow_path)
    assert qs.kernel_workloads(space, g, "x86", 1) == exact
    assert qs.kernel_workloads(space, b, "x86", 1) == [r.workload for r in records]


def test_plan_at_a_small_resolution_equals_the_plan_at_the_configs_own(monkeypatch):
    """`plan_graph` lowers a config above `PLAN_RESOLUTION` at that resolution and propagates the config's own
    shapes: the kernels equal a plan at the config's resolution; a failure at the small size falls back to it."""
    from qcompile.backends.tvm.emitter import plan_kernels
    from qcompile.passes import slice_subnet as slicing
    from qcompile.search.latency import workloads

    space = qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.25, resolutions=(96,), depths=(1,), kernels=(3, 5),
                                   expands=(3, 6))
    target = workloads._resolve("x86", 1).target()

    def plan(cfg, res):
        monkeypatch.setattr(workloads, "PLAN_RESOLUTION", res)
        ig = workloads.plan_graph(space, cfg)
        assert tuple(ig.program_meta["input_shape"]) == (1, 3, 96, 96)
        return [r.workload for r in plan_kernels(ig, target)]

    cfgs = [space.sample(seed=s, bits=(2, 3, 4, 8, 32)) for s in (1, 2)]
    for cfg in cfgs:
        small, full = plan(cfg, 32), plan(cfg, 1 << 30)
        assert small == full and len(full) > 20
        assert any(w["out_shape"][-1] == 48 for w in full if "out_shape" in w)  # 96 px shapes, not 32 px ones
    real, calls = slicing.slice_subnet, []

    def no_small(gm, cfg, *a, **k):
        calls.append(cfg.resolution)
        if cfg.resolution != 96:
            raise RuntimeError("no plan at the small size")
        return real(gm, cfg, *a, **k)

    monkeypatch.setattr(slicing, "slice_subnet", no_small)
    assert plan(cfgs[0], 32) == plan(cfgs[0], 1 << 30) and calls == [32, 96, 96]


def test_unseen_block_planned_on_a_window(monkeypatch):
    """A config with one unseen block is planned on a window (the block, the output quantizer in front of it and
    the next block behind it), not on the whole config, and equals the emitter's plan of the whole config:
    X (kernel 5) before a float block whose island starts at X's output codes, and the first block (the stem
    comes along) and a middle one."""
    import dataclasses

    from qcompile.search.latency import workloads

    monkeypatch.setattr(workloads, "_MEMO", {})
    space = _tiny()
    x, _, b, _ = _neighbour_configs(space)
    qs.kernel_workloads(space, b, "x86", 1)
    variants = []
    for pos in (x, sorted(space._slot_of)[3]):
        ks = list(b.kernels)
        ks[space.block_slot(*pos)] = 5
        variants.append(dataclasses.replace(b, kernels=tuple(ks)))
    exact = [[r.workload for r in workloads.plan_config(space, v, "x86", 1)] for v in variants]
    windows = []
    real_window = workloads.window_workloads

    def window(space_, cfg, run, *a, **k):
        windows.append(run)
        return real_window(space_, cfg, run, *a, **k)

    def no_slow_path(*a, **k):
        raise AssertionError("whole-config plan taken")

    monkeypatch.setattr(workloads, "plan_config", no_slow_path)
    monkeypatch.setattr(workloads, "window_workloads", window)
    for v, ex in zip(variants, exact):
        assert qs.kernel_workloads(space, v, "x86", 1) == ex
    assert windows == [[x], [sorted(space._slot_of)[3]]]


def test_remember_fills_the_block_memo(lowered, monkeypatch):
    """`remember` (a lowering's own kernel list into the per-block memo) answers `kernel_workloads` for that
    config, and for configs of the same blocks, without the slow path, equal to what the emitter emitted."""
    from qcompile.search.latency import workloads

    space, pairs = lowered
    monkeypatch.setattr(workloads, "_MEMO", {})

    def no_slow_path(*a, **k):
        raise AssertionError("slow path taken")

    monkeypatch.setattr(workloads, "plan_config", no_slow_path)
    for cfg, low in pairs:
        assert workloads.remember(space, cfg, low.meta["kernels"], "x86", 1)
    for cfg, low in pairs:
        assert qs.kernel_workloads(space, cfg, "x86", 1) == [k["workload"] for k in low.meta["kernels"]]


def test_overhead_models_recover_a_known_model():
    """The report's overhead models on synthetic networks whose scheduled and TE-emitted kernels cost different
    per-call overheads: the per-strategy model recovers the coefficients, and leave-one-out on the fit networks
    (not the held-out ones) prefers it; the one-term model cannot fit them exactly."""
    from benchmarks.latency_table import overhead_models

    rng = np.random.default_rng(0)

    def nets(n):
        rows, y = [], []
        for _ in range(n):
            sx, sn, nx, nn = rng.uniform(0.05, 0.5), rng.uniform(0.01, 0.1), rng.integers(40, 200), rng.integers(5, 80)
            rows.append([sx, sn, float(nx), float(nn), 1.0])
            y.append(1.2 * (sx + sn) + 0.001 * nx + 0.004 * nn + 0.02)
        return rows, y

    fr, fy = nets(12)
    vr, vy = nets(30)
    m = overhead_models(fr, fy, vr, vy)
    np.testing.assert_allclose(m["per_strategy_kernel_term"]["coef"], [1.2, 0.001, 0.004, 0.02], rtol=1e-6,
                               atol=1e-9)
    assert m["per_strategy_kernel_term"]["fit_loo_mape"] < 1e-6 < m["scale_kernel_call"]["fit_loo_mape"]
    assert m["per_strategy_kernel_term"]["heldout_within_5pct"] == 1.0


def test_build_times_in_rounds_and_resumes_without_lowering(lowered, tmp_path, monkeypatch):
    """`build` here: lower + save each subnet, then time kernels and networks in round-robin rounds; each entry
    keeps its rounds and `latency_ms` = rmin (checked by hand); a build interrupted after lowering resumes from
    the saved libraries (a second lowering fails the test), and a complete table is a lookup."""
    import qcompile.api
    from qcompile.search.latency.libraries import emitter_key, saved
    from qcompile.search.latency.table import _library_dir
    from qcompile.search.latency.workloads import workload_key

    space, pairs = lowered
    cfg = pairs[0][0]  # covering_configs(space, 1, seed=0)[0]: the plan of max_cover=1, n_fit=0
    path = tmp_path / "t.json"
    libs = tmp_path / "t.json.libs"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(qs.LatencyTable, "_time_rounds", interrupted)
        with pytest.raises(KeyboardInterrupt):
            qs.LatencyTable.build(space, "x86", 1, max_cover=1, n_fit=0, progress=False, path=path)
    assert saved(_library_dir(libs / emitter_key("x86")["key"], cfg)) and not path.exists()

    def no_lowering(*a, **k):
        raise AssertionError("a saved library was lowered again")

    monkeypatch.setattr(qcompile.api, "lower", no_lowering)
    t = qs.LatencyTable.build(space, "x86", 1, max_cover=1, n_fit=0, progress=False, path=path, rounds=4, calls=2)
    assert t.keys["timing"] == {"protocol": "rounds", "stat": "rmin", "rounds": 4, "calls": 2, "window_us": 50.0}
    (net,) = t.networks
    emitted = pairs[0][1].meta["kernels"]
    assert net["config"] == cfg.to_json() and net["role"] == "cover" and net["kernels"] == len(emitted)
    entries = [net, *t.kernels.values()]
    assert set(t.kernels) == {workload_key(k["workload"]) for k in emitted if k["primfuncs"]}
    for e in entries:
        assert len(e["rounds_ms"]) == 4 and all(len(r) == 2 for r in e["rounds_ms"]) and e["stat"] == "rmin"
        assert e["latency_ms"] == statistics.median(min(r) for r in e["rounds_ms"]) > 0
        assert e["samples_ms"] == [x for r in e["rounds_ms"] for x in r] and "median_ms" not in e
    s, n = t.kernel_sum(cfg)
    assert n == len(emitted)
    assert math.isclose(s, sum(t.kernels[workload_key(k["workload"])]["latency_ms"] for k in emitted), rel_tol=1e-12)
    loaded = qs.LatencyTable.load(path)
    assert loaded.networks == json.loads(json.dumps(t.networks))
    assert loaded.predict(cfg) == pytest.approx(t.predict(cfg), rel=1e-12)
    again = qs.LatencyTable.build(space, "x86", 1, table=loaded, max_cover=1, n_fit=0, progress=False, path=path)
    assert again.networks[0]["rounds_ms"] == net["rounds_ms"]  # nothing timed again
    with pytest.raises(ConfigError, match="rounds"):
        qs.LatencyTable.build(space, "x86", 1, max_cover=1, n_fit=0, progress=False, rounds=0)


def test_burst_table_still_loads_and_predicts(table, lowered, tmp_path):
    """A table written before the round-robin protocol (entries with `median_ms` only, no `latency_ms`/`rounds_ms`)
    loads, and predicts a * sum(median_ms) + b * n + c."""
    from qcompile.search.latency.workloads import workload_key

    space, pairs = lowered
    d = table.to_dict()
    assert all("latency_ms" not in e and "rounds_ms" not in e for e in d["kernels"] + d["networks"])
    path = tmp_path / "old.json"
    path.write_text(json.dumps(d))
    old = qs.LatencyTable.load(path)
    f = old.fit_params
    for cfg, low in pairs:
        ms = sum(old.kernels[workload_key(k["workload"])]["median_ms"] for k in low.meta["kernels"])
        expect = f["scale"] * ms + f["per_kernel_ms"] * len(low.meta["kernels"]) + f["per_call_ms"]
        assert old.predict(cfg) == pytest.approx(expect, rel=1e-12)


def test_build_phases_time_only_and_heldout_rows(lowered, saved_lib, tmp_path, monkeypatch):
    """`phase="time"` lowers nothing: it refuses a plan whose libraries are missing, and otherwise re-times every
    kernel and network of the plan from the saved libraries (twice: the second replaces the first). Held-out
    subnets (`validate=`) are timed in the same rounds with role "validate": never in the fit, their kernels not
    timed; `heldout_rows` predicts them with `table.predict` and scores their rmin."""
    import shutil

    import qcompile.api
    from qcompile.search.latency.libraries import emitter_key, save_for_timing
    from qcompile.search.latency.table import _library_dir
    from qcompile.search.latency.validate import heldout_rows
    from qcompile.search.latency.workloads import workload_key

    space, pairs = lowered
    (cover, cover_low), *held = pairs[:2]  # cover: the plan of max_cover=1, n_fit=0; one held-out subnet
    libs, path = tmp_path / "libs", tmp_path / "t.json"
    kw = dict(max_cover=1, n_fit=0, progress=False, path=path, libs=libs, validate=[c for c, _ in held])
    with pytest.raises(ConfigError, match="2 of 2 missing"):
        qs.LatencyTable.build(space, "x86", 1, phase="time", **kw)
    for i, (c, low) in enumerate(pairs[:2]):  # what phase="lower" writes, from the session's lowerings
        d = _library_dir(libs / emitter_key("x86")["key"], c)
        if i == 1:  # written once for the session already
            shutil.copytree(saved_lib, d)
        else:
            save_for_timing(low, d)

    def fail(*a, **k):
        raise AssertionError("lowered or timed")

    monkeypatch.setattr(qcompile.api, "lower", fail)
    with monkeypatch.context() as m:
        m.setattr(qs.LatencyTable, "_time_rounds", fail)
        untimed = qs.LatencyTable.build(space, "x86", 1, phase="lower", **kw)  # every library there: nothing to do
    assert not untimed.networks and not untimed.kernels and not path.exists()
    t = qs.LatencyTable.build(space, "x86", 1, phase="time", rounds=3, calls=2, **kw)
    assert [n["role"] for n in t.networks] == ["cover", "validate"]
    assert set(t.kernels) == {workload_key(k["workload"]) for k in cover_low.meta["kernels"] if k["primfuncs"]}
    assert t.fit_params["scale"] == 1.0 and "networks" not in t.fit_params  # one fit network: no fit
    rows = heldout_rows(qs.LatencyTable.load(path))
    assert len(rows) == 1
    for row, net, (c, low) in zip(rows, t.networks[1:], held):
        assert row["config"] == net["config"] == c.to_json() and len(net["rounds_ms"]) == 3
        assert row["measured_ms"] == row["latency_ms"] == statistics.median(min(r) for r in net["rounds_ms"])
        assert row["median_ms"] == statistics.median(net["samples_ms"]) and row["min_ms"] == min(net["samples_ms"])
        assert row["predicted_ms"] == pytest.approx(t.predict(c), rel=1e-12)
        assert row["forest_kernels"] == sum(workload_key(k["workload"]) not in t.kernels for k in low.meta["kernels"])
    assert sum(r["forest_kernels"] for r in rows) > 0  # the held-out subnets have kernels the cover lacks
    again = qs.LatencyTable.build(space, "x86", 1, phase="time", rounds=2, calls=1, table=t, **kw)
    assert len(again.networks) == 2 and set(again.kernels) == set(t.kernels)
    assert all(len(e["rounds_ms"]) == 2 and len(e["rounds_ms"][0]) == 1
               for e in [*again.networks, *again.kernels.values()])
    with pytest.raises(ConfigError, match="phase"):
        qs.LatencyTable.build(space, "x86", 1, phase="quiet", **kw)


def test_time_phase_resumes_after_an_interruption_in_the_rounds(lowered, tmp_path, monkeypatch):
    """An interruption during the timing rounds keeps the rounds done so far (a side file next to the table,
    rewritten atomically each round); the next build times only the rounds left, in the orders an uninterrupted
    one would have used, and stores exactly `rounds` rounds per entry with rmin over all of them. A side file of
    other items is not resumed from."""
    from qcompile.search.latency import remote
    from qcompile.search.latency import table as T
    from qcompile.search.latency.libraries import emitter_key, save_for_timing
    from qcompile.search.latency.rounds import round_stat
    from qcompile.search.latency.table import _library_dir, rounds_file

    monkeypatch.setattr(T, "SIDE_FILE_EVERY_S", 0.0)  # the side file after every round

    space, pairs = lowered
    cfg, low = pairs[0]  # the plan of max_cover=1, n_fit=0
    libs, path = tmp_path / "libs", tmp_path / "t.json"
    save_for_timing(low, _library_dir(libs / emitter_key("x86")["key"], cfg))
    kw = dict(max_cover=1, n_fit=0, progress=False, path=path, libs=libs, phase="time", rounds=5, calls=1)
    side = rounds_file(path, None)
    real = remote.network_evaluator
    calls = []

    def counting(limit=None):
        def make(timer, n):
            fn = real(timer, n)

            def call():
                calls.append(1)
                if limit is not None and len(calls) > limit:
                    raise RuntimeError("timer interrupted")
                return fn()
            return call
        return make

    k = 2
    with monkeypatch.context() as m:  # the network is timed once per round: fail in round k (after warm-up + k)
        m.setattr(remote, "network_evaluator", counting(limit=1 + k))
        with pytest.raises(RuntimeError, match="timer interrupted"):
            qs.LatencyTable.build(space, "x86", 1, **kw)
    assert not path.exists()
    kept = json.loads(side.read_text())
    assert len(kept["rounds"]) == k and kept["calls"] == 1 and kept["seed"] == 0
    net_i = kept["items"].index(next(i for i in kept["items"] if i.startswith("network:cover:")))
    calls.clear()
    monkeypatch.setattr(remote, "network_evaluator", counting())
    t = qs.LatencyTable.build(space, "x86", 1, **kw)
    assert len(calls) == 1 + 5 - k  # warm-up, then only the rounds left
    (net,) = t.networks
    assert len(net["rounds_ms"]) == 5 and net["rounds_ms"][:k] == [r[net_i] for r in kept["rounds"]]
    for e in [net, *t.kernels.values()]:
        assert len(e["rounds_ms"]) == 5 and e["latency_ms"] == round_stat(e["rounds_ms"], "rmin")
    assert not side.exists() and qs.LatencyTable.load(path).networks[0]["rounds_ms"] == net["rounds_ms"]
    # a side file of another item list (or settings) starts again from round 0
    side.write_text(json.dumps({**kept, "items": ["kernel:other"] * len(kept["items"])}))
    calls.clear()
    qs.LatencyTable.build(space, "x86", 1, **kw)
    assert len(calls) == 1 + 5 and not side.exists()
