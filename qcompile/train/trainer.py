"""Supernet trainer: sandwich rule, in-place distillation, phases, bit schedule, IDM, checkpoints.

One optimiser step (OQA 3.3 and A.2, QFA Sec. 4-5, Yu & Huang 2019):
  1. draw the step's subnets (largest, smallest, `n` random; each with its bit policy),
  2. for each: activate it, resize the batch to its resolution, forward, loss, backward
     (gradients accumulate over the subnets), the largest's soft outputs being the KD targets of
     the others ("in-place distillation"),
  3. all-reduce gradients over data-parallel ranks, add weight decay (optionally not for weights
     sampled at the smallest bit-width: retraining-free Sec. 3.4 "Fairness Weight Regularization"),
     clip the global gradient norm (QFA Sec. 5), one SGD-Nesterov step at the cosine learning rate.
The model is anything `activate(model, cfg)` accepts (default `qcompile.set_active`): an eager
supernet or the quantized GraphModule.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcompile.config import SubnetConfig
from qcompile.data.base import ArrayDataset, DatasetSplits, resize
from qcompile.errors import CheckpointError, ConfigError
from qcompile.train import distributed as qdist
from qcompile.train.bitsched import BitScheduler
from qcompile.train.calibrate import calibrate
from qcompile.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from qcompile.train.config import Phase, TrainConfig, default_phases
from qcompile.train.layers import quant_layers
from qcompile.train.losses import IDMAlign, kd_loss, smooth_ce
from qcompile.train.sampler import SandwichSampler, with_uniform_bits
from qcompile.train.schedule import cosine_lr

logger = logging.getLogger(__name__)

Activate = Callable[[nn.Module, SubnetConfig], None]


def _default_activate(model: nn.Module, cfg: SubnetConfig) -> None:
    from qcompile.fx.tracer import set_active

    set_active(model, cfg)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str, sort_keys=True))


def space_identity(space: Any) -> dict[str, Any]:
    """Name and constructor arguments of a search space, for checkpoint compatibility checks."""
    for attr in ("spec", "to_dict"):
        fn = getattr(space, attr, None)
        if callable(fn):
            return _jsonable({"name": getattr(space, "name", type(space).__name__), "spec": fn()})
    args = getattr(space, "args", None)
    if args is None:
        args = getattr(space, "kwargs", None)
    return _jsonable({"name": getattr(space, "name", type(space).__name__), "args": args})


class Trainer:
    """Train `model` (a supernet of `space`) on `data` through `phases`.

    Args:
        model: the (quantized) supernet; `activate(model, cfg)` selects the subnet a forward runs.
        space: the search space (`sample`, `largest`, `smallest`).
        data: `DatasetSplits` (train is trained on, val evaluated per epoch) or a training set.
        config: `TrainConfig`.
        phases: the recipe (default `default_phases()`).
        activate: subnet selector (default `qcompile.set_active`).
        teacher, teacher_bits: an external frozen supernet and the uniform bits it runs at, for
            phases with `teacher="external"` (bit inheritance, OQA 3.4).
        teacher_config: a fixed subnet the external teacher always runs, at the student's
            resolution (QFA's main.py distils every sandwich member from the largest subnet of the
            full-precision supernet); None: the student's own subnet (OQA 3.4).
        checkpoint_dir: where `save()` writes and `checkpoint_every` / epoch ends checkpoint to.
    """

    def __init__(
        self,
        model: nn.Module,
        space: Any,
        data: DatasetSplits | ArrayDataset,
        config: TrainConfig | None = None,
        phases: Sequence[Phase] | None = None,
        *,
        activate: Activate | None = None,
        teacher: nn.Module | None = None,
        teacher_bits: int | None = None,
        teacher_config: SubnetConfig | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
    ):
        self.model = model
        self.space = space
        self.cfg = config or TrainConfig()
        self.phases = list(default_phases() if phases is None else phases)
        if not self.phases:
            raise ConfigError("phases", [], "at least one Phase")
        self.activate: Activate = activate or _default_activate
        self.teacher, self.teacher_bits, self.teacher_config = teacher, teacher_bits, teacher_config
        if any(p.teacher == "external" for p in self.phases) and teacher is None:
            raise ConfigError("teacher", None, "a frozen supernet", "a phase has teacher='external'")
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.rank, self.world_size = qdist.world()

        train = data.train if isinstance(data, DatasetSplits) else data
        self.val = data.val if isinstance(data, DatasetSplits) else None
        self.train_set = train
        self.loader = train.loader(
            self.cfg.batch_size,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=True,
            rank=self.rank,
            world_size=self.world_size,
        )
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError("batch_size", self.cfg.batch_size, f"<= {len(train) // self.world_size}")
        self.sampler = SandwichSampler(space, self.cfg.seed)

        self.idm = nn.ModuleDict()
        if any(p.idm_weight > 0 for p in self.phases):
            for layer in quant_layers(model):
                key = layer.name.replace(".", "__")
                self.idm[key] = IDMAlign(layer.weight.shape[0], self.cfg.idm_floor, self.cfg.idm_eps)
        self.schedulers: dict[int, BitScheduler] = {
            i: BitScheduler(
                p.quant_bits, self.cfg.unstable_eps, self.cfg.topk_fraction, self.cfg.bit_schedule_every
            )
            for i, p in enumerate(self.phases)
            if p.bit_schedule
        }
        self.optimizer = torch.optim.SGD(
            [{"params": []}],
            lr=self.cfg.lr,
            momentum=self.cfg.momentum,
            nesterov=self.cfg.nesterov,
            weight_decay=0.0,  # added by hand in `_weight_decay` (fairness rule)
        )
        self._sync_optimizer()
        qdist.broadcast_parameters(self.model)
        # Position in the recipe (what a checkpoint records).
        self.phase_index = 0
        self.epoch_in_phase = 0
        self.batch_in_epoch = 0
        self.step_in_phase = 0
        self.global_step = 0
        self.global_epoch = 0
        self.history: list[dict[str, float]] = []
        self.epoch_log: list[dict[str, float]] = []

    # -- parameters ----------------------------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        out = [(f"model.{n}", p) for n, p in self.model.named_parameters() if p.requires_grad]
        out += [(f"idm.{n}", p) for n, p in self.idm.named_parameters()]
        return out

    def _sync_optimizer(self) -> None:
        """Keep the optimiser's parameter list equal to the model's (LSQ may create steps lazily)."""
        params = [p for _, p in self.named_parameters()]
        group = self.optimizer.param_groups[0]
        if [id(p) for p in group["params"]] != [id(p) for p in params]:
            keep = {id(p) for p in params}
            for p in group["params"]:
                if id(p) not in keep:
                    self.optimizer.state.pop(p, None)
            group["params"] = params

    # -- one step ------------------------------------------------------------------------------
    def _phase_total(self, phase: Phase) -> int:
        return phase.epochs * self.steps_per_epoch

    def _external_logits(self, cfg: SubnetConfig, x: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        if self.teacher_config is not None:
            cfg = dataclasses.replace(self.teacher_config, resolution=cfg.resolution)
        tcfg = with_uniform_bits(cfg, self.teacher_bits) if cfg.policy is not None else cfg
        with torch.no_grad():
            self.teacher.train()  # batch statistics: the frozen teacher's running stats are supernet-wide
            self.activate(self.teacher, tcfg)
            return self.teacher(x)

    def _idm_loss(self, cfg: SubnetConfig, x: torch.Tensor, phase: Phase, low_feats: dict[str, torch.Tensor]):
        """Eq. 8 summed over the layers the student ran at the smallest bit-width."""
        high_cfg = with_uniform_bits(cfg, max(phase.quant_bits))
        names = set(low_feats)
        high: dict[str, torch.Tensor] = {}
        hooks = [
            m.register_forward_hook(lambda _m, _i, out, n=n: high.__setitem__(n, out))
            for n, m in self.model.named_modules()
            if n in names
        ]
        try:
            with torch.no_grad():
                self.activate(self.model, high_cfg)
                self.model(x)
        finally:
            for h in hooks:
                h.remove()
            self.activate(self.model, cfg)
        terms = [self.idm[n.replace(".", "__")](low_feats[n], high[n]) for n in names if n in high]
        return torch.stack(terms).mean() if terms else None

    def train_step(self, x: torch.Tensor, y: torch.Tensor, phase: Phase, step: int, total: int) -> float:
        """One optimiser step on batch `(x, y)`; returns the summed loss of the subnets."""
        cfg = self.cfg
        self.model.train()
        warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        lr = cosine_lr(step, total, phase.lr or cfg.lr, warmup, cfg.min_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        configs = self.sampler.sample(self.global_step, phase)
        sched = self.schedulers.get(self.phase_index)
        if sched is not None:
            sched.update(self.model, step, total)
            configs = [configs[0]] + [sched.constrain(c) for c in configs[1:]]
        self.optimizer.zero_grad(set_to_none=True)
        layers = quant_layers(self.model)
        min_bits = phase.min_bits
        teacher_logits = None
        total_loss = 0.0
        for i, c in enumerate(configs):
            self.activate(self.model, c)
            xr = resize(x, c.resolution)
            feats: dict[str, torch.Tensor] = {}
            hooks = []
            if phase.idm_weight > 0 and i > 0 and c.policy is not None and min_bits is not None:
                low = {
                    ly.name for ly in layers if ly.slot < len(c.policy) and c.policy[ly.slot][0] == min_bits
                }
                hooks = [
                    m.register_forward_hook(lambda _m, _i, out, n=n, f=feats: f.__setitem__(n, out))
                    for n, m in self.model.named_modules()
                    if n in low
                ]
            try:
                out = self.model(xr)
            finally:
                for h in hooks:
                    h.remove()
            loss = smooth_ce(out, y, cfg.label_smoothing)
            if phase.teacher == "external":
                loss = cfg.child_ce_weight * loss + cfg.kd_weight * kd_loss(
                    out, self._external_logits(c, xr), cfg.kd_temperature
                )
                self.activate(self.model, c)
            elif phase.teacher == "largest" and i == 0:
                teacher_logits = out.detach()
            elif phase.teacher == "largest":
                loss = cfg.child_ce_weight * loss + cfg.kd_weight * kd_loss(
                    out, teacher_logits, cfg.kd_temperature
                )
            if feats:
                idm = self._idm_loss(c, xr, phase, feats)
                if idm is not None:
                    loss = loss + phase.idm_weight * idm
            loss.backward()
            total_loss += float(loss.detach())
        self._sync_optimizer()
        params = [p for _, p in self.named_parameters()]
        qdist.allreduce_gradients(params)
        self._weight_decay(configs, layers, min_bits)
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
        self.optimizer.step()
        return total_loss

    @torch.no_grad()
    def _weight_decay(self, configs: list[SubnetConfig], layers: list, min_bits: int | None) -> None:
        """L2 decay on weight tensors (dim > 1). With `fair_weight_decay`, a slot's weight is decayed
        only in proportion to the subnets that did not sample it at the smallest bit-width."""
        wd = self.cfg.weight_decay
        if wd == 0:
            return
        slot_of = {id(ly.weight): ly.slot for ly in layers}
        for _, p in self.named_parameters():
            if p.grad is None or p.dim() <= 1:
                continue
            coef = wd
            slot = slot_of.get(id(p))
            if self.cfg.fair_weight_decay and slot is not None and min_bits is not None:
                at_min = sum(
                    1
                    for c in configs
                    if c.policy is not None and slot < len(c.policy) and c.policy[slot][0] == min_bits
                )
                coef = wd * (len(configs) - at_min) / len(configs)
            if coef:
                p.grad.add_(p, alpha=coef)

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, cfg: SubnetConfig, dataset: ArrayDataset | None = None, calib_batches: int | None = None
    ) -> float:
        """Top-1 accuracy of subnet `cfg` after BN/BatchQuant calibration on training batches (on a copy)."""
        dataset = dataset or self.val or self.train_set
        model = copy.deepcopy(self.model)
        self.activate(model, cfg)
        n_calib = self.cfg.calib_batches if calib_batches is None else calib_batches
        calib = self.train_set.loader(
            self.cfg.batch_size, shuffle=True, seed=self.cfg.seed + 1, resolution=cfg.resolution
        )
        calibrate(model, calib, max_batches=n_calib)
        correct = seen = 0
        for xb, yb in dataset.loader(256, resolution=cfg.resolution):
            correct += int((model(xb).argmax(1) == yb).sum())
            seen += len(yb)
        return correct / max(seen, 1)

    def _end_of_epoch(self, phase: Phase, losses: list[float], lr: float) -> None:
        rec: dict[str, float] = {
            "epoch": self.global_epoch,
            "loss": sum(losses) / max(len(losses), 1),
            "lr": lr,
        }
        if self.cfg.evaluate and self.val is not None:
            big, small = self.sampler.extremes(phase)
            rec["acc_largest"] = self.evaluate(big)
            rec["acc_smallest"] = self.evaluate(small)
        self.epoch_log.append(rec)
        if self.rank == 0 and "acc_largest" not in rec:
            logger.info("phase %s epoch %d: loss %.4f, lr %.5f", phase.name, self.global_epoch, rec["loss"], lr)
        elif self.rank == 0:
            logger.info(
                "phase %s epoch %d: loss %.4f, val split after calibration: largest %.2f %%, smallest %.2f %%, lr %.5f",
                phase.name,
                self.global_epoch,
                rec["loss"],
                100 * rec.get("acc_largest", float("nan")),
                100 * rec.get("acc_smallest", float("nan")),
                lr,
            )

    # -- loop ----------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> list[dict[str, float]]:
        """Run the remaining recipe (or stop before global step `max_steps`); returns the step history."""
        from tqdm import tqdm

        while self.phase_index < len(self.phases):
            phase = self.phases[self.phase_index]
            total = self._phase_total(phase)
            while self.epoch_in_phase < phase.epochs:
                self.loader.set_epoch(self.global_epoch)
                self.loader.skip(self.batch_in_epoch)
                # A resumed epoch's mean loss also counts the steps run before the checkpoint.
                start = self.global_step - self.batch_in_epoch
                losses: list[float] = [h["loss"] for h in self.history if h["step"] >= start]
                lr = 0.0
                bar = tqdm(
                    self.loader,
                    total=self.steps_per_epoch,
                    initial=self.batch_in_epoch,
                    desc=f"{phase.name} e{self.global_epoch}",
                    disable=not self.cfg.progress or self.rank != 0,
                    leave=False,
                )
                for x, y in bar:
                    if max_steps is not None and self.global_step >= max_steps:
                        bar.close()
                        return self.history
                    loss = self.train_step(x, y, phase, self.step_in_phase, total)
                    lr = self.optimizer.param_groups[0]["lr"]
                    losses.append(loss)
                    self.history.append({"step": self.global_step, "loss": loss, "lr": lr})
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.4f}")
                    self.batch_in_epoch += 1
                    self.step_in_phase += 1
                    self.global_step += 1
                    # Step checkpoints (mid-epoch); the last step of an epoch is saved just below,
                    # after the epoch's log entry, so it is not written twice.
                    every = self.cfg.checkpoint_every
                    if every and self.global_step % every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                        self._autosave()
                bar.close()
                self.batch_in_epoch = 0
                self.epoch_in_phase += 1
                self.global_epoch += 1
                self._end_of_epoch(phase, losses, lr)
                self._autosave()
            self.phase_index += 1
            self.epoch_in_phase = 0
            self.step_in_phase = 0
        return self.history

    # -- checkpoints ---------------------------------------------------------------------------
    def _autosave(self) -> None:
        if self.checkpoint_dir is not None:
            self.save(self.checkpoint_dir)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything a resume needs: tensors and JSON metadata."""
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"idm.{k}": v for k, v in self.idm.state_dict().items()})
        names = self.named_parameters()
        momentum: list[str] = []
        for n, p in names:
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optim.{n}.momentum_buffer"] = buf
                momentum.append(n)
        rng_meta, rng_tensors = rng_state()
        tensors.update(rng_tensors)
        group = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
        meta = {
            "space": space_identity(self.space),
            "config": self.cfg.to_dict(),
            "phases": [p.to_dict() for p in self.phases],
            "position": {
                "phase_index": self.phase_index,
                "phase": self.phases[min(self.phase_index, len(self.phases) - 1)].name,
                "epoch_in_phase": self.epoch_in_phase,
                "batch_in_epoch": self.batch_in_epoch,
                "step_in_phase": self.step_in_phase,
                "global_step": self.global_step,
                "global_epoch": self.global_epoch,
            },
            "data": {
                "dataset": self.train_set.name,
                "size": len(self.train_set),
                "seed": self.cfg.seed,
                "epoch": self.global_epoch,
                "batch": self.batch_in_epoch,
                "world_size": self.world_size,
            },
            "optimizer": {
                "type": "SGD",
                "param_group": _jsonable(group),
                "param_names": [n for n, _ in names],
                "momentum_buffers": momentum,
            },
            "schedulers": {str(i): s.state_dict() for i, s in self.schedulers.items()},
            "rng": rng_meta,
            "history": self.history,
            "epoch_log": self.epoch_log,
        }
        return tensors, meta

    def save(self, directory: str | os.PathLike | None = None) -> Path | None:
        """Checkpoint the run (rank 0 writes; other ranks wait)."""
        directory = directory or self.checkpoint_dir
        if directory is None:
            raise ConfigError("checkpoint_dir", None, "a directory", "pass checkpoint_dir= or a path")
        path = None
        if self.rank == 0:
            tensors, meta = self.state()
            path = save_checkpoint(directory, tensors, meta, self.global_step, keep=self.cfg.keep_checkpoints)
        if self.world_size > 1:
            torch.distributed.barrier()
        return path

    def resume(self, path: str | os.PathLike) -> None:
        """Load a checkpoint (run directory or `ckpt-*`) and continue exactly where it stopped."""
        tensors, meta = load_checkpoint(path)
        where = meta.get("path", str(path))
        ours = space_identity(self.space)
        if meta.get("space") != ours:
            raise CheckpointError(
                f"{where}: written for space {meta.get('space')}, but this trainer's space is {ours}; "
                "resume with the same space and arguments"
            )
        model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        own = self.model.state_dict()
        missing = sorted(set(own) - set(model_sd))
        unexpected = sorted(set(model_sd) - set(own))
        shapes = [k for k in own if k in model_sd and tuple(own[k].shape) != tuple(model_sd[k].shape)]
        if missing or unexpected or shapes:
            raise CheckpointError(
                f"{where}: model state does not match this model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, shape mismatch {shapes[:5]}"
            )
        self.model.load_state_dict(model_sd)
        idm_sd = {k[len("idm.") :]: v for k, v in tensors.items() if k.startswith("idm.")}
        if idm_sd or len(self.idm):
            try:
                self.idm.load_state_dict(idm_sd)
            except RuntimeError as e:
                raise CheckpointError(f"{where}: IDM parameters do not match ({e})") from e
        if meta.get("config") != self.cfg.to_dict() or meta.get("phases") != [
            p.to_dict() for p in self.phases
        ]:
            logger.warning(
                "resume: %s was written with another TrainConfig/phases; continuing with these", where
            )
        self._sync_optimizer()
        self.optimizer.state.clear()
        names = dict(self.named_parameters())
        for n in meta["optimizer"]["momentum_buffers"]:
            if n not in names:
                raise CheckpointError(f"{where}: optimiser state for unknown parameter {n!r}")
            self.optimizer.state[names[n]]["momentum_buffer"] = tensors[f"optim.{n}.momentum_buffer"].clone()
        pos = meta["position"]
        self.phase_index = pos["phase_index"]
        self.epoch_in_phase = pos["epoch_in_phase"]
        self.batch_in_epoch = pos["batch_in_epoch"]
        self.step_in_phase = pos["step_in_phase"]
        self.global_step = pos["global_step"]
        self.global_epoch = pos["global_epoch"]
        for i, s in self.schedulers.items():
            s.load_state_dict(meta.get("schedulers", {}).get(str(i), {}))
        self.history = list(meta.get("history", []))
        self.epoch_log = list(meta.get("epoch_log", []))
        set_rng_state(meta["rng"], tensors)
        logger.info("resumed %s at phase %d step %d", where, self.phase_index, self.global_step)
