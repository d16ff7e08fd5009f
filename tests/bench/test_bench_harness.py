"""The peer harness on a tiny MobileNetV2: every peer builds and runs, outputs agree with independent
references, timing is interleaved, and the report files are written."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from qcompile.bench import PEERS, BenchOptions, peers, time_runners
from qcompile.bench.report import to_markdown
from qcompile.errors import ConfigError


def test_every_peer_runs_and_report_is_written(tiny_bench):
    res, out, _ = tiny_bench
    stats = res.by_name()
    assert list(stats) == [*PEERS, "reference_executor"]
    for name, s in stats.items():
        assert s.status == "ok", (name, s.status)
        assert s.n == 4 and len(s.samples_ms) == 4
        assert 0 < s.min_ms <= s.p10_ms <= s.median_ms <= s.p90_ms
        assert s.median_ms == pytest.approx(float(np.median(s.samples_ms)))
    assert stats["ort_fp32"].top1_agrees_with_fp32 == 1.0
    doc = json.loads((out / "bench.json").read_text())
    assert doc["meta"]["threads"] == 1 and doc["meta"]["input_shape"] == [1, 3, 32, 32]
    assert [r["name"] for r in doc["runners"]] == list(stats)
    md = (out / "bench.md").read_text()
    assert md.count("\n| ") == len(stats) + 1 and "torch_ao_int8" in md
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_hook_sees_interleaved_rotating_rounds(tiny_bench):
    res, _, calls = tiny_bench
    names = [s.name for s in res.runners]
    assert len(calls) == 4 * len(names)
    per_round = [[n for n, r in calls if r == k] for k in range(4)]
    for k, order in enumerate(per_round):
        assert order == names[k % len(names):] + names[:k % len(names)]


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


def test_our_export_on_the_mbv2_graph_matches_reference(tiny_graph, tiny_input):
    from qcompile.backends.onnx import compare_with_reference

    exact = compare_with_reference(tiny_graph, tiny_input, format="qoperator")
    assert exact.max_codes == 0 and exact.top1_equal
    qdq = compare_with_reference(tiny_graph, tiny_input, format="qdq")
    assert qdq.max_codes <= 1 and qdq.top1_equal
    assert {"conv2d", "requantize", "add", "mean", "linear", "dequantize_acc"} <= {d.op for d in exact.nodes}


def test_failing_runner_is_recorded_and_timing_orders_sleepers():
    def boom(x):
        raise RuntimeError("kernel missing")

    s = time_runners({"slow": lambda x: time.sleep(0.004), "fast": lambda x: None, "broken": boom},
                     np.zeros(1), repeats=5, warmup=1)
    assert isinstance(s["broken"], str) and "kernel missing" in s["broken"]
    assert len(s["slow"]) == 5 and np.median(s["slow"]) >= 0.004 > np.median(s["fast"])


def test_missing_integer_graph_and_bad_options(tiny_model, tiny_input):
    from qcompile.bench import run_bench

    before = torch.get_num_threads()
    res = run_bench(tiny_model, tiny_input, options=BenchOptions(threads=1, repeats=1, warmup=0,
                                                                 peers=("torch_fp32", "ort_ours_qdq")))
    st = res.by_name()
    assert st["ort_ours_qdq"].status.startswith("unavailable: no IntegerGraph")
    assert st["torch_fp32"].status == "ok" and st["torch_fp32"].top1_agrees_with_fp32 == 1.0
    assert "unavailable" in to_markdown(res)
    with pytest.raises(ConfigError, match="peers"):
        BenchOptions(peers=("tensorrt",))
    with pytest.raises(ConfigError, match="runners"):
        run_bench(tiny_model, tiny_input, runners={"torch_fp32": lambda x: x},
                  options=BenchOptions(threads=1, repeats=1, warmup=0, peers=("torch_fp32",)))
    assert torch.get_num_threads() == before  # the harness restores torch's thread count
