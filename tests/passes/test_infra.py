"""Pass infrastructure: registry, pipeline strings, PassManager instruments and failure reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from qcompile.errors import ConfigError, PassError
from qcompile.passes import Pass, PassManager, PassResult, parse_pipeline, pipeline_string, register, registered


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.ReLU()

    def forward(self, x):
        return self.b(self.a(x)) * 2


@register
@dataclass(frozen=True)
class _ScaleOutput(Pass):
    name = "test-scale-output"
    factor: float = 3.0

    def run(self, gm: fx.GraphModule) -> PassResult:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            m = gm.graph.call_function(torch.mul, (out.args[0], self.factor))
        out.args = (m,)
        gm.recompile()
        return PassResult(gm, True)


@register
@dataclass(frozen=True)
class _Breaker(Pass):
    name = "test-breaker"

    def run(self, gm: fx.GraphModule) -> PassResult:
        n = next(n for n in gm.graph.nodes if n.op == "call_module")
        n.target = "does.not.exist"
        return PassResult(gm, True)


def _count_nodes(gm: fx.GraphModule) -> None:
    for n in gm.graph.nodes:
        n.meta["seen"] = True


def test_registry_and_pipeline_round_trip():
    assert "test-scale-output" in registered()
    ps = parse_pipeline("test-scale-output{factor=0.5}, test-scale-output")
    assert [p.factor for p in ps] == [0.5, 3.0]
    assert pipeline_string(ps) == "test-scale-output{factor=0.5},test-scale-output"
    with pytest.raises(ConfigError, match="no-such-pass"):
        parse_pipeline("no-such-pass")
    with pytest.raises(ConfigError, match="test-scale-output.bogus"):
        parse_pipeline("test-scale-output{bogus=1}")


def test_builtin_passes_registered():
    names = registered()
    for n in ("slice-subnet", "insert-quantizers"):
        assert n in names


def test_manager_runs_in_order_and_records():
    gm = fx.symbolic_trace(_Net())
    x = torch.randn(2, 4)
    ref = gm(x)
    pm = PassManager(["test-scale-output{factor=2}", _count_nodes])
    res = pm.run(gm)
    torch.testing.assert_close(res.graph_module(x), ref * 2)
    assert [r.name for r in pm.records] == ["test-scale-output", "count-nodes"]
    assert pm.records[0].modified and not pm.records[1].modified
    assert pm.records[0].nodes_after == pm.records[0].nodes_before + 1
    assert all(n.meta.get("seen") for n in res.graph_module.graph.nodes)
    assert "test-scale-output" in pm.timing_table()
    # op order on gm.code: the new multiply comes after the original one
    code = res.graph_module.code
    assert code.index("mul") < code.index("torch.mul")


def test_failure_names_pass_and_predecessors(tmp_path):
    gm = fx.symbolic_trace(_Net())
    pm = PassManager("test-scale-output,test-breaker")
    with pytest.raises(PassError) as e:
        pm.run(gm)
    msg = str(e.value)
    assert "test-breaker" in msg and "passes before it: test-scale-output" in msg
    repro = msg.split("reproducer with gm.code and the pipeline: ")[1]
    assert "test-scale-output,test-breaker" in Path(repro).read_text()


def test_function_passes_wrap_and_reject_bad_names():
    def my_pass(gm, k=1):
        return gm

    cls = register(my_pass)
    assert cls.name == "my-pass" and cls().k == 1
    with pytest.raises(ConfigError, match="kebab"):
        register(my_pass, name="Bad_Name")
