"""`qcompile train`'s end-of-run report: which subnets, split, resolution and calibration it measures."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

import qcompile as qc
from qcompile.data import load_dataset
from qcompile.data.base import DatasetSplits
from qcompile.train import Phase, TrainConfig, evaluate_subnets
from tests.conftest import tiny_space


def test_report_is_evaluate_subnets_at_each_subnets_resolution(caplog):
    from qcompile.cli.train_run import _report

    space = tiny_space("mobilenet_v3", resolutions=(16, 24), depths=(1, 2), kernels=(3,), expands=(3, 4))
    full = load_dataset("digits", resolution=24, in_channels=3)
    idx = torch.arange(64)
    data = DatasetSplits(full.train.subset(idx), full.val.subset(idx), full.test.subset(idx))
    torch.manual_seed(0)
    qnet = qc.quantize(qc.trace(space.build_supernet()))
    trainer = SimpleNamespace(model=qnet, cfg=TrainConfig(calib_batches=1))
    phases = [Phase("float", 1), Phase("q", 1, bits=(2, 3, 4))]
    with caplog.at_level(logging.INFO, logger="qcompile.cli.train_run"):
        _report(trainer, space, data, phases)
    big, small = space.largest(bits=4), space.smallest(bits=2)
    assert (big.resolution, small.resolution) == (24, 16)
    want = evaluate_subnets(qnet, space, data, [big, small], calib_batches=1)
    assert trainer.final_accuracy == {"largest": want[0], "smallest": want[1]}
    msg = caplog.messages[-1]
    assert "1 training batches, seed 1" in msg and "test split at each subnet's resolution" in msg
    assert f"largest @4 bits (24 px) {100 * want[0]:.2f} %" in msg
    assert f"smallest @2 bits (16 px) {100 * want[1]:.2f} %" in msg
