"""Trainer behaviour: one step against hand-derived gradients, resume bit-for-bit, checkpoints, recipes."""

import json

import pytest
import torch
import torch.nn.functional as F
from standin import TinySpace, tiny_set_active

import qcompile.train.checkpoint as ckpt_mod
from qcompile.errors import CheckpointError
from qcompile.train import (
    Phase,
    TrainConfig,
    Trainer,
    bit_inheritance,
    latest_checkpoint,
    load_checkpoint,
)
from qcompile.train.schedule import cosine_lr

FAST = dict(batch_size=32, progress=False, evaluate=False)


def _trainer(net, space, data, phases, **cfg):
    return Trainer(net, space, data, TrainConfig(**{**FAST, **cfg}), phases, activate=tiny_set_active)


def test_one_step_is_sgd_on_summed_sandwich_losses(net, space, digits16):
    """Momentum 0, no decay, no clipping: the update is -lr * grad of sum(CE(largest) + CE + KD(children))."""
    ph = Phase("q", 1, bits=(2, 3, 4), num_random=1)
    tr = _trainer(net, space, digits16, [ph], momentum=0.0, nesterov=False, weight_decay=0.0, grad_clip=1e9)
    x, y = next(iter(tr.loader))
    ref = TinySpace().build_supernet()
    ref.load_state_dict(net.state_dict())
    cfgs = tr.sampler.sample(0, ph)
    total, t_logits = 0.0, None
    for i, c in enumerate(cfgs):
        tiny_set_active(ref, c)
        ref.train()
        out = ref(F.interpolate(x, size=(c.resolution,) * 2, mode="bilinear", antialias=c.resolution < 16))
        logp = F.log_softmax(out, 1)
        ce = -(0.9 * logp.gather(1, y[:, None]).squeeze(1) + 0.1 * logp.mean(1)).mean()
        if i == 0:
            loss, t_logits = ce, out.detach()
        else:
            pt = F.softmax(t_logits, 1)
            loss = ce + (pt * (pt.log() - logp)).sum(1).mean()
        loss.backward()
        total += loss.item()
    before = {k: v.detach().clone() for k, v in ref.named_parameters()}
    lr = cosine_lr(0, tr.steps_per_epoch, 0.05, int(round(0.5 * tr.steps_per_epoch)))
    got = tr.train_step(x, y, ph, 0, tr.steps_per_epoch)
    assert got == pytest.approx(total, rel=1e-5)
    for k, p in net.named_parameters():
        g = dict(ref.named_parameters())[k].grad
        expect = before[k] - lr * g if g is not None else before[k]
        torch.testing.assert_close(p.detach(), expect, rtol=1e-5, atol=1e-7, msg=k)


def test_fair_weight_decay_skips_weights_sampled_at_smallest_bits(net, space, digits16):
    ph = Phase("q", 1, bits=(2, 3, 4))
    tr = _trainer(net, space, digits16, [ph], weight_decay=0.1, fair_weight_decay=True)
    from qcompile.config import QuantPolicy
    from qcompile.train.layers import quant_layers

    layers = quant_layers(net)
    pol_a = QuantPolicy(((2, 2), (3, 3), (4, 4), (2, 2)))
    pol_b = QuantPolicy(((2, 2), (2, 2), (4, 4), (3, 3)))
    cfgs = [space.largest().with_policy(pol_a), space.largest().with_policy(pol_b)]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    tr._weight_decay(cfgs, layers, 2)
    share = {0: 0.0, 1: 0.5, 2: 1.0, 3: 0.5}  # fraction of subnets NOT at 2 bits, per slot
    for ly in layers:
        torch.testing.assert_close(ly.weight.grad, 0.1 * share[ly.slot] * ly.weight.detach())
    torch.testing.assert_close(net.fc.weight.grad, 0.1 * net.fc.weight.detach())
    assert torch.all(net.fc.bias.grad == 0)


PHASES = [Phase("float", 1), Phase("q", 1, bits=(2, 3, 4), num_random=1, bit_schedule=True, idm_weight=0.1)]


def test_resume_reproduces_uninterrupted_run_bit_for_bit(space, digits16, tmp_path):
    torch.manual_seed(0)
    a = _trainer(space.build_supernet(), space, digits16, PHASES, bit_schedule_every=2)
    hist_a = a.fit(max_steps=9)
    torch.manual_seed(0)
    b = _trainer(space.build_supernet(), space, digits16, PHASES, bit_schedule_every=2)
    b.fit(max_steps=7)  # stops inside phase "q", epoch 2
    b.save(tmp_path / "run")
    torch.manual_seed(123)  # a different init and RNG: everything must come from the checkpoint
    c = _trainer(space.build_supernet(), space, digits16, PHASES, bit_schedule_every=2)
    c.resume(tmp_path / "run")
    assert (c.phase_index, c.batch_in_epoch, c.global_step) == (1, 1, 7)
    hist_c = c.fit(max_steps=9)
    assert [h["loss"] for h in hist_c] == [h["loss"] for h in hist_a]
    for (k, va), vc in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.equal(va, vc), k
    for (k, va), vc in zip(a.idm.state_dict().items(), c.idm.state_dict().values()):
        assert torch.equal(va, vc), k


def test_checkpoint_errors_and_atomicity(net, space, digits16, tmp_path, monkeypatch):
    run = tmp_path / "run"
    tr = _trainer(net, space, digits16, [Phase("float", 1)])
    tr.fit(max_steps=1)
    first = tr.save(run)
    tr.fit(max_steps=2)
    # a save that fails half-way leaves `latest` and the previous checkpoint untouched
    monkeypatch.setattr(ckpt_mod.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        tr.save(run)
    monkeypatch.undo()
    assert latest_checkpoint(run) == first
    assert not list(run.glob(".tmp-*"))
    _, meta = load_checkpoint(run)
    assert meta["position"]["global_step"] == 1
    # another space
    other = Trainer(
        net,
        TinySpace(width=8, num_classes=10, resolutions=(16,)),
        digits16,
        TrainConfig(**FAST),
        [Phase("float", 1)],
        activate=tiny_set_active,
    )
    with pytest.raises(CheckpointError, match="space"):
        other.resume(run)
    # corrupt tensors
    data = bytearray((first / "tensors.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (first / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        tr.resume(run)
    (first / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(first)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing")
    meta_keys = json.loads(json.dumps(meta))
    assert {"space", "config", "phases", "position", "data", "optimizer", "rng"} <= set(meta_keys)


def test_fixed_subnet_teacher_distils_every_member_from_the_largest_float_subnet(net, space, digits16):
    """QFA's recipe: each sandwich member's loss is CE + KD against the largest subnet of a frozen
    float supernet, run at the member's resolution, whatever subnet and bits the member has."""
    ph = Phase("q", 1, bits=(2, 3, 4), num_random=1, teacher="external")
    torch.manual_seed(1)
    teacher = TinySpace().build_supernet()
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    tr = Trainer(
        net,
        space,
        digits16,
        TrainConfig(**FAST, grad_clip=1e9),
        [ph],
        activate=tiny_set_active,
        teacher=teacher,
        teacher_config=space.largest(),
    )
    x, y = next(iter(tr.loader))
    ref = TinySpace().build_supernet()
    ref.load_state_dict(net.state_dict())
    ref_teacher = TinySpace().build_supernet()
    ref_teacher.load_state_dict(frozen)
    cfgs = tr.sampler.sample(0, ph)
    assert len({c.resolution for c in cfgs}) > 1 or len({c.depths for c in cfgs}) > 1  # members differ
    total = 0.0
    for c in cfgs:
        xr = F.interpolate(x, size=(c.resolution,) * 2, mode="bilinear", antialias=c.resolution < 16)
        tiny_set_active(ref_teacher, space.largest().with_policy(None))
        ref_teacher.train()
        with torch.no_grad():
            pt = F.softmax(ref_teacher(xr), 1)
        tiny_set_active(ref, c)
        ref.train()
        logp = F.log_softmax(ref(xr), 1)
        ce = -(0.9 * logp.gather(1, y[:, None]).squeeze(1) + 0.1 * logp.mean(1)).mean()
        total += (ce + (pt * (pt.log() - logp)).sum(1).mean()).item()
    got = tr.train_step(x, y, ph, 0, tr.steps_per_epoch)
    assert got == pytest.approx(total, rel=1e-5)
    for k, v in teacher.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, frozen[k]), k  # the teacher stays frozen

def test_bit_inheritance_then_distillation_phase(space, digits16):
    torch.manual_seed(0)
    net = space.build_supernet()
    tr = _trainer(net, space, digits16, [Phase("q4", 1, bits=(4,), sampler="largest")])
    tr.fit(max_steps=3)
    s4 = {k: v.clone() for k, v in net.state_dict().items()}
    teacher = bit_inheritance(net, space, 4, 3, digits16.train.loader(32), tiny_set_active, num_images=64)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, s4[k]), k
    w = net.blocks[0].conv1.weight_quant
    torch.testing.assert_close(w.steps["3"].detach(), 2 * w.steps["4"].detach())
    assert int(net.blocks[0].bn1.num_batches_tracked) == 2  # 64 images = 2 batches, cumulative average
    tr3 = Trainer(
        net,
        space,
        digits16,
        TrainConfig(**FAST),
        [Phase("q3", 1, bits=(3,), teacher="external")],
        activate=tiny_set_active,
        teacher=teacher,
        teacher_bits=4,
    )
    hist = tr3.fit(max_steps=2)
    assert len(hist) == 2 and all(h["loss"] > 0 for h in hist)
    for k, v in teacher.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, s4[k]), k  # the teacher stays frozen


@pytest.mark.slow
def test_short_recipe_learns_digits(space, digits16_full):
    torch.manual_seed(0)
    net = space.build_supernet()
    phases = [Phase("float", 2), Phase("q", 1, bits=(3, 4), num_random=1)]
    tr = _trainer(net, space, digits16_full, phases, evaluate=True)
    tr.fit()
    log = tr.epoch_log
    assert log[-1]["loss"] < log[0]["loss"]
    assert log[1]["acc_largest"] > 0.5  # chance is 0.1
