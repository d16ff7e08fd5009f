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
    threads: int | None = None,
):
    """Train; returns the Trainer (its `epoch_log` holds per-epoch loss / accuracies).

    `threads` sets `torch.set_num_threads` (None: leave torch's default). On a loaded machine one
    thread can be several times faster than two (OpenMP workers spin against other processes).
    """
    import qcompile as qc
    from qcompile.artifacts import RUN_FILE, check_out, write_run
    from qcompile.data import load_dataset
    from qcompile.train import TrainConfig, Trainer, default_phases, latest_checkpoint
    from qcompile.train.init import zero_init_residual_bn

    if epochs is not None and (
            len(epochs) != 3 or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs)):
        raise ConfigError("--epochs", ",".join(map(str, epochs)),
                          "three non-negative integers: float, {2,3,4,32}, {2,3,4} phases, e.g. 4,3,3")
    if batch_size < 1:
        raise ConfigError("--batch-size", batch_size, ">= 1")
    name, kw = parse_data(data, data_root)
    data_splits = load_dataset(name, resolution=max(space.resolutions), in_channels=space.in_channels, **kw)
    if data_splits.train.num_classes != space.num_classes:
        raise ConfigError("--num-classes", space.num_classes, f"{data_splits.train.num_classes} (classes in {data})")
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    qopts = dict(quantize_options or QUANTIZE_DEFAULTS)
    if resume:
        if not (out / RUN_FILE).is_file() or latest_checkpoint(ckpt_dir) is None:
            raise CheckpointError(f"{out}: nothing to resume (no run.json or checkpoint)")
        _check_resume(out, space, qopts)  # before anything is written
    else:
        check_out(out, "run")
        if latest_checkpoint(ckpt_dir) is not None:
            raise CheckpointError(f"{out}: already holds a run; use --resume to continue or another --out")
    if threads is not None:
        if threads < 1:
            raise ConfigError("--threads", threads, ">= 1")
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = space.build_supernet()
    zero_init_residual_bn(net)
    qnet = qc.quantize(qc.trace(net), **qopts)
    phases = default_phases(tuple(epochs)) if epochs else default_phases()
    cfg = TrainConfig(batch_size=batch_size, seed=seed, **(train_config or {}))
    write_run(out, space, qopts, {"data": data, "phases": [p.to_dict() for p in phases], "train": cfg.to_dict()})
    trainer = Trainer(qnet, space, data_splits, cfg, phases, checkpoint_dir=ckpt_dir)
    if resume:
        trainer.resume(latest_checkpoint(ckpt_dir))
        log.info("resumed from %s at step %d", latest_checkpoint(ckpt_dir), trainer.global_step)
    trainer.fit()
    if not trainer.epoch_log:  # every finished epoch already checkpointed; save only a run with none
        trainer.save(ckpt_dir)
    _report(trainer, space, data_splits, phases)
    return trainer


def _check_resume(out: Path, space, qopts: dict) -> None:
    """`--resume` must continue the same run: same space (name and arguments) and quantization options."""
    import json

    from qcompile import schema
    from qcompile.artifacts import RUN_FILE, _read_json

    path = out / RUN_FILE
    doc = _read_json(path, "written by `qcompile train`", schema.RUN, schema.RUN_FORMAT)
    want = json.loads(json.dumps(space.to_dict()))
    have = doc["space"]
    if have.get("name") != want["name"]:
        raise CheckpointError(f"{path}: the run is of space {have.get('name')!r}, not {want['name']!r} "
                              f"(resume with --space {have.get('name')} or train into another --out)")
    for k in sorted(set(want.get("args", {})) | set(have.get("args", {}))):
        a, b = have.get("args", {}).get(k), want.get("args", {}).get(k)
        if a != b:
            raise CheckpointError(f"{path}: the run has {k}={a!r}, this call {k}={b!r} "
                                  "(resume with the run's settings or train into another --out)")
    if doc.get("quantize") not in (None, json.loads(json.dumps(qopts))):
        raise CheckpointError(f"{path}: the run was quantized with {doc.get('quantize')}, this call with {qopts} "
                              "(resume with the run's settings)")


def _report(trainer, space, data_splits, phases) -> None:
    """Log the retraining-free test accuracy of the largest (top bits) and smallest (lowest bits) subnets."""
    from qcompile.train.evaluate import evaluate_subnets

    last = phases[-1]
    if not trainer.cfg.evaluate or last.bits is None or not last.quant_bits:
        return
    cfgs = [space.largest(bits=max(last.quant_bits)), space.smallest(bits=min(last.quant_bits))]
    acc = evaluate_subnets(trainer.model, space, data_splits, cfgs, calib_batches=trainer.cfg.calib_batches)
    trainer.final_accuracy = {"largest": acc[0], "smallest": acc[1]}
    # Name the resolution and calibration: the same config evaluated on the source-size images or with other
    # calibration batches is a different measurement.
    log.info(
        "test accuracy after calibration (%d training batches, seed 1; test split at each subnet's resolution): "
        "largest @%d bits (%d px) %.2f %%, smallest @%d bits (%d px) %.2f %%",
        trainer.cfg.calib_batches, max(last.quant_bits), cfgs[0].resolution, 100 * acc[0],
        min(last.quant_bits), cfgs[1].resolution, 100 * acc[1],
    )
