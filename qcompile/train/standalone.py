"""Train one fixed subnet alone with the supernet's recipe: the baseline of the retraining-free claim.

QFA (Sec. 1, Table 2), OQA (Sec. 4.2) and the retraining-free paper compare a subnet extracted from the
quantized-for-all supernet with the same architecture and bit policy trained on its own with QAT. Here
that baseline reuses everything the supernet training uses: the same supernet module (LSQ weight
quantizers, BatchQuant activation quantizers, QFA Eq. 2 and 5), the same `Trainer`, optimiser, learning
rate schedule (warm-up then cosine per phase), label smoothing and gradient clip, and the same phase
lengths. Only the sampling changes: every step trains the one subnet (`FixedSubnetSpace` answers every
query of the sampler with it) instead of the sandwich of four, so there is no in-place distillation.
A float phase of the recipe trains the architecture in float (as the supernet had its float phase);
quantized phases train it at its bit policy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from qcompile.config import SubnetConfig
from qcompile.errors import CheckpointError, ConfigError
from qcompile.train.config import FLOAT_BITS, Phase, TrainConfig

__all__ = ["FixedSubnetSpace", "standalone_phases", "train_standalone"]

log = logging.getLogger(__name__)


class FixedSubnetSpace:
    """A search space reduced to one architecture of `space`, for the `Trainer`'s sampler.

    `largest`/`smallest`/`sample` return `config`'s architecture: in float when asked for float
    (`bits=None` or 32), otherwise with `config`'s own bit policy (whatever bit-width was asked for:
    the policy is fixed). `validate` accepts only that architecture (float or the policy).
    """

    def __init__(self, space: Any, config: SubnetConfig):
        if not isinstance(config, SubnetConfig):
            raise ConfigError("config", type(config).__name__, "a qcompile.SubnetConfig")
        space.validate(config)
        self.space = space
        self.config = config
        self.name = f"fixed:{getattr(space, 'name', type(space).__name__)}"
        self.resolutions = (config.resolution,)

    def _get(self, bits: Any) -> SubnetConfig:
        if bits is None or bits == FLOAT_BITS or self.config.policy is None:
            return self.config.with_policy(None)
        return self.config

    def largest(self, bits: int | None = None) -> SubnetConfig:
        return self._get(bits)

    def smallest(self, bits: int | None = None) -> SubnetConfig:
        return self._get(bits)

    def sample(self, seed: int = 0, bits: Any = None, canonical: bool = True) -> SubnetConfig:
        return self._get(bits)

    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        if cfg not in (self.config, self.config.with_policy(None)):
            raise ConfigError(
                "config", cfg.to_dict(), self.config.to_dict(), "a fixed-subnet space has one architecture"
            )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Identity for checkpoints: the space and the architecture (policy excluded, so a float-phase
        checkpoint of the architecture can start any bit policy's quantized phases)."""
        return {"space": self.space.to_dict(), "architecture": self.config.with_policy(None).to_dict()}


def standalone_phases(phases: Sequence[Phase], config: SubnetConfig) -> list[Phase]:
    """The supernet recipe `phases` made into the fixed-subnet recipe for `config`.

    Same names, epochs and learning rates; the "largest" sampler (one subnet per step), no teacher, no
    bit schedule or IDM (they act across sampled bit-widths). A float phase stays float; a quantized
    phase trains `config`'s policy (which must be set when the recipe has a quantized phase).
    """
    out = []
    for p in phases:
        if p.bits is None:
            bits = None
        else:
            if config.policy is None:
                raise ConfigError("config.policy", None, "a bit policy", f"phase {p.name!r} is quantized")
            bits = tuple(sorted({b for pair in config.policy.bits for b in pair}))
        out.append(Phase(p.name, p.epochs, bits=bits, sampler="largest", num_random=0, teacher="none", lr=p.lr))
    return out


def train_standalone(
    space: Any,
    config: SubnetConfig,
    data: Any,
    phases: Sequence[Phase],
    train_config: TrainConfig | None = None,
    *,
    quantize_options: dict | None = None,
    init_seed: int | None = None,
    start: str | os.PathLike | None = None,
    stop_after: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
):
    """Train `config` (architecture + bit policy) alone; returns the `Trainer` (`.model` is the quantized supernet).

    The network is built as `qcompile train` builds the supernet (`torch.manual_seed(init_seed)`,
    `build_supernet`, zero-init of residual BN, `qc.quantize(**quantize_options)`; None: `qc.quantize`'s
    defaults, which `qcompile train` uses too), then trained on `standalone_phases(phases, config)`.
    Evaluate it like a supernet subnet: `evaluate_subnets(trainer.model, space, data, [config])`.

    Args:
        phases: the supernet recipe (e.g. `default_phases()`); drop its float phase to train from scratch.
        init_seed: seed of the weight init (default `train_config.seed`).
        start: a checkpoint written by an earlier call with the same architecture and recipe (e.g. at the end
            of the float phase, `stop_after=1`): the run continues from it, so the float phase can be
            shared by several bit policies.
        stop_after: stop once this many phases are done (None: all).
        checkpoint_dir: where the Trainer checkpoints (every epoch end).
    """
    import torch

    from qcompile import api as qc
    from qcompile.train.checkpoint import load_checkpoint
    from qcompile.train.init import zero_init_residual_bn
    from qcompile.train.trainer import Trainer

    tcfg = train_config or TrainConfig()
    fixed = standalone_phases(phases, config)
    if stop_after is not None and not 0 <= stop_after <= len(fixed):
        raise ConfigError("stop_after", stop_after, f"0..{len(fixed)} (phases in the recipe)")
    torch.manual_seed(tcfg.seed if init_seed is None else init_seed)
    net = space.build_supernet()
    zero_init_residual_bn(net)
    qnet = qc.quantize(qc.trace(net), **dict(quantize_options or {}))
    trainer = Trainer(qnet, FixedSubnetSpace(space, config), data, tcfg, fixed, checkpoint_dir=checkpoint_dir)
    if start is not None:
        _, meta = load_checkpoint(start)
        done = meta["position"]["phase_index"]
        if meta["position"]["epoch_in_phase"] or meta["position"]["batch_in_epoch"]:
            raise CheckpointError(f"{start}: not at a phase boundary; continue it with the recipe that wrote it")
        ours = [p.to_dict() for p in fixed[:done]]
        if meta.get("phases", [])[:done] != ours or meta.get("config") != tcfg.to_dict():
            raise CheckpointError(
                f"{start}: its first {done} phase(s) or TrainConfig differ from this recipe's "
                f"({meta.get('phases', [])[:done]} vs {ours})"
            )
        trainer.resume(start)
    max_steps = None
    if stop_after is not None:
        max_steps = sum(p.epochs for p in fixed[:stop_after]) * trainer.steps_per_epoch
    trainer.fit(max_steps=max_steps)  # stops at the first step of phase `stop_after`: a phase boundary
    log.info(
        "standalone: %d steps, last loss %.4f",
        trainer.global_step,
        trainer.history[-1]["loss"] if trainer.history else float("nan"),
    )
    return trainer
