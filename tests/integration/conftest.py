"""Briefly trained tiny supernets (one per space), shared by the end-to-end sweeps.

Random weights give near-tied logits, where top-1 comparisons between the fake-quant model and its
integer program are meaningless; a few dozen steps on digits make the logits decisive.
"""

from __future__ import annotations

import pytest
import torch

import qcompile as qc
from qcompile.data import load_dataset
from qcompile.train import TrainConfig, Trainer, default_phases
from qcompile.train.init import zero_init_residual_bn
from tests.conftest import tiny_space

QUANTIZE = {"weight_bits": (2, 3, 4, 8, 32), "act_bits": (2, 3, 4, 8, 32)}


@pytest.fixture(scope="session")
def digits32():
    return load_dataset("digits", resolution=32)


@pytest.fixture(scope="session")
def trained():
    """name -> (space, trained quantized supernet graph); built lazily, once per worker."""
    cache: dict[str, tuple] = {}
    data = load_dataset("digits", resolution=32)

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            space = tiny_space(name)
            net = space.build_supernet()
            zero_init_residual_bn(net)  # as `qcompile train` does: each residual block starts as the identity
            qnet = qc.quantize(qc.trace(net), **QUANTIZE)
            cfg = TrainConfig(progress=False, evaluate=False, batch_size=64, seed=0)
            Trainer(qnet, space, data, cfg, default_phases((1, 0, 1))).fit()
            qnet.eval()
            cache[name] = (space, qnet)
        return cache[name]

    return get


def calibrated_subnet(space, qnet, cfg, data, batches: int = 2):
    sub = qc.extract(qnet, cfg)
    qc.calibrate(sub, data.train.loader(64, shuffle=True, seed=1, resolution=cfg.resolution), max_batches=batches)
    return sub
