"""The peer harness on a tiny MobileNetV2: every peer builds and runs, outputs agree with independent
references, fidelity columns equal their NumPy formulas, timing is interleaved, the report files and the
docs section are written."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from qcompile.bench import PEERS, BenchOptions, peers
from qcompile.bench.report import ARCHITECTURE_MS, load_result, peers_doc, to_markdown
from qcompile.errors import ConfigError

HAVE_EXECUTORCH = importlib.util.find_spec("executorch") is not None
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
EXTRA = ["reference_executor", "reference_off_by_3", "fp32_scaled", "fp32_noisy"]


def _fp32(model, x):
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy().astype(np.float64)


def test_every_peer_runs_and_report_is_written(tiny_bench, tiny_tvm):
    res, out, _ = tiny_bench
    stats = res.by_name()
    assert list(stats) == [*PEERS, *EXTRA, *tiny_tvm[0]]
    for name, s in stats.items():
        if (name.startswith("executorch") and not HAVE_EXECUTORCH) or (name.startswith("openvino")
                                                                       and not HAVE_OPENVINO):
            assert s.status.startswith("unavailable: ") and "pip install" in s.status and s.n == 0
            continue
        assert s.status == "ok", (name, s.status)
        assert s.n == 4 and len(s.samples_ms) == 4
        assert 0 < s.min_ms <= s.p10_ms <= s.median_ms <= s.p90_ms
        assert s.median_ms == pytest.approx(float(np.median(s.samples_ms)))
    doc = json.loads((out / "bench.json").read_text())
    m = doc["meta"]
    assert m["threads"] == 1 and m["input_shape"] == [1, 3, 32, 32]
    assert m["settle_ms"] == BenchOptions().settle_ms and m["lead_in"] == BenchOptions().lead_in
    assert 0 <= m["settle_waited_ms"]["median"] <= m["settle_waited_ms"]["max"] <= m["settle_ms"] + 5
    assert m["synthetic_integer_graph"] is True and m["graph_output_op"] == "dequantize_acc"
    # peers and the TVM lowering ran in worker processes of their own, the closures in this one
    assert m["isolation"] == "process"
    for name, s in stats.items():
        want = "in-process" if name in EXTRA else "process"
        assert s.isolation == want and m["workers"][name]["isolation"] == want, name
    assert [r["name"] for r in doc["runners"]] == list(stats)
    # one host memory probe per round (the default probe), each row's quiet median beside its median
    probe = m["host_probe"]
    assert len(probe["stream_gbs"]) == 4 and probe["mb"] == BenchOptions().host_probe_mb and probe["n_quiet"] >= 1
    for name, s in stats.items():
        if s.status == "ok":
            q = np.asarray(s.samples_ms)[np.asarray(probe["quiet"])]
            assert s.n_quiet == len(q) and s.median_quiet_ms == pytest.approx(float(np.median(q))), name
    md = (out / "bench.md").read_text()
    peer_table, probe_part = md.split("Host memory probe")
    assert peer_table.count("\n| ") == len(stats) + 1 and "torch_ao_int8" in md and "top-1 (test)" in md
    ok = sum(s.status == "ok" for s in stats.values())
    assert probe_part.count("\n| ") == ok + 1 and f"{probe['n_quiet']} of 4 rounds quiet" in probe_part
    assert "cosine" not in md and "rel L2" not in md  # no column compares with a differently calibrated twin
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_fidelity_columns_equal_numpy_formulas(tiny_bench, tiny_model, tiny_input, noise):
    st = tiny_bench[0].by_name()
    ref = _fp32(tiny_model, tiny_input)
    # 1.1 * y: relative error 0.1, same direction
    assert st["fp32_scaled"].rel_l2_vs_fp32 == pytest.approx(0.1, rel=1e-5)
    assert st["fp32_scaled"].cosine_vs_fp32 == pytest.approx(1.0, abs=1e-9)
    n = noise.astype(np.float64).reshape(-1)
    y = ref.reshape(-1) + n
    assert st["fp32_noisy"].rel_l2_vs_fp32 == pytest.approx(np.sqrt(np.sum(n**2) / np.sum(ref**2)), rel=1e-5)
    assert st["fp32_noisy"].cosine_vs_fp32 == pytest.approx(
        np.sum(y * ref.reshape(-1)) / np.sqrt(np.sum(y**2) * np.sum(ref**2)), rel=1e-6)
    assert st["torch_fp32"].rel_l2_vs_fp32 == 0.0
    for name in ("ort_fp32", *(["executorch_xnnpack_fp32"] if HAVE_EXECUTORCH else []),
                 *(["openvino_fp32"] if HAVE_OPENVINO else [])):
        assert st[name].rel_l2_vs_fp32 < 1e-5 and st[name].cosine_vs_fp32 > 1 - 1e-9, name
    # int8 peers work on random weights even where top-1 would flip: small error, aligned outputs
    for name in ("torch_ao_int8", "ort_int8_qdq", *(["executorch_xnnpack_int8"] if HAVE_EXECUTORCH else []),
                 *(["openvino_int8_qdq"] if HAVE_OPENVINO else [])):
        assert 0 < st[name].rel_l2_vs_fp32 < 0.1 and st[name].cosine_vs_fp32 > 0.99, name
        assert st[name].max_code_diff is None
    for name in EXTRA[2:]:
        assert st[name].max_code_diff is None  # not runners of the IntegerGraph


def test_code_difference_of_integer_runners(tiny_bench, tiny_tvm):
    st = tiny_bench[0].by_name()
    assert st["reference_executor"].max_code_diff == 0.0
    assert st["reference_off_by_3"].max_code_diff == pytest.approx(3.0, rel=1e-9)
    (tvm_name,) = tiny_tvm[0]
    assert st[tvm_name].max_code_diff == 0.0  # the TVM lowering is bit-exact (docs/integer_semantics.md)
    # our ONNX export: float32 dequantization of the int32 accumulator, within a fraction of a code
    for name in ("ort_ours_qdq", "ort_ours_qoperator"):
        assert st[name].max_code_diff is not None and st[name].max_code_diff < 1.0
    # a synthetic graph has its own random weights: no comparison with the float model
    for name in ("ort_ours_qdq", "reference_executor", tvm_name):
        assert st[name].rel_l2_vs_fp32 is None and st[name].cosine_vs_fp32 is None


def test_tvm_row_names_the_llvm_mcpu(tiny_tvm, tiny_graph, tiny_input):
    runners, targets = tiny_tvm
    ((name, spec),) = runners.items()
    mcpu = targets[name]["mcpu"]
    assert name == f"qcompile_tvm_{mcpu}_untuned" and mcpu not in ("", "native")
    # the spec carries the exported library; rebuilt here it runs the lowering bit-exactly
    assert spec.name == name and set(spec.args[0]) == {"lib.so", "metadata.json"}
    np.testing.assert_array_equal(spec.build()(tiny_input), tiny_graph(torch.from_numpy(tiny_input)).numpy())


def test_hook_sees_interleaved_rotating_rounds(tiny_bench):
    res, _, calls = tiny_bench
    names = [s.name for s in res.runners if s.status == "ok"]
    assert len(calls) == 4 * len(names)
    per_round = [[n for n, r in calls if r == k] for k in range(4)]
    for k, order in enumerate(per_round):
        assert order == names[k % len(names):] + names[:k % len(names)]


def test_peers_doc_from_json(tiny_bench, tmp_path):
    res, out, _ = tiny_bench
    back = load_result(out / "bench.json")
    assert back == res  # JSON round trip is lossless
    doc = peers_doc(back, command="python -m qcompile.bench --resolution 32")
    assert "python -m qcompile.bench --resolution 32" in doc
    assert doc.count("| runner |") == 3 and "ARCHITECTURE.md figure vs this run" in doc  # peers, probe, figures
    med = res.by_name()["torch_fp32"].median_ms
    assert f"| torch_fp32 | {ARCHITECTURE_MS['torch_fp32']:.1f} | {med:.2f} | {med / 20.6:.2f} |" in doc
    assert "not a reproduction check" in doc  # 32x32 width 0.25 is not ARCHITECTURE's workload
    from qcompile.bench.__main__ import main

    target = tmp_path / "peers.md"
    assert main(["--from-json", str(out / "bench.json"), "--doc", str(target)]) == 0
    assert target.read_text() == peers_doc(back)


def test_float_peers_agree_with_torch(tiny_model, tiny_input, tmp_path):
    ref = peers.torch_fp32(tiny_model)(tiny_input)
    path = peers.export_float_onnx(tiny_model, tiny_input, tmp_path / "f.onnx")
    y = peers.ort_runner(path, threads=1)(tiny_input)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_int8_peers_track_the_float_model(tiny_model, tmp_path):
    rng = np.random.default_rng(3)
    calib = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    ref = peers.torch_fp32(tiny_model)(x)
    ao = peers.torch_ao_int8(tiny_model, calib)(x)
    path = peers.export_float_onnx(tiny_model, calib[0], tmp_path / "f.onnx")
    qdq = peers.ort_int8_static(path, calib, tmp_path / "q.onnx", threads=1)
    # quantize_static traced batch 1: run sample by sample
    oq = np.concatenate([qdq(x[i:i + 1]) for i in range(len(x))])
    for y in (ao, oq):
        assert np.corrcoef(y.reshape(-1), ref.reshape(-1))[0, 1] > 0.95


def _coarse_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """A coarse random pattern plus noise: pooled features (and logits) differ between images."""
    coarse = np.kron(rng.standard_normal((n, 3, 4, 4)), np.ones((1, 1, 8, 8)))
    return (2 * coarse + 0.3 * rng.standard_normal((n, 3, 32, 32))).astype(np.float32)


def _live_cnn(rng: np.random.Generator) -> torch.nn.Module:
    """A small CNN whose logits depend on the input (the tiny random MobileNetV2's barely do: its activations
    die out): BN statistics estimated on images like the test's, so every layer's output is centred and scaled."""
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16, momentum=None), nn.ReLU(),
                      nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16, momentum=None), nn.ReLU6(),
                      nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32, momentum=None), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    with torch.no_grad():
        m.train()(torch.from_numpy(_coarse_images(rng, 64)))
    return m.eval()


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (bench extra)")
def test_openvino_peers_track_torch_and_onnxruntime_int8(tmp_path):
    rng = np.random.default_rng(5)
    model = _live_cnn(rng)
    calib = list(_coarse_images(rng, 8)[:, None])
    xs = list(_coarse_images(rng, 16)[:, None])
    ref = np.concatenate([peers.torch_fp32(model)(x) for x in xs])
    assert ref.std(0).mean() > 0.3 * np.abs(ref).mean()  # the logits do depend on the input
    path = peers.export_float_onnx(model, xs[0], tmp_path / "f.onnx")
    ov32 = np.concatenate([peers.openvino_runner(path, threads=1)(x) for x in xs])
    # OpenVINO fp32 (precision hint f32, not the bf16 default of AMX hosts) computes torch's function
    np.testing.assert_allclose(ov32, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    ov8_fn = peers.openvino_int8_qdq(path, calib, tmp_path / "ov_q.onnx", threads=1)
    ort8_fn = peers.ort_int8_static(path, calib, tmp_path / "ort_q.onnx", threads=1)
    ov8 = np.concatenate([ov8_fn(x) for x in xs])
    ort8 = np.concatenate([ort8_fn(x) for x in xs])
    # the same QDQ model (deterministic recipe) on two runtimes: their int8 results agree to a few output steps
    assert (tmp_path / "ov_q.onnx").read_bytes() == (tmp_path / "ort_q.onnx").read_bytes()
    spread = float(ref.max() - ref.min())
    assert np.abs(ov8 - ort8).max() < 0.03 * spread
    assert (ov8.argmax(1) == ort8.argmax(1)).mean() >= 15 / 16
    # and both are per-tensor MinMax int8 of the float model (8 calibration images): close to it, not equal
    for y in (ov8, ort8):
        rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        assert 0 < rel < 0.25


def test_missing_openvino_gives_install_hint(tiny_model, tiny_input, monkeypatch):
    from qcompile.bench import run_bench

    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    with pytest.raises(peers.MissingPeer, match="openvino==2026.4.1"):
        peers.openvino_runner("unused.onnx", threads=1)
    res = run_bench(tiny_model, tiny_input, options=BenchOptions(
        threads=1, repeats=1, warmup=0, settle_ms=0, peers=("ort_fp32", "openvino_fp32", "openvino_int8_qdq"),
        isolation="none"))
    st = res.by_name()
    for name in ("openvino_fp32", "openvino_int8_qdq"):
        assert st[name].status.startswith("unavailable: ") and "pip install" in st[name].status, name
        assert st[name].median_ms is None
    assert st["ort_fp32"].status == "ok"


def test_missing_executorch_gives_install_hint(tiny_model, tiny_input, monkeypatch):
    from qcompile.bench import run_bench

    monkeypatch.setitem(sys.modules, "executorch.runtime", None)  # import fails as if not installed
    with pytest.raises(peers.MissingPeer, match="pip install"):
        peers.executorch_xnnpack(tiny_model, tiny_input, threads=1)
    # in this process: a spawned worker would not see the monkeypatch
    res = run_bench(tiny_model, tiny_input, options=BenchOptions(
        threads=1, repeats=1, warmup=0, settle_ms=0, peers=("torch_fp32", "executorch_xnnpack_int8"),
        isolation="none"))
    st = res.by_name()["executorch_xnnpack_int8"]
    assert st.status.startswith("unavailable: ") and "executorch==1.5.1" in st.status and st.median_ms is None
    assert res.by_name()["torch_fp32"].status == "ok"


def test_our_export_on_the_mbv2_graph_matches_reference(tiny_graph, tiny_input):
    from qcompile.backends.onnx import compare_with_reference

    exact = compare_with_reference(tiny_graph, tiny_input, format="qoperator")
    assert exact.max_codes == 0 and exact.top1_equal
    qdq = compare_with_reference(tiny_graph, tiny_input, format="qdq")
    assert qdq.max_codes <= 1 and qdq.top1_equal
    assert {"conv2d", "requantize", "add", "mean", "linear", "dequantize_acc"} <= {d.op for d in exact.nodes}


def test_missing_integer_graph_and_bad_options(tiny_model, tiny_input):
    from qcompile.bench import run_bench

    before = torch.get_num_threads()
    res = run_bench(tiny_model, tiny_input, options=BenchOptions(threads=1, repeats=1, warmup=0,
                                                                 peers=("torch_fp32", "ort_ours_qdq")))
    st = res.by_name()
    assert st["ort_ours_qdq"].status.startswith("unavailable: no IntegerGraph")
    assert st["torch_fp32"].status == "ok" and st["torch_fp32"].cosine_vs_fp32 == pytest.approx(1.0)
    assert "unavailable" in to_markdown(res)
    with pytest.raises(ConfigError, match="peers"):
        BenchOptions(peers=("tensorrt",))
    with pytest.raises(ConfigError, match="settle_ms"):
        BenchOptions(settle_ms=-1)
    with pytest.raises(ConfigError, match="lead_in"):
        BenchOptions(lead_in=-1)
    with pytest.raises(ConfigError, match="lead_in_ms"):
        BenchOptions(lead_in_ms=-5)
    with pytest.raises(ConfigError, match="runners"):
        run_bench(tiny_model, tiny_input, runners={"torch_fp32": lambda x: x},
                  options=BenchOptions(threads=1, repeats=1, warmup=0, peers=("torch_fp32",)))
    with pytest.raises(ConfigError, match="graph_runners"):
        run_bench(tiny_model, tiny_input, runners={"a": lambda x: x}, graph_runners=["b"],
                  options=BenchOptions(threads=1, repeats=1, warmup=0, peers=("torch_fp32",)))
    with pytest.raises(ConfigError, match="graph_runners"):
        run_bench(tiny_model, tiny_input, runners={"a": lambda x: x}, graph_runners=["a"],
                  options=BenchOptions(threads=1, repeats=1, warmup=0, peers=("torch_fp32",)))
    assert torch.get_num_threads() == before  # the harness restores torch's thread count


def test_other_load_counts_only_other_processes():
    """The load note uses the machine's busy time minus the harness's own (workers included), not the load
    average, which counts the benchmark's own threads: 2 s of wall, 3.0 busy core-seconds of which 2.2 ours."""
    from qcompile.bench.harness import _other_load
    from qcompile.bench.report import _load_note

    a = {"wall": 10.0, "busy": 100.0, "steal": 1.0, "own": 5.0}
    b = {"wall": 12.0, "busy": 103.0, "steal": 1.1, "own": 7.2}
    got = _other_load(a, b)
    assert got == {"other_load_cores": pytest.approx(0.4), "steal_cores": pytest.approx(0.05)}
    assert "competed" in _load_note({"cpu_count": 2, **got})[0]
    quiet = _other_load(a, dict(b, busy=102.2))  # nothing but ourselves
    assert quiet["other_load_cores"] == 0.0 and "quiet machine" in _load_note({"cpu_count": 2, **quiet})[0]
    assert _other_load(None, b) == {} and _load_note({"cpu_count": 2, "load_average": [0.3]}) == []
