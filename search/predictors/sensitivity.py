"""Per-layer quantization sensitivities of a supernet and the additive features built from them.

The retraining-free paper's greedy bit search (Sec. 3.5, Eq. 9) ranks bit moves by the loss they cause,
measured one layer at a time on the supernet. The same measurements make a cheap prior for an accuracy
predictor: on the largest architecture at the top bit-width, lower one layer slot's weight bits (or its
activation bits) to a low bit-width ``b`` and record the increase of the evaluation loss,

    s_w[slot, b] = L(all top bits, slot's weights at b) - L(all top bits)      (same for activations: s_a)

Under the usual additive approximation of quantization damage (HAWQ / the paper's Eq. 9 treats the
normalised loss of one move as independent of the others), a subnet's loss increase is about the sum of
the sensitivities of its low-bit layers. `LayerSensitivity.features(space, configs)` gives that sum split
by bit-width and by weights / activations, so a regression can learn how much a 3-bit layer costs
relative to a 2-bit one, and how the sensitivities measured on the largest architecture carry over to
smaller kernels, expansions and depths (a skipped layer slot contributes nothing).

Measuring costs ``2 * num_layer_slots * len(low_bits) + 1`` supernet evaluations (121 for the demo
space at 2 bits), each cached by `SupernetEvaluator`, so the measurement is resumable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.config import QuantPolicy, SubnetConfig
from qcompile.errors import CheckpointError, ConfigError
from qcompile.utils.io import atomic_write_text

__all__ = ["LayerSensitivity", "measure_sensitivities", "sensitivity_configs"]


def sensitivity_configs(
    space: Any, low_bits: Sequence[int] = (2,), top: int = 4, arch: SubnetConfig | None = None
) -> list[tuple[str, int, int, SubnetConfig]]:
    """The configs whose losses define the sensitivities: ``("base", -1, top, cfg)`` (every slot at
    `top` bits) and ``(kind, slot, b, cfg)`` for kind "w" / "a", every layer slot and every `b` in
    `low_bits` (that slot's weights, resp. activations, at `b`; every other entry at `top`).

    `arch` (default: the largest architecture of the space) fixes the architecture; every layer slot
    must be active in it.
    """
    bits = set(space.bit_choices)
    for b in (*low_bits, top):
        if b not in bits:
            raise ConfigError("sensitivity bits", b, f"the space's bit choices {sorted(bits)}")
    if any(b >= top for b in low_bits):
        raise ConfigError("low_bits", tuple(low_bits), f"bit-widths below top={top}")
    arch = space.largest() if arch is None else arch
    n = space.num_layer_slots
    if not all(space._active_layer_slots(arch)):
        raise ConfigError("arch", arch.to_dict(), "an architecture with every layer slot active (e.g. the largest)")
    base = [(top, top)] * n
    out = [("base", -1, top, arch.with_policy(QuantPolicy(tuple(base))))]
    for b in low_bits:
        for slot in range(n):
            for kind in ("w", "a"):
                pol = list(base)
                pol[slot] = (b, top) if kind == "w" else (top, b)
                out.append((kind, slot, b, arch.with_policy(QuantPolicy(tuple(pol)))))
    return out


@dataclass(frozen=True)
class LayerSensitivity:
    """Loss increases of one-layer bit moves on one architecture (see the module docstring).

    `weight[slot, j]` / `act[slot, j]`: loss increase with that slot's weights / activations at
    `low_bits[j]`, every other entry at `top` bits; `base_loss` is the all-`top` loss.
    """

    low_bits: tuple[int, ...]
    top: int
    base_loss: float
    weight: np.ndarray
    act: np.ndarray

    def __post_init__(self) -> None:
        for name in ("weight", "act"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.ndim != 2 or v.shape[1] != len(self.low_bits) or not np.all(np.isfinite(v)):
                raise ConfigError(f"LayerSensitivity.{name}", v.shape, f"a finite (slots, {len(self.low_bits)}) array")
            object.__setattr__(self, name, v)
        if self.weight.shape != self.act.shape:
            raise ConfigError("LayerSensitivity.act", self.act.shape, f"the shape of weight {self.weight.shape}")

    def _per_slot(self, sens: np.ndarray, b: int) -> np.ndarray:
        """Sensitivity of every slot at bit-width `b`: measured where `b` is in `low_bits`; otherwise the
        nearest measured lower bit-width scaled by 4^-(b - b0), the quantization-noise power of a uniform
        quantizer (step 2^-b, noise variance step^2 / 12); 0 at `top` and above."""
        if b >= self.top:
            return np.zeros(sens.shape[0])
        if b in self.low_bits:
            return sens[:, self.low_bits.index(b)]
        lower = [x for x in self.low_bits if x < b]
        b0 = max(lower) if lower else min(self.low_bits)
        return sens[:, self.low_bits.index(b0)] * 4.0 ** -(b - b0)

    def feature_names(self, bits: Sequence[int]) -> list[str]:
        return [f"sens_{k}{b}" for k in ("w", "a") for b in bits] + ["sens_additive"]

    def features(self, space: Any, configs: Sequence[SubnetConfig], bits: Sequence[int] = (2, 3)) -> np.ndarray:
        """(n, 2 * len(bits) + 1): for weights then activations and every `b` in `bits`, the summed
        sensitivity (at `b`) of the active layer slots at `b` bits; last, the additive estimate of the loss
        increase over all active slots (every bit-width below `top`)."""
        configs = list(configs)
        n = space.num_layer_slots
        if self.weight.shape[0] != n:
            raise ConfigError("LayerSensitivity", f"{self.weight.shape[0]} layer slots", f"{n} (this space's)")
        out = np.zeros((len(configs), 2 * len(bits) + 1))
        cache: dict[tuple[str, int], np.ndarray] = {}

        def per(kind: str, b: int) -> np.ndarray:
            if (kind, b) not in cache:
                cache[kind, b] = self._per_slot(self.weight if kind == "w" else self.act, b)
            return cache[kind, b]

        for i, cfg in enumerate(configs):
            if cfg.policy is None:
                continue  # a float subnet: no quantization damage
            active = space._active_layer_slots(cfg)
            total = 0.0
            for slot, ((w, a), on) in enumerate(zip(cfg.policy.bits, active)):
                if not on:
                    continue
                for k, (kind, v) in enumerate((("w", w), ("a", a))):
                    s = float(per(kind, v)[slot]) if v < self.top else 0.0
                    total += s
                    if v in bits:
                        out[i, k * len(bits) + list(bits).index(v)] += s
            out[i, -1] = total
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "low_bits": list(self.low_bits),
            "top": self.top,
            "base_loss": self.base_loss,
            "weight": self.weight.tolist(),
            "act": self.act.tolist(),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LayerSensitivity:
        try:
            return cls(
                tuple(int(b) for b in doc["low_bits"]),
                int(doc["top"]),
                float(doc["base_loss"]),
                np.asarray(doc["weight"], dtype=np.float64),
                np.asarray(doc["act"], dtype=np.float64),
            )
        except KeyError as e:
            raise ConfigError(
                "LayerSensitivity", f"missing field {e.args[0]!r}", "low_bits, top, base_loss, weight, act"
            ) from e

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LayerSensitivity:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a saved LayerSensitivity ({e})") from e


def measure_sensitivities(
    evaluator: Any, low_bits: Sequence[int] = (2,), top: int = 4, arch: SubnetConfig | None = None
) -> LayerSensitivity:
    """Measure `sensitivity_configs` with a `SupernetEvaluator` (its protocol, cache and progress bar)."""
    space = evaluator.space
    items = sensitivity_configs(space, low_bits, top, arch)
    loss = evaluator.loss([cfg for *_, cfg in items])
    base = float(loss[0])
    n = space.num_layer_slots
    w = np.zeros((n, len(low_bits)))
    a = np.zeros((n, len(low_bits)))
    for (kind, slot, b, _), v in zip(items[1:], loss[1:]):
        (w if kind == "w" else a)[slot, list(low_bits).index(b)] = float(v) - base
    return LayerSensitivity(tuple(int(b) for b in low_bits), int(top), base, w, a)
