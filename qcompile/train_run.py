"""`qcompile train`: build, quantize and train a supernet on a dataset, with checkpoints and resume."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from qcompile.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

QUANTIZE_DEFAULTS = {"weight_bits": [2, 3, 4, 8, 32], "act_bits": [2, 3, 4, 8, 32]}


def parse_data(spec: str, root: str | None) -> tuple[str, dict]:
    """`digits`, `cifar10`, `cifar100`, `image_folder` (+ `root`), or `name:PATH`."""
    name, _, path = spec.partition(":")
    kw = {}
    if path or root:
        kw["root"] = path or root
    if name.lower().replace("-", "_") in ("cifar10", "cifar100", "image_folder", "folder") and "root" not in kw:
        raise ConfigError("--data", spec, "name:PATH or --data-root for folder/cifar datasets")
    if name == "folder":
        name = "image_folder"
    return name, kw


def train_run(
    space,
    data: str,
    out: Path,
    *,
    epochs: tuple[int, ...] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    resume: bool = False,
    data_root: str | None = None,
    quantize_options: dict | None = None,
    train_config: dict | None = None,
):
    """Train; returns the Trainer (its `epoch_log` holds per-epoch loss / accuracies)."""
    import qcompile as qc
    from qcompile.artifacts import RUN_FILE, write_run
    from qcompile.data import load_dataset
    from qcompile.train import Trainer, TrainConfig, default_phases, latest_checkpoint

    name, kw = parse_data(data, data_root)
    data_splits = load_dataset(name, resolution=max(space.resolutions), in_channels=space.in_channels, **kw)
    if data_splits.train.num_classes != space.num_classes:
        raise ConfigError("--num-classes", space.num_classes, f"{data_splits.train.num_classes} (classes in {data})")
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    if resume:
        if not (out / RUN_FILE).is_file() or latest_checkpoint(ckpt_dir) is None:
            raise CheckpointError(f"{out}: nothing to resume (no run.json or checkpoint)")
    elif latest_checkpoint(ckpt_dir) is not None:
        raise CheckpointError(f"{out}: already holds a run; use --resume to continue or another --out")
    torch.manual_seed(seed)
    qopts = dict(quantize_options or QUANTIZE_DEFAULTS)
    qnet = qc.quantize(qc.trace(space.build_supernet()), **qopts)
    phases = default_phases(tuple(epochs)) if epochs else default_phases()
    if epochs and len(epochs) != 3:
        raise ConfigError("--epochs", epochs, "three numbers: float, {2,3,4,32}, {2,3,4} phases")
    cfg = TrainConfig(batch_size=batch_size, seed=seed, **(train_config or {}))
    write_run(out, space, qopts, {"data": data, "phases": [p.to_dict() for p in phases], "train": cfg.to_dict()})
    trainer = Trainer(qnet, space, data_splits, cfg, phases, checkpoint_dir=ckpt_dir)
    if resume:
        trainer.resume(latest_checkpoint(ckpt_dir))
        log.info("resumed from %s at step %d", latest_checkpoint(ckpt_dir), trainer.global_step)
    trainer.fit()
    trainer.save(ckpt_dir)
    return trainer
