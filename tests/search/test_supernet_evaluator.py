"""SupernetEvaluator: measured accuracy equals an independent evaluation, JSONL cache reuse, canonical keys,
and `qcompile predictor collect` sharded over 2 local processes, resumed, then `fit`."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import qcompile.search as qs
from qcompile import ConfigError
from qcompile.search.predictors.measured import config_hash, load_records, model_fingerprint, read_jsonl
from qcompile.train.evaluate import evaluate_subnets

ROOT = Path(__file__).resolve().parents[2]


def test_measures_val_split_and_caches(tspace, tqnet, tdigits, tmp_path):
    cache = tmp_path / "acc.jsonl"
    cfgs = [tspace.sample(seed=i, bits=(2, 3, 4)) for i in range(3)]
    ev = qs.SupernetEvaluator(tqnet, tdigits, calib_batches=1, batch_size=32, cache=cache, progress=False)
    got = ev.predict(cfgs)
    ref = evaluate_subnets(tqnet, tspace, tdigits, cfgs, calib_batches=1, split="val", batch_size=32, seed=1)
    assert isinstance(got, np.ndarray) and np.allclose(got, ref)
    assert ev.n_measured == 3 and len(read_jsonl(cache)) == 3
    # a new evaluator (another run) reuses the file: nothing is measured again
    ev2 = qs.SupernetEvaluator(tqnet, tdigits, calib_batches=1, batch_size=32, cache=cache, progress=False)
    assert np.array_equal(ev2.predict(cfgs[::-1]), got[::-1]) and ev2.n_measured == 0
    # another protocol (calibration seed) is another key
    ev3 = qs.SupernetEvaluator(tqnet, tdigits, calib_batches=1, batch_size=32, calib_seed=2, cache=cache,
                               progress=False)
    ev3.predict(cfgs[:1])
    assert ev3.n_measured == 1 and len(read_jsonl(cache)) == 4
    # fitting reads one protocol (the most common) and one record per config: cfgs[0] is not counted twice
    space, fit_cfgs, fit_acc, recs = load_records(cache)
    assert [c.stable_hash() for c in fit_cfgs] == [c.stable_hash() for c in cfgs]
    assert np.array_equal(fit_acc, got) and {r["calib_seed"] for r in recs} == {1}
    # usable as an objective's function
    acc = qs.Objective("accuracy", ev2.predict, direction="max")
    assert np.array_equal(acc(cfgs), got)


def _reference(qnet, space, data, cfg, images, labels, seed, calib_batches=1, batch_size=32):
    """Independent measurement: extract, calibrate on seeded training batches, top-1 and CE on given images."""
    import torch

    from qcompile import api as qc
    from qcompile.data.base import resize

    sub = qc.extract(qnet, cfg)
    qc.calibrate(sub, data.train.loader(batch_size, shuffle=True, seed=seed, resolution=cfg.resolution),
                 max_batches=calib_batches)
    sub.eval()
    with torch.no_grad():
        out = sub(resize(images, cfg.resolution))
    return float((out.argmax(1) == labels).float().mean()), float(torch.nn.functional.cross_entropy(out, labels))


def test_less_noisy_protocol_seed_average_extra_train_and_loss(tspace, tqnet, tdigits, tmp_path):
    """`calib_seeds` averages seeds, `extra_train` adds a fixed training subset, `loss` is the mean CE."""
    import torch

    from qcompile.search.predictors.measured import EXTRA_TRAIN_SEED, EvalProtocol

    cfg = tspace.sample(seed=5, bits=(2, 3, 4))
    ev = qs.SupernetEvaluator(tqnet, tdigits, calib_batches=1, batch_size=32, calib_seeds=2, extra_train=50,
                              cache=tmp_path / "a.jsonl", progress=False)
    got_acc, got_loss = ev.predict([cfg])[0], ev.loss([cfg])[0]
    assert ev.n_measured == 1  # loss comes with the same measurement
    idx = torch.randperm(len(tdigits.train), generator=torch.Generator().manual_seed(EXTRA_TRAIN_SEED))[:50]
    images = torch.cat([tdigits.val.images, tdigits.train.images[idx]])
    labels = torch.cat([tdigits.val.labels, tdigits.train.labels[idx]])
    assert len(ev.eval_set) == len(tdigits.val) + 50
    ref = [_reference(tqnet, tspace, tdigits, cfg, images, labels, seed) for seed in (1, 2)]
    assert got_acc == pytest.approx(np.mean([r[0] for r in ref]), abs=1e-6)
    assert got_loss == pytest.approx(np.mean([r[1] for r in ref]), rel=1e-4)
    rec = read_jsonl(tmp_path / "a.jsonl")[0]
    assert rec["calib_seeds"] == 2 and rec["extra_train"] == 50 and rec["loss"] == pytest.approx(got_loss)
    # the default protocol's key fields are the four of caches written before the new fields existed
    assert set(EvalProtocol().key_fields()) == {"split", "calib_batches", "calib_seed", "batch_size"}
    assert "extra_train" in EvalProtocol(extra_train=5).key_fields()
    with pytest.raises(ConfigError, match="extra_train"):
        qs.SupernetEvaluator(tqnet, tdigits, extra_train=10**6, progress=False)
    with pytest.raises(ConfigError, match="calib_seeds"):
        qs.SupernetEvaluator(tqnet, tdigits, calib_seeds=0, progress=False)


@pytest.mark.parametrize("flavour", ["fixed-point", "qdq"])
def test_fast_measurement_is_bit_identical_to_the_reference(tspace, tqnet, tdigits, flavour):
    """`_top1_loss` (cached batches, weights and quantizer constants computed once, inference mode) gives the
    top-1 and the loss of `_top1_loss_reference` (the measurement as first written) to the last bit, for
    configs with 2..8 and 32-bit layers, two calibration seeds, each config twice (the second from the data
    caches), on a supernet whose BatchQuant residuals were moved off their initial values (fractional zero
    points: the zero-code padding path) in both flavours."""
    import copy

    import torch

    from qcompile.quant.batchquant import BatchQuant
    from qcompile.quant.flavour import set_flavour

    qnet = set_flavour(copy.deepcopy(tqnet), flavour)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in qnet.modules():
            if isinstance(m, BatchQuant):
                for b in m.gamma:
                    m.gamma[b].mul_(0.8 + 0.4 * torch.rand((), generator=g))
                    m.beta[b].add_(torch.rand((), generator=g) - 0.5)
    ev = qs.SupernetEvaluator(qnet, tdigits, space=tspace, calib_batches=3, batch_size=32, extra_train=300,
                              progress=False)
    cfgs = [tspace.sample(seed=i, bits=(2, 3, 4, 8, 32)) for i in range(3)] + [tspace.largest(bits=2)]
    values = set()
    for cfg in cfgs + cfgs[:1]:
        for seed in (1, 2):
            fast, ref = ev._top1_loss(cfg, seed), ev._top1_loss_reference(cfg, seed)
            assert fast == ref, (cfg, seed, fast, ref)
            values.add(ref)
    assert len(values) > 4  # distinct measurements, not one degenerate value
    # the supernet is untouched by either path: the cache key (its fingerprint) stays valid
    assert model_fingerprint(qnet) == ev.fingerprint


def test_canonical_configs_share_one_measurement(tspace, tqnet, tdigits, tmp_path):
    cfg = tspace.smallest(bits=3)  # depth 1 everywhere: the second block of each stage is skipped
    k = list(cfg.kernels)
    k[1] = 5 if k[1] == 3 else 3  # change a skipped block's kernel
    twin = replace(cfg, kernels=tuple(k))
    assert twin != cfg and config_hash(tspace, twin) == config_hash(tspace, cfg)
    ev = qs.SupernetEvaluator(tqnet, tdigits, calib_batches=1, cache=tmp_path / "c.jsonl", progress=False)
    a, b = ev.predict([cfg, twin])
    assert a == b and ev.n_measured == 1


def test_torn_line_is_skipped(tspace, tqnet, tdigits, tmp_path):
    cache = tmp_path / "acc.jsonl"
    ev = qs.SupernetEvaluator(tqnet, tdigits, calib_batches=1, cache=cache, progress=False)
    ev.predict([tspace.smallest(bits=2)])
    with open(cache, "a") as f:
        f.write('{"key": "abc", "accur')  # a writer killed mid-line
    assert len(read_jsonl(cache)) == 1
    ev2 = qs.SupernetEvaluator(tqnet, tdigits, calib_batches=1, cache=cache, progress=False)
    ev2.predict([tspace.smallest(bits=2)])
    assert ev2.n_measured == 0


def test_bad_input(tspace, tqnet, tdigits):
    with pytest.raises(ConfigError, match="split"):
        qs.SupernetEvaluator(tqnet, tdigits, split="holdout")
    with pytest.raises(ConfigError, match="data"):
        qs.SupernetEvaluator(tqnet)
    with pytest.raises(ConfigError, match="source"):
        qs.SupernetEvaluator(42, tdigits)


def make_run(space, qnet, out: Path) -> Path:
    from qcompile.artifacts import write_run
    from qcompile.train.checkpoint import save_checkpoint

    write_run(out, space, {"weight_bits": [2, 3, 4, 8, 32], "act_bits": [2, 3, 4, 8, 32]}, {"data": "digits"})
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in qnet.state_dict().items()}
    save_checkpoint(out / "checkpoints", tensors, {"space": space.to_dict()}, step=0)
    return out


def cli(*args):
    return [sys.executable, "-m", "qcompile.cli", *args]


@pytest.mark.slow
def test_collect_two_processes_resume_and_fit(tspace, tqnet, tmp_path, capsys, caplog):
    run = make_run(tspace, tqnet, tmp_path / "run")
    out = tmp_path / "acc.jsonl"
    common = ["predictor", "collect", str(run), "--n", "6", "--out", str(out), "--calib-batches", "1",
              "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    # rank 0 by flags, rank 1 by torchrun's environment variables
    p0 = subprocess.Popen(cli(*common, "--rank", "0", "--world-size", "2"), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p1 = subprocess.Popen(cli(*common), cwd=ROOT, env={**env, "RANK": "1", "WORLD_SIZE": "2"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    o0, o1 = p0.communicate(timeout=600)[0], p1.communicate(timeout=600)[0]
    assert p0.returncode == 0, o0
    assert p1.returncode == 0, o1
    assert "rank 0/2: 3 configs" in o0 and "rank 1/2: 3 configs" in o1
    recs = read_jsonl(out)
    assert len(recs) == 6 and len({r["key"] for r in recs}) == 6  # each config measured once, by one rank
    # resume (in this process): a single rank over the same configs measures nothing
    from qcompile.cli import main

    with caplog.at_level("INFO", logger="qcompile"):
        assert main([*common, "--world-size", "1", "--rank", "0"]) == 0
    assert "6 cached, 0 to measure" in caplog.text
    assert len(read_jsonl(out)) == 6
    assert main(["predictor", "fit", str(out), "--out", str(tmp_path / "pred"), "--epochs", "5",
                 "--hidden", "8,8,8", "--holdout", "0.34"]) == 0
    text = capsys.readouterr().out
    assert "held-out Kendall tau" in text and "pairwise" in text
    pred = qs.AccuracyPredictor.load(tmp_path / "pred", space=tspace)
    assert pred.report["n_holdout"] == 2
    json.dumps(pred.report)
    assert main(["predictor", "collect", str(run), "--n", "2", "--out", str(out), "--rank", "2",
                 "--world-size", "2"]) == 2
    assert "--rank" in capsys.readouterr().err
