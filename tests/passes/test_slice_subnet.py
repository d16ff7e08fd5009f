"""slice_subnet / qc.extract: static subnets equal the eager supernet in that config."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import qcompile as qc
from qcompile.nn.elastic import DepthGate, ElasticModule, QuantPoint
from qcompile.quant import calibration
from qcompile.search.cost import count_params


def _check_float(space, net, graph, seed):
    cfg = space.sample(seed=seed)
    x = torch.randn(2, space.in_channels, cfg.resolution, cfg.resolution, generator=torch.Generator().manual_seed(seed))
    qc.set_active(net, cfg)
    with torch.no_grad():
        ref = net(x)
        sub = qc.extract(graph, cfg)
        out = sub(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in sub.parameters()) == count_params(space, cfg)
    assert not any(isinstance(m, (ElasticModule, QuantPoint, DepthGate)) for m in sub.modules())
    return sub


@pytest.mark.parametrize("seed", range(6))
def test_extract_matches_eager_float(tiny_supernets, space_name, seed):
    space, net, graph = tiny_supernets[space_name]
    _check_float(space, net, graph, seed)


@pytest.mark.slow
def test_extract_matches_eager_float_100_configs(tiny_supernets, space_name):
    space, net, graph = tiny_supernets[space_name]
    for seed in range(100):
        _check_float(space, net, graph, 1000 + seed)


def test_subnet_is_static_traceable_and_saveable(tiny_supernets):
    space, net, graph = tiny_supernets["mobilenet_v3"]
    cfg = space.sample(seed=3)
    sub = qc.extract(graph, cfg)
    kinds = {type(m) for m in sub.modules()} - {type(sub)}
    assert kinds <= {qc.nn.static.QConv2d, qc.nn.static.QLinear, nn.BatchNorm2d, nn.ReLU, nn.Hardswish, nn.Hardsigmoid}
    x = torch.randn(1, 3, 32, 32)
    again = torch.fx.symbolic_trace(sub)
    torch.testing.assert_close(again(x), sub(x))
    buf = io.BytesIO()
    torch.save(sub, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded(x), sub(x))


def test_depth_drops_blocks(tiny_supernets):
    space, _, graph = tiny_supernets["mobilenet_v3"]
    small = qc.extract(graph, space.smallest())
    large = qc.extract(graph, space.largest())
    convs = lambda g: sum(isinstance(m, nn.Conv2d) for m in g.modules())  # noqa: E731
    assert convs(small) < convs(large)
    assert "stages_1_blocks_3" not in small.code and "stages_1_blocks_3" in large.code


def _check_quant(space, qnet, seed):
    cfg = space.sample(seed=seed, bits=(2, 3, 4, 8, 32))
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randn(4, space.in_channels, cfg.resolution, cfg.resolution, generator=g) for _ in range(2)]
    qc.set_active(qnet, cfg)
    sub = qc.extract(qnet, cfg)
    qnet.eval()
    sub.eval()
    with torch.no_grad():
        for model in (qnet, sub):
            with calibration(model):
                for b in batches:
                    model(b)
        x = torch.randn(3, space.in_channels, cfg.resolution, cfg.resolution, generator=g)
        assert torch.equal(sub(x), qnet(x)), "extracted fake-quant subnet differs from the quantized supernet"
    bits = {q.active_bits for q in sub.modules() if isinstance(q, qc.quant.ActQuantizer)}
    assert FLOAT not in bits
    return sub


FLOAT = 32


@pytest.mark.parametrize("seed", range(3))
def test_extract_quantized_bit_exact(tiny_quantized, space_name, seed):
    space, qnet = tiny_quantized[space_name]
    _check_quant(space, qnet, seed)


@pytest.mark.slow
def test_extract_quantized_bit_exact_50_configs(tiny_quantized, space_name):
    space, qnet = tiny_quantized[space_name]
    for seed in range(50):
        _check_quant(space, qnet, 500 + seed)


def test_extracted_quantizers_carry_policy_bits(tiny_quantized):
    space, qnet = tiny_quantized["mobilenet_v2"]
    cfg = space.largest(bits=3)
    sub = qc.extract(qnet, cfg)
    wbits = [
        m.weight_quant.active_bits for m in sub.modules() if isinstance(m, qc.nn.static.QConv2d) and m.weight_quant
    ]
    assert wbits.count(3) == sum(1 for s in range(space.num_layer_slots))  # every policy slot at 3 bits
    assert set(wbits) == {3, 8}  # plus the 8-bit fixed layers (first block, head)


def _supernet_state(qnet):
    """Everything an extract could change on the supernet: active choices, LSQ flags and steps, modes."""
    from qcompile.quant.lsq import LSQ

    active = {(n, k): v for n, m in qnet.named_modules() for k, v in vars(m).items() if k.startswith("_active")
              or k.startswith("active")}
    lsq = {n: (m.initialized.clone(), {k: p.detach().clone() for k, p in m.steps.items()})
           for n, m in qnet.named_modules() if isinstance(m, LSQ)}
    return active, lsq, {n: m.training for n, m in qnet.named_modules()}


def _assert_same_state(a, b):
    assert a[0] == b[0] and a[2] == b[2]
    assert a[1].keys() == b[1].keys()
    for n, (init, steps) in a[1].items():
        assert torch.equal(init, b[1][n][0]), n
        assert all(torch.equal(steps[k], b[1][n][1][k]) for k in steps), n


def test_extract_leaves_the_supernet_as_it_found_it():
    """Active subnet, LSQ steps (initialised or not) and modes are unchanged by `qc.extract`; the copy's
    steps are initialised, and the subnet computes what the supernet computes in that config."""
    torch.manual_seed(0)
    space = qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.25, resolutions=(32,))
    qnet = qc.quantize(qc.trace(space.build_supernet()), weight_bits=(2, 4, 8), act_bits=(2, 4, 8))
    qnet.eval()
    qc.set_active(qnet, space.smallest(bits=8))
    before = _supernet_state(qnet)
    assert not any(bool(init.any()) for init, _ in before[1].values() if init.numel())  # untrained: lazy steps
    cfg = space.sample(seed=1, bits=(2, 4))
    sub = qc.extract(qnet, cfg)
    _assert_same_state(_supernet_state(qnet), before)
    wq = [m.weight_quant for m in sub.modules() if getattr(m, "weight_quant", None) is not None]
    assert wq and all(q.is_initialized(q.active_bits) for q in wq)
    # the supernet initialises its own steps lazily on its first forward in `cfg`: same steps, same output
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    qc.set_active(qnet, cfg)
    sub.eval()
    with torch.no_grad():
        for model in (qnet, sub):
            with calibration(model):
                model(x)
        assert torch.equal(sub(x), qnet(x))
