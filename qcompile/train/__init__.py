"""Supernet training: trainer (sandwich rule, in-place KD, phases), bit inheritance, bit schedule,
IDM, calibration and checkpoints. Papers: OQA 3.3-3.4 and A.2, QFA Sec. 4-5, retraining-free 3.3-3.4.
"""

from qcompile.train.bitsched import BitScheduler, unstable_fraction, unstable_scores
from qcompile.train.calibrate import batchnorm_modules, calibrate
from qcompile.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from qcompile.train.config import (
    Phase,
    TrainConfig,
    default_phases,
    progressive_shrinking_phases,
)
from qcompile.train.evaluate import evaluate_subnets
from qcompile.train.inherit import bit_inheritance, inherit_bits
from qcompile.train.init import zero_init_residual_bn
from qcompile.train.layers import QuantLayer, quant_layers
from qcompile.train.losses import IDMAlign, kd_loss, smooth_ce
from qcompile.train.sampler import SandwichSampler, with_uniform_bits
from qcompile.train.schedule import cosine_lr, cosine_topk
from qcompile.train.standalone import FixedSubnetSpace, standalone_phases, train_standalone
from qcompile.train.trainer import Trainer, space_identity

__all__ = [
    "BitScheduler",
    "FixedSubnetSpace",
    "IDMAlign",
    "Phase",
    "QuantLayer",
    "SandwichSampler",
    "TrainConfig",
    "Trainer",
    "batchnorm_modules",
    "bit_inheritance",
    "calibrate",
    "cosine_lr",
    "cosine_topk",
    "default_phases",
    "evaluate_subnets",
    "inherit_bits",
    "kd_loss",
    "latest_checkpoint",
    "load_checkpoint",
    "progressive_shrinking_phases",
    "quant_layers",
    "save_checkpoint",
    "smooth_ce",
    "space_identity",
    "standalone_phases",
    "train_standalone",
    "unstable_fraction",
    "unstable_scores",
    "with_uniform_bits",
    "zero_init_residual_bn",
]
