"""Block-wise knowledge distillation (BKD) and the per-stage INT8 loss lookup table (SpaceEvo Sec. 3.3, App. C.3).

1. A float *teacher* is trained on the data set and split into the hyperspace's stages
   (stem, residual stem, Stage1-6; the same strides, so stage i of the teacher and of every
   candidate see the same resolution).
2. For every searchable stage i and block type b an *elastic stage* (all widths of the stage's range,
   its depths, kernels and expand ratios, as in the supernet) is trained to map the teacher's
   stage i-1 output to its stage i output, through learnable 1x1 convs at its input and output
   (Fig. 12; the adapters stay float). Each step trains four stage-architectures (sandwich rule:
   largest, smallest, two random). The loss is the NSR of Eq. 3:
   `L = 1/C sum_c ||Y_c - f(Y_{i-1})_c||^2 / sigma_c^2` (mean over batch and pixels).
   The float epochs are followed by INT8 epochs with the rest of qcompile's quantizers (LSQ weights,
   BatchQuant activations, `qcompile.quantize(..., weight_bits=(8,), act_bits=(8,))`), as in App. C.3
   (5 float + 1 INT8 epochs there).
3. The lookup table: per (stage, block type), randomly sampled stage-architectures (stratified over
   the stage's widths) with their INT8 NSR on the validation split, after BN / BatchQuant
   calibration of each. Saved as JSON with a *key* (data, seed, hyperspace, settings, teacher hash):
   `build_or_load_table` reuses a table only when its key matches and names the field that differs
   otherwise. A subnet's loss is the sum of its stages' NSR (DNA; SpaceEvo Sec. 3.3).

Scaled to digits on 2 cores: the input of each elastic stage has the largest width of the previous
stage's range (the table does not key on the input width; latency does, see `qcompile.search.space_evolution`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcompile.api import quantize
from qcompile.errors import ConfigError
from qcompile.fx.tracer import set_active, trace
from qcompile.spaces.hyperspace import Hyperspace
from qcompile.spaces.spaceevo import VNNI_BLOCKS
from qcompile.train.calibrate import calibrate

log = logging.getLogger(__name__)

TABLE_FORMAT = "qcompile.spaceevo-table/1"


@dataclass(frozen=True)
class BKDSettings:
    """Teacher and block-wise training settings (App. C.3 scaled to digits: Adam, cosine lr)."""

    teacher_epochs: int = 10
    teacher_lr: float = 3e-3
    float_epochs: int = 1
    int8_epochs: int = 1
    #: training images used for distillation (a stratified prefix of the shuffled split; 0 = all)
    train_subset: int = 640
    lr: float = 5e-3
    int8_lr: float = 1e-3
    batch_size: int = 64
    archs_per_stage: int = 24
    calib_batches: int = 2

    def __post_init__(self) -> None:
        zero_ok = ("float_epochs", "int8_epochs", "train_subset")
        for name in ("teacher_epochs", *zero_ok, "batch_size", "archs_per_stage", "calib_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name in zero_ok else 1):
                raise ConfigError(f"BKDSettings.{name}", v, "a non-negative integer (>= 1 for counts)")
        for name in ("teacher_lr", "lr", "int8_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ConfigError(f"BKDSettings.{name}", v, "a learning rate in (0, 1)")


# --------------------------------------------------------------------------------------------------
# teacher
# --------------------------------------------------------------------------------------------------


def _cbr(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Teacher(nn.Module):
    """Plain float CNN with the hyperspace's stage strides: stem, residual-stem stage, Stage1-6, head.

    Widths: the largest of each stage's range. `features(x)` returns the 8 stage outputs
    (stem, stage 0, Stage1..Stage6) that block-wise distillation splits the teacher at.
    """

    def __init__(self, hyper: Hyperspace) -> None:
        super().__init__()
        self.widths = [max(hyper.stem_widths), max(hyper.first_widths), *[max(st.widths) for st in hyper.stages]]
        strides = [2, 1, *[st.stride for st in hyper.stages]]
        chans = [hyper.in_channels, *self.widths]
        self.stages = nn.ModuleList()
        for i, (cin, cout, s) in enumerate(zip(chans[:-1], chans[1:], strides)):
            layers = [_cbr(cin, cout, s)] if i == 0 else [_cbr(cin, cout, s), _cbr(cout, cout, 1)]
            self.stages.append(nn.Sequential(*layers))
        self.classifier = nn.Linear(chans[-1], hyper.num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for st in self.stages:
            x = st(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)[-1].mean((2, 3)))


def _batches(n: int, batch_size: int, rng: torch.Generator | None):
    order = torch.randperm(n, generator=rng) if rng is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def train_teacher(hyper: Hyperspace, data, settings: BKDSettings, seed: int) -> tuple[Teacher, float]:
    """Train the float teacher on `data.train`; returns it (eval mode) and its validation accuracy."""
    torch.manual_seed(seed)
    teacher = Teacher(hyper)
    x, y = data.train.images, data.train.labels
    opt = torch.optim.Adam(teacher.parameters(), lr=settings.teacher_lr)
    steps = settings.teacher_epochs * math.ceil(len(x) / settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    g = torch.Generator().manual_seed(seed)
    teacher.train()
    for _ in range(settings.teacher_epochs):
        for idx in _batches(len(x), settings.batch_size, g):
            loss = F.cross_entropy(teacher(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    teacher.eval()
    with torch.no_grad():
        acc = float((teacher(data.val.images).argmax(1) == data.val.labels).float().mean())
    return teacher, acc


def teacher_digest(teacher: nn.Module) -> str:
    """sha256 of the teacher's state (the table's key: a different teacher is refused)."""
    h = hashlib.sha256()
    for k, v in sorted(teacher.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# elastic stages (students)
# --------------------------------------------------------------------------------------------------


def nsr_loss(pred: torch.Tensor, target: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """SpaceEvo Eq. 3: per-channel noise-to-signal power ratio, averaged over channels."""
    err = (pred - target).pow(2).mean(dim=(0, 2, 3))
    return (err / var).mean()


@dataclass(frozen=True)
class StageArch:
    """One stage-architecture of an elastic stage: output width, depth, per-block kernel and expand."""

    width: int
    depth: int
    kernels: tuple[int, ...]
    expands: tuple[float, ...]

    def key(self) -> tuple:
        return (self.width, self.depth, self.kernels, self.expands)


class StageStudent(nn.Module):
    """Learnable 1x1 input adapter -> elastic stage -> learnable 1x1 output adapter (Fig. 12)."""

    def __init__(self, in_ch: int, stage_in: int, stage: nn.Module, stage_max_out: int, out_ch: int) -> None:
        super().__init__()
        from qcompile.nn.elastic import ElasticConv2d

        self.adapt_in = nn.Conv2d(in_ch, stage_in, 1)
        self.stage = stage
        # input channels follow the active stage width; role "adapter" stays float under qc.quantize
        self.adapt_out = ElasticConv2d(stage_max_out, out_ch, 1, bias=True, role="adapter")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt_out(self.stage(self.adapt_in(x)))


class ElasticStageTrainer:
    """Trains the elastic stage of block type `block` at Stage `stage` (1-based) and measures its archs."""

    def __init__(self, hyper: Hyperspace, stage: int, block: str, teacher_widths: Sequence[int], seed: int) -> None:
        self.hyper, self.stage, self.block, self.seed = hyper, stage, block, seed
        hs = hyper.stages[stage - 1]
        self.probe = hyper.probe_space(block)
        torch.manual_seed(seed)
        net = self.probe.build_supernet()
        prev_widths = hyper.first_widths if stage == 1 else hyper.stages[stage - 2].widths
        self.stage_in = max(prev_widths)
        student = StageStudent(teacher_widths[stage], self.stage_in, copy.deepcopy(net.stages[stage]),
                               max(hs.widths), teacher_widths[stage + 1])
        del net
        self.gm = quantize(trace(student), weight_bits=(8,), act_bits=(8,))
        self.k = self.probe.config_stages.index(stage)
        self.kernels = tuple(hyper.kernels)
        self.expands = tuple(VNNI_BLOCKS[block][0])
        self.depths = tuple(hs.depths)
        self.widths = tuple(hs.widths)
        self._base = self.probe.largest()
        self._slots = [self.probe.block_slot(stage, b) for b in range(max(self.depths))]

    # -- configs -----------------------------------------------------------------------------------
    def config(self, arch: StageArch, int8: bool):
        cfg = self._base
        widths = list(cfg.widths)
        widths[self.k + 1] = arch.width
        widths[self.k] = self.stage_in  # the previous stage's width = the adapter's output
        depths = list(cfg.depths)
        depths[self.k] = arch.depth
        kernels, expands = list(cfg.kernels), list(cfg.expands)
        for b, slot in enumerate(self._slots):
            kernels[slot] = arch.kernels[min(b, len(arch.kernels) - 1)]
            expands[slot] = arch.expands[min(b, len(arch.expands) - 1)]
        cfg = replace(cfg, widths=tuple(widths), depths=tuple(depths), kernels=tuple(kernels), expands=tuple(expands))
        return cfg.with_policy(self.probe.uniform_policy(8) if int8 else None)

    def random_arch(self, rng: random.Random, width: int | None = None) -> StageArch:
        d = rng.choice(self.depths)
        return StageArch(
            width if width is not None else rng.choice(self.widths),
            d,
            tuple(rng.choice(self.kernels) for _ in range(d)),
            tuple(rng.choice(self.expands) for _ in range(d)),
        )

    def largest(self) -> StageArch:
        d = max(self.depths)
        return StageArch(max(self.widths), d, (max(self.kernels),) * d, (max(self.expands),) * d)

    def smallest(self) -> StageArch:
        d = min(self.depths)
        return StageArch(min(self.widths), d, (min(self.kernels),) * d, (min(self.expands),) * d)

    # -- training ----------------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, y: torch.Tensor, var: torch.Tensor, settings: BKDSettings) -> list[float]:
        """Sandwich-rule BKD with the NSR loss: float epochs, then INT8 epochs. Returns per-epoch mean loss."""

        rng = random.Random(self.seed)
        g = torch.Generator().manual_seed(self.seed)
        params = [p for p in self.gm.parameters() if p.requires_grad]
        history = []
        for phase, epochs, lr in (("float", settings.float_epochs, settings.lr),
                                  ("int8", settings.int8_epochs, settings.int8_lr)):
            if epochs == 0:
                continue
            opt = torch.optim.Adam(params, lr=lr)
            steps = epochs * math.ceil(len(x) / settings.batch_size)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
            self.gm.train()
            for _ in range(epochs):
                tot, n = 0.0, 0
                for idx in _batches(len(x), settings.batch_size, g):
                    archs = [self.largest(), self.smallest(), self.random_arch(rng), self.random_arch(rng)]
                    opt.zero_grad()
                    for arch in archs:
                        set_active(self.gm, self.config(arch, phase == "int8"))
                        loss = nsr_loss(self.gm(x[idx]), y[idx], var)
                        loss.backward()
                        tot += float(loss.detach())
                        n += 1
                    opt.step()
                    sched.step()
                history.append(tot / max(1, n))
        return history

    @torch.no_grad()
    def measure(self, arch: StageArch, x_cal: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                var: torch.Tensor, settings: BKDSettings) -> float:
        """INT8 NSR of `arch` on the validation split after BN + BatchQuant calibration on training inputs."""

        set_active(self.gm, self.config(arch, True))
        bs = settings.batch_size
        calibrate(self.gm, [x_cal[i : i + bs] for i in range(0, len(x_cal), bs)], max_batches=settings.calib_batches)
        pred = torch.cat([self.gm(x_val[i : i + 256]) for i in range(0, len(x_val), 256)])
        return float(nsr_loss(pred, y_val, var))


# --------------------------------------------------------------------------------------------------
# lookup table
# --------------------------------------------------------------------------------------------------


@dataclass
class LookupTable:
    """Per-stage INT8 NSR of sampled stage-architectures: `entries[stage][block] -> list of dicts`.

    `stage` is 1-based (Stage1-6); each entry: width, depth, kernels, expands, nsr.
    """

    key: dict[str, Any]
    entries: dict[int, dict[str, list[dict[str, Any]]]]
    info: dict[str, Any]

    @property
    def hyper(self) -> Hyperspace:
        return Hyperspace.from_dict(self.key["hyperspace"])

    def to_json(self) -> str:
        doc = {"format": TABLE_FORMAT, "key": self.key, "info": self.info,
               "entries": {str(s): v for s, v in self.entries.items()}}
        return json.dumps(doc, indent=1, sort_keys=True)

    def save(self, path: str | Path) -> Path:
        from qcompile.utils.io import atomic_write_text

        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, expect_key: dict[str, Any] | None = None) -> LookupTable:
        """Load a table; with `expect_key`, refuse (ConfigError naming the field) a table built otherwise."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"lookup table {p} does not exist")
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"lookup table {p}", "unreadable JSON", f"a LookupTable.save file ({e})") from e
        if doc.get("format") != TABLE_FORMAT:
            raise ConfigError(f"lookup table {p} format", doc.get("format"), TABLE_FORMAT)
        table = cls(doc["key"], {int(s): v for s, v in doc["entries"].items()}, doc.get("info", {}))
        if expect_key is not None:
            check_key(table.key, expect_key, str(p))
        return table

    def stage_entries(self, stage: int, block: str, widths: Sequence[int]) -> list[dict[str, Any]]:
        """Entries of Stage `stage` (1-based), block `block`, whose width is in `widths`."""
        try:
            rows = self.entries[stage][block]
        except KeyError as e:
            raise ConfigError("lookup table stage/block", (stage, block), "a stage and block the table holds") from e
        ws = set(widths)
        out = [r for r in rows if r["width"] in ws]
        if not out:
            raise ConfigError(f"lookup table Stage{stage} {block}", sorted(ws), "widths the table sampled")
        return out


def check_key(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raise ConfigError naming the first key field whose value differs (data, seed, teacher, ...)."""
    for k in sorted(set(found) | set(expected)):
        if k == "teacher_sha256" and (k not in expected or k not in found):
            continue
        if json.dumps(found.get(k), sort_keys=True) != json.dumps(expected.get(k), sort_keys=True):
            raise ConfigError(
                f"{where}: key field {k!r}", found.get(k), f"{expected.get(k)!r} (this table was built for another "
                f"{k}; use another path or rebuild)"
            )


def table_key(hyper: Hyperspace, data: str, seed: int, settings: BKDSettings) -> dict[str, Any]:
    return {"hyperspace": hyper.to_dict(), "data": data, "seed": int(seed), "settings": asdict(settings)}


def build_table(
    hyper: Hyperspace,
    data: str = "digits",
    *,
    seed: int = 0,
    settings: BKDSettings | None = None,
    teacher: Teacher | None = None,
    progress: bool = False,
) -> LookupTable:
    """Train the teacher (unless given), distil every (stage, block type) and sample the table."""
    from qcompile.data import load_dataset

    settings = settings or BKDSettings()
    cpu0 = time.process_time()
    if len(hyper.resolutions) != 1:
        raise ConfigError("hyperspace.resolutions", hyper.resolutions, "one resolution for block-wise distillation")
    ds = load_dataset(data, resolution=hyper.resolutions[0], in_channels=hyper.in_channels)
    if ds.num_classes != hyper.num_classes:
        raise ConfigError("hyperspace.num_classes", hyper.num_classes, f"{ds.num_classes} (classes in {data})")
    teacher_acc = None
    if teacher is None:
        teacher, teacher_acc = train_teacher(hyper, ds, settings, seed)
    teacher.eval()
    with torch.no_grad():
        ftr = teacher.features(ds.train.images)
        fva = teacher.features(ds.val.images)
    # teacher stage outputs: index 0 stem, 1 residual stem stage, 2..7 Stage1..Stage6
    var = [f.var(dim=(0, 2, 3)).clamp_min(1e-6) for f in ftr]
    if settings.train_subset:
        sub = torch.randperm(len(ds.train.images), generator=torch.Generator().manual_seed(seed))
        ftr = [f[sub[: settings.train_subset]] for f in ftr]
    entries: dict[int, dict[str, list[dict[str, Any]]]] = {}
    curves: dict[str, list[float]] = {}
    jobs = [(s, b) for s in range(1, hyper.n_stages + 1) for b in hyper.blocks]
    from tqdm import tqdm

    bar = tqdm(jobs, desc="block-wise distillation", disable=not progress, unit="stage")
    for s, b in bar:
        bar.set_postfix_str(f"Stage{s} {b}")
        job_seed = seed * 1000 + s * 10 + hyper.blocks.index(b)
        tr = ElasticStageTrainer(hyper, s, b, teacher.widths, job_seed)
        xin, yout, v = ftr[s], ftr[s + 1], var[s + 1]
        curves[f"{s}/{b}"] = tr.fit(xin, yout, v, settings)
        rng = random.Random(job_seed)
        rows, seen = [], set()
        n = settings.archs_per_stage
        for i in range(20 * n):  # bounded: stratified over widths, deduplicated
            if len(rows) >= n:
                break
            arch = tr.random_arch(rng, width=tr.widths[i % len(tr.widths)])
            if arch.key() in seen:
                continue
            seen.add(arch.key())
            nsr = tr.measure(arch, xin, fva[s], fva[s + 1], v, settings)
            rows.append({"width": arch.width, "depth": arch.depth, "kernels": list(arch.kernels),
                         "expands": list(arch.expands), "nsr": nsr})
        entries.setdefault(s, {})[b] = rows
        log.debug("Stage%d %s: %d archs, NSR %.3f..%.3f", s, b, len(rows), min(r["nsr"] for r in rows),
                  max(r["nsr"] for r in rows))
    key = table_key(hyper, data, seed, settings)
    key["teacher_sha256"] = teacher_digest(teacher)
    info = {"teacher_val_acc": teacher_acc, "teacher_widths": teacher.widths, "train_curves": curves,
            "cpu_seconds": time.process_time() - cpu0}
    return LookupTable(key, entries, info)


def build_or_load_table(
    path: str | Path,
    hyper: Hyperspace,
    data: str = "digits",
    *,
    seed: int = 0,
    settings: BKDSettings | None = None,
    progress: bool = False,
) -> LookupTable:
    """Reuse `path` if it holds a table with the same key (else ConfigError naming the field); else build it once."""
    settings = settings or BKDSettings()
    key = table_key(hyper, data, seed, settings)
    p = Path(path)
    if p.is_file():
        table = LookupTable.load(p, expect_key=key)
        log.info("lookup table reused: %s", p)
        return table
    table = build_table(hyper, data, seed=seed, settings=settings, progress=progress)
    table.save(p)
    log.info("lookup table written: %s", p)
    return table


__all__ = [
    "BKDSettings",
    "Teacher",
    "train_teacher",
    "teacher_digest",
    "nsr_loss",
    "StageArch",
    "StageStudent",
    "ElasticStageTrainer",
    "LookupTable",
    "check_key",
    "table_key",
    "build_table",
    "build_or_load_table",
]
