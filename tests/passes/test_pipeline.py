"""`to_integer` as a pass pipeline: default in effect, documented strings, custom passes, ProgramMeta,
and `slice_subnet` leaving the supernet's active subnet alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import fx

import qcompile as qc
from qcompile.errors import ConfigError
from qcompile.ops.meta import ProgramMeta, program_meta
from qcompile.passes import Pass, PassResult, register
from qcompile.passes.to_integer import DEFAULT_PIPELINE


@register
@dataclasses.dataclass(frozen=True)
class _CountOps(Pass):
    """An analysis on the integer program: writes node.meta only."""

    name = "test-count-integer-ops"
    tag: str = "seen"

    def run(self, gm: fx.GraphModule) -> PassResult:
        for n in gm.graph.nodes:
            n.meta[self.tag] = True
        return PassResult(gm, False)


@pytest.fixture(scope="module")
def calibrated(tiny_quantized):
    space, qnet = tiny_quantized["mobilenet_v3"]
    cfg = space.sample(seed=3, bits=(2, 3, 4))
    sub = qc.extract(qnet, cfg)
    g = torch.Generator().manual_seed(0)
    qc.calibrate(sub, [torch.rand(8, 3, 32, 32, generator=g) for _ in range(2)])
    return space, cfg, sub


def test_pipelines_agree_bit_for_bit(calibrated):
    _, cfg, sub = calibrated
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = qc.to_integer(sub)
    assert ref.program_meta["pipeline"] == DEFAULT_PIPELINE
    for pipe in (DEFAULT_PIPELINE, "fold-bn,fold-batchquant-bias,to-integer{check_overflow=true}",
                 DEFAULT_PIPELINE + ",test-count-integer-ops{tag=probe}"):
        ig = qc.to_integer(sub, pipeline=pipe)
        assert ig.program_text() == ref.program_text(), pipe
        assert torch.equal(ig(x), ref(x)), pipe
        assert ig.program_meta["pipeline"] == pipe.replace("{check_overflow=true}", "")  # defaults left out
    assert all(n.meta.get("probe") for n in ig.graph.nodes)  # the custom pass ran on the integer program
    # the documented string folds once: to-integer itself does not fold, so alone it leaves the
    # quantized layers unfolded and lowers them as float islands
    unfolded = qc.to_integer(sub, pipeline="to-integer").program_meta["float_islands"]
    assert len(unfolded) > len(ref.program_meta["float_islands"]) + 5


def test_pipeline_without_lowering_is_refused(calibrated):
    _, _, sub = calibrated
    with pytest.raises(ConfigError, match="pipeline: got 'fold-bn,fold-batchquant-bias'; allowed: a pipeline"):
        qc.to_integer(sub, pipeline="fold-bn,fold-batchquant-bias")
    with pytest.raises(ConfigError, match="pass: got 'lower-to-integr'"):
        qc.lower(sub, target="x86", pipeline="fold-bn,lower-to-integr")
    with pytest.raises(ConfigError, match="pipeline"):
        qc.lower(qc.to_integer(sub), target="x86", pipeline=DEFAULT_PIPELINE)


def test_program_meta_records_config_shape_pad_codes_and_islands(calibrated):
    space, cfg, sub = calibrated
    ig = qc.to_integer(sub)
    meta = program_meta(ig)
    assert meta.config == cfg and meta.policy == cfg.policy
    assert meta.input_shape == (1, space.in_channels, cfg.resolution, cfg.resolution)
    convs = {n.name: n for n in ig.graph.nodes if n.target is qc.ops.conv2d}
    padded = {k: int(n.kwargs["pad_value"]) for k, n in convs.items() if any(n.kwargs["padding"])}
    assert padded and dict(meta.pad_codes) == padded
    assert "output: graph output" in meta.float_islands
    # the JSON form round-trips, also through IntegerGraph.save / load
    assert ProgramMeta.from_dict(meta.to_dict()) == meta
    assert ig.program_meta["policy"] == [list(p) for p in cfg.policy]


def test_program_meta_survives_save_and_load(calibrated, tmp_path):
    _, _, sub = calibrated
    ig = qc.to_integer(sub)
    loaded = qc.ops.IntegerGraph.load(ig.save(tmp_path / "program"))
    assert program_meta(loaded) == program_meta(ig)
    assert program_meta(loaded, (2, 3, 32, 32)).input_shape == (2, 3, 32, 32)


def test_slice_subnet_leaves_the_active_subnet_as_it_found_it(tiny_quantized):
    space, qnet = tiny_quantized["mobilenet_v2"]
    a, b = space.sample(seed=10, bits=(2, 4)), space.sample(seed=11, bits=(3, 8))
    qc.set_active(qnet, a)

    def state():
        return [(name, {k: v for k, v in vars(m).items() if k.startswith("active")})
                for name, m in qnet.named_modules()]

    before = state()
    sub = qc.extract(qnet, b)
    assert state() == before
    assert sub.meta["subnet_config"] == b and sub.meta["input_shape"] == (1, 3, b.resolution, b.resolution)


def test_program_meta_refuses_a_config_that_is_not_one():
    with pytest.raises(ConfigError, match=r"program_meta\.config: got \{'resolution': 12\}.*kernels"):
        ProgramMeta.from_dict({"config": {"resolution": 12}})
    with pytest.raises(ConfigError, match=r"input_shape: got \(1, 0, 4, 4\)"):
        ProgramMeta(input_shape=(1, 0, 4, 4))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pipeline", "fold-bn,lower-to-integer{strict=maybe}"],
         "lower-to-integer.strict: got 'maybe'; allowed: true or false"),
        # a name no test registers (test_infra registers "my-pass" in whichever worker runs it)
        (["--pipeline", "fold-bn,no-such-pass"], "pass: got 'no-such-pass'; allowed: ["),
        (["--pass-module", "no_such_passes.py", "--pipeline", "fold-bn"], "--pass-module: got 'no_such_passes.py'"),
    ],
)
def test_cli_bad_pipeline_fails_first_with_one_line(capsys, tmp_path, extra, message):
    from qcompile.cli import main

    for cmd in (["lower", str(tmp_path / "no-subnet"), "--out", str(tmp_path / "o")],
                ["export-onnx", str(tmp_path / "no-subnet"), "--out", str(tmp_path / "m.onnx")]):
        assert main(cmd + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
