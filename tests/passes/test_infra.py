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


@register
@dataclass(frozen=True)
class _Typed(Pass):
    name = "test-typed"
    bits: tuple[int, ...] = (8,)
    scale: float = 1.0
    count: int = 0
    flag: bool = False
    label: str = "x"
    shape: tuple[int, ...] | None = None

    def run(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(gm, False)


def test_options_are_parsed_by_field_type_tuples_included():
    (p,) = parse_pipeline("test-typed{bits=2,3,4 scale=0.5 count=7 flag=true label=abc shape=1,3,32,32}")
    assert (p.bits, p.scale, p.count, p.flag, p.label, p.shape) == ((2, 3, 4), 0.5, 7, True, "abc", (1, 3, 32, 32))
    assert isinstance(p.scale, float) and isinstance(p.count, int)
    # commas between options parse too: a comma followed by `field=` starts the next option
    (q,) = parse_pipeline("test-typed{count=3,bits=2,4,flag=false}")
    assert (q.count, q.bits, q.flag) == (3, (2, 4), False)
    # spec() writes the xDSL syntax back and parses to an equal pass
    assert p.spec() == "test-typed{bits=2,3,4 scale=0.5 count=7 flag=true label=abc shape=1,3,32,32}"
    assert parse_pipeline(pipeline_string([p, q])) == [p, q]
    (n,) = parse_pipeline("test-typed{shape=none}")
    assert n.shape is None and n.spec() == "test-typed"


@pytest.mark.parametrize(
    "text, match",
    [
        ("test-typed{count=two}", r"test-typed\.count: got 'two'; allowed: an integer"),
        ("test-typed{flag=yes}", r"test-typed\.flag: got 'yes'; allowed: true or false"),
        ("test-typed{bits=2,x}", r"test-typed\.bits: got 'x'; allowed: an integer"),
        ("test-typed{scale=fast}", r"test-typed\.scale: got 'fast'; allowed: a number"),
        ("test-typed{nope=1}", r"test-typed\.nope: got '1'; allowed: \['bits', 'count', 'flag'"),
        ("test-typed{count=1 count=2}", r"test-typed\.count"),
        ("test-typed{count}", r"pipeline option of test-typed: got 'count'"),
        ("test-typed{count=1", r"balanced braces"),
        ("no-such-pass{a=1}", r"pass: got 'no-such-pass'; allowed: \[.*'fold-bn'"),
    ],
)
def test_bad_pipeline_strings_name_pass_option_value_and_allowed(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_pipeline(text)


def test_duplicate_pass_name_is_an_error():
    @dataclass(frozen=True)
    class Other(Pass):
        name = "test-typed"

        def run(self, gm):
            return PassResult(gm, False)

    with pytest.raises(ConfigError, match="test-typed.*already registered by .*_Typed"):
        register(Other)
    assert registered()["test-typed"] is _Typed
    register(_Typed)  # the same class again (a re-imported module) is fine


def test_manager_does_not_register_plain_functions():
    def local_only_probe(gm):
        return None

    pm = PassManager([local_only_probe])
    assert pm.pipeline == "local-only-probe" and "local-only-probe" not in registered()
    pm.run(fx.symbolic_trace(_Net()))
    assert "local-only-probe" not in registered()


def test_pass_errors_about_the_input_keep_their_type_with_context(tmp_path):
    from qcompile.errors import LoweringError

    @dataclass(frozen=True)
    class Refuse(Pass):
        name = "test-refuse"

        def run(self, gm):
            raise LoweringError("node a", "refused", "do something else")

    with pytest.raises(LoweringError, match="node a: refused") as e:
        PassManager(["test-scale-output", Refuse()]).run(fx.symbolic_trace(_Net()))
    note = "".join(e.value.__notes__)
    assert "in pass 'test-refuse'; passes before it: test-scale-output" in note
    assert "test-scale-output,test-refuse" in Path(note.split("pipeline: ")[1]).read_text()


def test_insert_quantizers_exposes_every_option_of_qc_quantize():
    import dataclasses
    import inspect

    import qcompile as qc
    from qcompile.passes.insert_quantizers import InsertQuantizers

    api = [p for p in inspect.signature(qc.quantize).parameters if p != "graph"]
    assert sorted(f.name for f in dataclasses.fields(InsertQuantizers)) == sorted(api)
    (p,) = parse_pipeline("insert-quantizers{weight_bits=2,3,4 act_bits=4,8 per_channel=true residual_bits=8}")
    assert (p.weight_bits, p.act_bits, p.per_channel) == ((2, 3, 4), (4, 8), True)
    with pytest.raises(ConfigError, match=r"weight_bits: got \[9\]; allowed"):
        parse_pipeline("insert-quantizers{weight_bits=2,9}")
    with pytest.raises(ConfigError, match="act_quant: got 'lsq'"):
        parse_pipeline("insert-quantizers{act_quant=lsq}")
