"""Training options: `TrainConfig` (optimiser, schedule, losses) and `Phase` (one stage of the recipe).

Defaults are sized for the embedded digits dataset on 2 CPU cores: `default_phases()` (float
supernet, then bits {2,3,4,32}, then {2,3,4}, QFA Sec. 4 "Elastic Quantization") runs 10 epochs in
total. Recipe constants cite their source; small-data changes are noted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from qcompile.errors import ConfigError

FLOAT_BITS = 32

#: Names of the elastic dimensions a phase may open, and the SubnetConfig fields they control.
ELASTIC_FIELDS: dict[str, str] = {
    "resolution": "resolution",
    "depth": "depths",
    "kernel": "kernels",
    "expand": "expands",
    "width": "widths",
    "channels": "channels",
}
ALL_ELASTIC = tuple(ELASTIC_FIELDS)
SAMPLERS = ("largest", "sandwich")
EXTREME_BITS = ("random_uniform", "random", "extreme")
TEACHERS = ("largest", "external", "none")


@dataclass(frozen=True)
class Phase:
    """One stage of supernet training.

    - `bits`: bit-width choices sampled per layer; None = float supernet; 32 inside = float layers
      mixed in (QFA stage 1 uses {2,3,4,32}).
    - `sampler`: "largest" trains only the largest subnet (OQA Step 0 / OFA's first stage);
      "sandwich" trains largest + smallest + `num_random` random subnets per step (Yu & Huang 2019).
    - `extreme_bits`: the bits of the largest/smallest sandwich members: "random_uniform" (the whole
      network at one random choice, QFA Sec. 4 "Subnet Sampling"), "random" (a random per-layer
      policy), "extreme" (largest at max bits, smallest at min bits, as in BigNAS).
    - `elastic`: the dimensions sampled; the others stay at the largest value. A sequence of phases
      opening kernel, then depth, then expand is OFA's progressive shrinking.
    - `teacher`: in-place distillation from the largest subnet of the same step ("largest"), from an
      external frozen supernet such as the K-bit one in bit inheritance ("external", OQA Sec. 3.4),
      or none.
    - `bit_schedule`: retraining-free Top-K freezing of the smallest bit-width (Eq. 6, Eq. 7).
    - `idm_weight`: weight of the IDM feature-alignment loss (retraining-free Eq. 8), 0 = off.
    - `lr`: this phase's peak learning rate (None: TrainConfig.lr).
    """

    name: str
    epochs: int
    bits: tuple[int, ...] | None = None
    sampler: str = "sandwich"
    num_random: int = 2
    extreme_bits: str = "random_uniform"
    elastic: tuple[str, ...] = ALL_ELASTIC
    teacher: str = "largest"
    bit_schedule: bool = False
    idm_weight: float = 0.0
    lr: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"phase {self.name!r}: epochs", self.epochs, "an integer >= 0")
        if self.bits is not None:
            bits = tuple(sorted({int(b) for b in self.bits}))
            if not bits or any(b < 1 or (b > 8 and b != FLOAT_BITS) for b in bits):
                raise ConfigError(
                    f"phase {self.name!r}: bits", self.bits, "bit-widths in 1..8 or 32, or None"
                )
            object.__setattr__(self, "bits", bits)
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"phase {self.name!r}: sampler", self.sampler, SAMPLERS)
        if self.extreme_bits not in EXTREME_BITS:
            raise ConfigError(f"phase {self.name!r}: extreme_bits", self.extreme_bits, EXTREME_BITS)
        if self.teacher not in TEACHERS:
            raise ConfigError(f"phase {self.name!r}: teacher", self.teacher, TEACHERS)
        if self.num_random < 0:
            raise ConfigError(f"phase {self.name!r}: num_random", self.num_random, ">= 0")
        bad = [e for e in self.elastic if e not in ELASTIC_FIELDS]
        if bad:
            raise ConfigError(f"phase {self.name!r}: elastic", bad[0], ALL_ELASTIC)
        object.__setattr__(self, "elastic", tuple(self.elastic))
        if self.idm_weight < 0:
            raise ConfigError(f"phase {self.name!r}: idm_weight", self.idm_weight, ">= 0")
        if self.bit_schedule and (self.bits is None or len(self.quant_bits) < 2):
            raise ConfigError(
                f"phase {self.name!r}: bit_schedule", True, "phases with at least two quantized bit-widths"
            )

    @property
    def quant_bits(self) -> tuple[int, ...]:
        """The quantized choices (bits without 32)."""
        return tuple(b for b in (self.bits or ()) if b != FLOAT_BITS)

    @property
    def max_bits(self) -> int | None:
        """Highest choice; None for float (32 counts as float)."""
        if self.bits is None or FLOAT_BITS in self.bits:
            return None
        return max(self.bits)

    @property
    def min_bits(self) -> int | None:
        return min(self.quant_bits) if self.quant_bits else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bits"] = None if self.bits is None else list(self.bits)
        d["elastic"] = list(self.elastic)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Phase:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"phase key {unknown[0]!r}", d[unknown[0]], sorted(known))
        d = dict(d)
        if d.get("bits") is not None:
            d["bits"] = tuple(d["bits"])
        if "elastic" in d:
            d["elastic"] = tuple(d["elastic"])
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and loss settings of a supernet training run.

    SGD with Nesterov momentum 0.9, label smoothing 0.1 and KD weight 1 at temperature 1 follow OQA
    A.2; global gradient-norm clipping follows QFA Sec. 5 (500 there, for a 2048 batch of sums over
    6 subnets; 5 here for small batches). Weight decay 3e-5 is OQA's; the learning rate (0.05 at
    batch 64) is tuned for digits. Warm-up is linear over `warmup_epochs` at the start of each
    phase, then cosine annealing to `min_lr` (OQA A.2).
    """

    batch_size: int = 64
    lr: float = 0.05
    min_lr: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    kd_weight: float = 1.0
    kd_temperature: float = 1.0
    child_ce_weight: float = 1.0
    fair_weight_decay: bool = False
    unstable_eps: float = 0.2
    topk_fraction: float = 0.5
    bit_schedule_every: int = 20
    idm_floor: float = 0.0
    idm_eps: float = 1e-5
    seed: int = 0
    evaluate: bool = True
    calib_batches: int = 4
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {"batch_size": self.batch_size, "lr": self.lr, "grad_clip": self.grad_clip}
        for k, v in positive.items():
            if not v > 0:
                raise ConfigError(f"TrainConfig.{k}", v, "> 0")
        for k in ("weight_decay", "warmup_epochs", "kd_weight", "child_ce_weight", "min_lr"):
            if getattr(self, k) < 0:
                raise ConfigError(f"TrainConfig.{k}", getattr(self, k), ">= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("TrainConfig.label_smoothing", self.label_smoothing, "[0, 1)")
        if not 0 <= self.unstable_eps <= 1:
            raise ConfigError("TrainConfig.unstable_eps", self.unstable_eps, "[0, 1] (retraining-free Eq. 6)")
        if not 0 <= self.topk_fraction <= 1:
            raise ConfigError("TrainConfig.topk_fraction", self.topk_fraction, "[0, 1]")
        if self.kd_temperature <= 0:
            raise ConfigError("TrainConfig.kd_temperature", self.kd_temperature, "> 0")
        if self.bit_schedule_every < 1:
            raise ConfigError("TrainConfig.bit_schedule_every", self.bit_schedule_every, ">= 1")
        if self.checkpoint_every < 0:
            raise ConfigError("TrainConfig.checkpoint_every", self.checkpoint_every, ">= 0 (0: epoch ends only)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"TrainConfig key {unknown[0]!r}", d[unknown[0]], sorted(known))
        return cls(**d)


def default_phases(epochs: tuple[int, int, int] = (4, 3, 3)) -> list[Phase]:
    """QFA's two-stage elastic quantization after a float supernet (QFA Sec. 4), sized for digits."""
    return [
        Phase("float", epochs[0], bits=None),
        Phase("bits-2-3-4-32", epochs[1], bits=(2, 3, 4, 32)),
        Phase("bits-2-3-4", epochs[2], bits=(2, 3, 4)),
    ]


def progressive_shrinking_phases(epochs_per_stage: int, bits: tuple[int, ...] | None = None) -> list[Phase]:
    """OFA progressive shrinking: largest only, then open kernel, depth, expand/width (and resolution)."""
    stages = [
        ("ps-largest", "largest", ("resolution",)),
        ("ps-kernel", "sandwich", ("resolution", "kernel")),
        ("ps-depth", "sandwich", ("resolution", "kernel", "depth")),
        ("ps-expand", "sandwich", ALL_ELASTIC),
    ]
    return [Phase(n, epochs_per_stage, bits=bits, sampler=s, elastic=e) for n, s, e in stages]
