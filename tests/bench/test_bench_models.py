"""`python -m qcompile.bench --model/--tuned/--lowered`: the acceptance models, tuned rows, reused lowerings and
the table against the fastest INT8 peer."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from qcompile.bench.models import SPACE_MODELS
from qcompile.bench.report import INT8_PEERS, target_table
from qcompile.bench.result import BenchResult, RunnerStats


def test_demo_model_is_the_size_make_demo_deploys():
    from qcompile.cli.demo import DemoSettings

    s = DemoSettings()
    space, classes, width, res, _ = SPACE_MODELS["demo"]
    assert (space, classes, width, res) == (s.space, 10, s.width_mult, max(s.resolutions))
    assert SPACE_MODELS["mobilenet_v3-largest"][:4] == ("mobilenet_v3", 1000, 1.0, 224)


def test_space_model_is_the_largest_subnet_with_overrides():
    from qcompile import ConfigError, spaces
    from qcompile.bench.models import largest_subnet, space_model

    sub = space_model("demo", width=0.25)  # the demo's classes and resolution, a narrower width
    want = largest_subnet("mobilenet_v3", num_classes=10, width=0.25, resolution=32, calib_batch=8)
    assert sub.subnet_config == spaces.get_space("mobilenet_v3", num_classes=10, width_mult=0.25,
                                                 resolutions=(32,)).largest(bits=8)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sub(x), want(x))  # same seed, same calibration batches: the same network
    with pytest.raises(ConfigError, match="'mobilenet_v2'.*demo"):
        space_model("mobilenet_v2")


def _row(name, median, minimum=None):
    return RunnerStats(name, "ok", median_ms=median, p10_ms=median, p90_ms=median, min_ms=minimum or median, n=3)


def test_target_table_against_the_fastest_int8_peer():
    res = BenchResult((_row("ort_fp32", 1.0), _row("ort_int8_qdq", 5.0, 4.0), _row("openvino_int8_qdq", 4.0, 3.0),
                       _row("executorch_xnnpack_int8", 6.0), _row("qcompile_tvm_x_untuned", 3.9, 3.3),
                       _row("qcompile_tvm_x_tuned", 3.3, 2.4)))
    lines = target_table(res)
    # the fp32 row is faster but not an INT8 peer: OpenVINO INT8 (4.0 ms) is the reference
    assert lines[0] == "### qcompile against the fastest INT8 peer (openvino_int8_qdq, median 4.00 ms)"
    assert "| qcompile_tvm_x_untuned | 3.90 | 0.97 | 1.10 | <= 1.0 | yes |" in lines
    assert "| qcompile_tvm_x_tuned | 3.30 | 0.82 | 0.80 | <= 0.8 | no |" in lines  # 3.3 / 4.0 > 0.8
    failed = RunnerStats("openvino_int8_qdq", "failed: x")
    rows = tuple(failed if r.name == "openvino_int8_qdq" else r for r in res.runners)
    assert "(ort_int8_qdq, median 5.00 ms)" in target_table(BenchResult(rows))[0]
    assert target_table(BenchResult(tuple(r for r in res.runners if r.name not in INT8_PEERS))) == []


@pytest.fixture
def spy_lower(monkeypatch):
    """Records (tune, $QCOMPILE_CACHE) of every `qc.lower` the bench rows make."""
    from qcompile import api

    calls, real = [], api.lower

    def lower(*args, **kwargs):
        calls.append((kwargs.get("tune", False), os.environ.get("QCOMPILE_CACHE")))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "lower", lower)
    return calls


def test_untuned_row_ignores_the_database_and_lowerings_are_reused(tiny_graph, tiny_input, tmp_path, monkeypatch,
                                                                  spy_lower):
    from qcompile.bench.peers import lowering_key, tvm_runners

    cache = tmp_path / "cache"
    monkeypatch.setenv("QCOMPILE_CACHE", str(cache))
    runners, targets = tvm_runners(tiny_graph, ["host"], 1, tiny_input.shape, lowered_dir=tmp_path / "low")
    ((name, spec),) = runners.items()
    assert name == f"qcompile_tvm_{targets[name]['mcpu']}_untuned"
    ((tune, db),) = spy_lower
    assert not tune and db not in (None, str(cache)) and os.environ["QCOMPILE_CACHE"] == str(cache)
    ref = tiny_graph(torch.from_numpy(tiny_input)).numpy()
    np.testing.assert_array_equal(spec.build()(tiny_input), ref)
    again, _ = tvm_runners(tiny_graph, ["host"], 1, tiny_input.shape, lowered_dir=tmp_path / "low")
    assert len(spy_lower) == 1 and list(again) == [name]  # same settings: the export is loaded, nothing lowered
    np.testing.assert_array_equal(again[name].build()(tiny_input), ref)
    key = lowering_key(tiny_graph, "x86", 1, tiny_input.shape, False, None)
    assert key == lowering_key(tiny_graph, "x86", 1, tiny_input.shape, False, None)
    others = [lowering_key(tiny_graph, "x86", 2, tiny_input.shape, False, None),
              lowering_key(tiny_graph, "x86", 1, tiny_input.shape, True, 12),
              lowering_key(tiny_graph, "x86", 1, (2, *tiny_input.shape[1:]), False, None)]
    assert key not in others and len(set(others)) == 3


@pytest.mark.slow
def test_tuned_row_tunes_into_the_database_and_is_reused(tiny_graph, tiny_input, tmp_path, monkeypatch, spy_lower):
    from qcompile.bench.peers import tvm_runners

    cache = tmp_path / "cache"
    monkeypatch.setenv("QCOMPILE_CACHE", str(cache))
    runners, targets = tvm_runners(tiny_graph, ["host"], 1, tiny_input.shape, tuned=True, trials=1,
                                   lowered_dir=tmp_path / "low")
    mcpu = next(iter(targets.values()))["mcpu"]
    assert list(runners) == [f"qcompile_tvm_{mcpu}_untuned", f"qcompile_tvm_{mcpu}_tuned"]
    (untuned, untuned_db), (tuned, tuned_db) = spy_lower
    # the untuned row never sees the persistent database; the tuned one tunes into it
    assert (untuned, tuned, tuned_db) == (False, True, str(cache)) and untuned_db != str(cache)
    assert any((cache / "tuning").glob("*.json"))
    ref = tiny_graph(torch.from_numpy(tiny_input)).numpy()
    for spec in runners.values():
        np.testing.assert_array_equal(spec.build()(tiny_input), ref)
    again, _ = tvm_runners(tiny_graph, ["host"], 1, tiny_input.shape, tuned=True, trials=1,
                           lowered_dir=tmp_path / "low")
    assert len(spy_lower) == 2 and list(again) == list(runners)
    np.testing.assert_array_equal(again[f"qcompile_tvm_{mcpu}_tuned"].build()(tiny_input), ref)


def test_harness_program_is_what_the_harness_lowers():
    """`models.harness_program` (the harness's and `benchmarks.tune_peers`' one builder): MobileNetV2's synthetic
    program and the space models' integer graph, the same program twice (so an exported lowering's key matches)."""
    from qcompile.bench.models import harness_program
    from qcompile.bench.peers import lowering_key

    net, ig, title = harness_program("mobilenet_v2", width=0.25, resolution=32, classes=10)
    assert title == "MobileNetV2 (width 0.25) 32x32"
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    _, ig2, _ = harness_program("mobilenet_v2", width=0.25, resolution=32, classes=10)
    assert lowering_key(ig, "x86", 2, (1, 3, 32, 32), True, 8) == lowering_key(ig2, "x86", 2, (1, 3, 32, 32), True, 8)
    _, _, title = harness_program("demo", width=0.25)
    assert title == "largest 8-bit mobilenet_v3 subnet (width 0.25, 10 classes) 32x32"
