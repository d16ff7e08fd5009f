"""Formula-level tests: schedules, losses, Eq. 6 criterion, Eq. 8 IDM, sampler, inheritance, calibrate."""

import math

import numpy as np
import pytest
import torch
from standin import NUM_SLOTS, tiny_set_active

from qcompile.config import QuantPolicy
from qcompile.errors import ConfigError
from qcompile.quant import LSQ, BatchQuant
from qcompile.train import (
    BitScheduler,
    IDMAlign,
    Phase,
    SandwichSampler,
    calibrate,
    cosine_lr,
    cosine_topk,
    inherit_bits,
    kd_loss,
    unstable_fraction,
)


def test_cosine_lr_and_topk_closed_form():
    assert cosine_lr(0, 100, 0.1, warmup=10) == pytest.approx(0.01)
    assert cosine_lr(9, 100, 0.1, warmup=10) == pytest.approx(0.1)
    assert cosine_lr(55, 100, 0.1, warmup=10, floor=0.02) == pytest.approx(0.06)  # half-way: mean
    assert cosine_lr(100, 100, 0.1, warmup=10) == pytest.approx(0.0, abs=1e-12)
    for s in range(0, 101, 7):
        t = s / 100
        assert cosine_topk(s, 100, 8) == round(8 * 0.5 * (1 + math.cos(math.pi * t)))
    assert cosine_topk(0, 100, 8) == 8 and cosine_topk(100, 100, 8) == 0


def test_kd_loss_matches_numpy_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for temp in (1.0, 2.0):
        ps = np.exp(s.numpy() / temp) / np.exp(s.numpy() / temp).sum(1, keepdims=True)
        pt = np.exp(t.numpy() / temp) / np.exp(t.numpy() / temp).sum(1, keepdims=True)
        ref = temp**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), 1))
        assert float(kd_loss(s, t, temp)) == pytest.approx(ref, rel=1e-5)


def test_idm_matches_eq8_in_numpy():
    g = torch.Generator().manual_seed(1)
    lo, hi = torch.randn(4, 6, 3, 3, generator=g), torch.randn(4, 6, 3, 3, generator=g) * 2 + 1
    m = IDMAlign(8, floor=0.1, eps=1e-5)
    with torch.no_grad():
        m.eta_s.uniform_(0.5, 1.5)
        m.xi_h.uniform_(-0.2, 0.2)

    def adapt(o, eta, xi):
        mu = o.mean(axis=(0, 2, 3), keepdims=True)
        var = o.var(axis=(0, 2, 3), keepdims=True)
        z = (o - mu) / np.sqrt(var + 1e-5) * eta[:6].reshape(1, 6, 1, 1) + xi[:6].reshape(1, 6, 1, 1)
        return np.maximum(0.1, z)

    p = {k: v.detach().numpy() for k, v in m.named_parameters()}
    a = adapt(lo.numpy(), p["eta_s"], p["xi_s"])
    b = adapt(hi.numpy(), p["eta_h"], p["xi_h"])
    ref = np.mean(np.sqrt(((a - b) ** 2).reshape(4, -1).sum(1)))
    out = m(lo.requires_grad_(), hi)
    assert out.item() == pytest.approx(ref, rel=1e-5)
    out.backward()
    assert lo.grad is not None and lo.grad.abs().sum() > 0


@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
def test_unstable_fraction_counts_weights_near_quantization_bounds(eps):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 8, generator=g) * 0.3
    step, bits = torch.tensor(0.11), 3
    count, nz = unstable_fraction(w, step, bits, eps)
    wn, gamma = w.numpy().ravel(), 0.11
    ref = 0
    for q in range(-(2 ** (bits - 1)), 2 ** (bits - 1)):  # Eq. 6: sum over the levels of Phi_b
        d = np.abs(wn - q * gamma)
        near_q = d < gamma / 2 + 1e-12  # the cell of level q
        ref += int(np.sum(near_q & (d >= gamma * (1 - eps) / 2 - 1e-9)))
    assert count == ref and nz == 128
    if eps == 1.0:
        lo, hi = -4.5 * gamma, 3.5 * gamma
        assert count == int(np.sum((wn >= lo) & (wn <= hi)))


def test_bit_scheduler_freezes_top_k_slots_at_min_bits(net, space):
    tiny_set_active(net, space.largest(bits=2))
    net(torch.randn(4, 3, 16, 16))  # initialise the 2-bit steps
    tiny_set_active(net, space.largest(bits=3))
    net(torch.randn(4, 3, 16, 16))
    sched = BitScheduler((2, 3, 4), eps=0.5, topk_fraction=0.5, every=1)
    sched.update(net, step=0, total=10)
    assert len(sched.scores) == NUM_SLOTS and len(sched.frozen) == 2
    top = sorted(sched.scores, key=lambda s: -sched.scores[s])[:2]
    assert set(sched.frozen) == set(top)
    cfg = space.largest(bits=2)
    out = sched.constrain(cfg)
    for s in range(NUM_SLOTS):
        assert out.policy[s] == ((3, 2) if s in sched.frozen else (2, 2))
    sched.update(net, step=10, total=10)  # K decays to 0 at the end
    assert sched.frozen == ()


def test_sandwich_sampler(space):
    smp = SandwichSampler(space, seed=0)
    ph = Phase("q", 1, bits=(2, 3, 4), num_random=2)
    cfgs = smp.sample(5, ph)
    assert len(cfgs) == 4
    big, small = space.largest(), space.smallest()
    assert (cfgs[0].depths, cfgs[0].kernels, cfgs[0].expands) == (big.depths, big.kernels, big.expands)
    assert (cfgs[1].depths, cfgs[1].kernels, cfgs[1].expands) == (small.depths, small.kernels, small.expands)
    for c in cfgs[:2]:  # QFA: the extremes at one random bit-width for the whole network
        assert len(set(c.policy.bits)) == 1 and c.policy.bits[0][0] in (2, 3, 4)
    assert smp.sample(5, ph) == cfgs and smp.sample(6, ph) != cfgs
    # progressive shrinking: only kernels elastic, everything else from the largest
    ps = Phase("k", 1, bits=None, elastic=("kernel",), num_random=6)
    for c in smp.sample(1, ps)[1:]:
        assert (c.resolution, c.depths, c.expands) == (big.resolution, big.depths, big.expands)
    assert {c.kernels for c in smp.sample(1, ps)[1:]} != {big.kernels}
    ext = Phase("e", 1, bits=(2, 3, 4, 32), extreme_bits="extreme")
    a, b = smp.sample(0, ext)[:2]
    assert a.policy is None and b.policy == QuantPolicy.uniform(NUM_SLOTS, 2)
    with pytest.raises(ConfigError, match="sampler"):
        Phase("x", 1, sampler="random")


def test_inherit_bits_doubles_lsq_steps_and_copies_batchquant():
    lsq = LSQ((2, 3, 4), per_channel=True, num_channels=5)
    bq = BatchQuant((2, 3, 4))
    w = torch.randn(5, 3)
    lsq.active_bits = 4
    lsq(w)
    with torch.no_grad():
        bq.gamma["4"].fill_(1.3)
        bq.beta["4"].fill_(-0.2)
    model = torch.nn.ModuleDict({"w": lsq, "a": bq})
    assert inherit_bits(model, 4, 3) == 2
    torch.testing.assert_close(lsq.steps["3"].detach(), 2 * lsq.steps["4"].detach())
    assert lsq.is_initialized(3)
    # beta is a zero-point shift in codes: 3-bit codes are (2^4 - 1) / (2^3 - 1) times coarser.
    assert bq.gamma["3"].item() == pytest.approx(1.3) and bq.beta["3"].item() == pytest.approx(-0.2 * 7 / 15)
    with pytest.raises(ConfigError):
        inherit_bits(model, 4, 8)


def test_calibrate_matches_cumulative_batch_statistics(net, space):
    cfg = space.sample(seed=3, bits=(2, 3, 4))
    cfg = type(cfg)(16, (2,), cfg.kernels, cfg.expands, policy=cfg.policy)
    tiny_set_active(net, cfg)
    with torch.no_grad():
        net(torch.randn(2, 3, 16, 16))  # LSQ initialises its steps on first use; not calibration's doing
    params = {k: v.clone() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(3)]
    bn_in, q_in = [], []
    hooks = [
        net.blocks[0].bn1.register_forward_pre_hook(lambda m, a: bn_in.append(a[0].detach().clone())),
        net.blocks[1].conv2.act_quant.register_forward_pre_hook(
            lambda m, a: q_in.append(a[0].detach().clone())
        ),
    ]
    assert calibrate(net, batches) is net and net.calibrated_images == 24
    for h in hooks:
        h.remove()
    assert not net.training
    for k, v in net.named_parameters():
        assert torch.equal(v, params[k]), k
    c = bn_in[0].shape[1]
    means = np.stack([x.numpy().mean(axis=(0, 2, 3)) for x in bn_in])
    vars_ = np.stack([x.numpy().var(axis=(0, 2, 3), ddof=1) for x in bn_in])
    bn = net.blocks[0].bn1
    np.testing.assert_allclose(bn.running_mean[:c].numpy(), means.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_var[:c].numpy(), vars_.mean(0), rtol=1e-4, atol=1e-5)
    # BatchQuant Eq. 8 estimator: per-channel min/max averaged over channels, running mean over batches
    mins = [x.numpy().min(axis=(0, 2, 3)).mean() for x in q_in]
    maxs = [x.numpy().max(axis=(0, 2, 3)).mean() for x in q_in]
    q = net.blocks[1].conv2.act_quant
    assert q.is_calibrated
    assert float(q.running_min) == pytest.approx(np.mean(mins), rel=1e-5)
    assert float(q.running_max) == pytest.approx(np.mean(maxs), rel=1e-5)
    assert net.blocks[0].bn1.momentum == 0.1
