"""Subnet sampling per training step: the sandwich rule with random bit policies.

Sandwich rule (Yu & Huang 2019; OQA 3.3 and A.2; QFA Sec. 4 "Subnet Sampling"): the largest
subnet, the smallest subnet and `n` random subnets per step, gradients accumulated over all of
them. The sampler is a pure function of (seed, step), so a resumed run samples the same subnets.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from qcompile.config import QuantPolicy, SubnetConfig
from qcompile.train.config import ELASTIC_FIELDS, FLOAT_BITS, Phase


def _uniform(space: Any, which: str, bits: int | None) -> SubnetConfig:
    """`space.largest(bits=...)` / `space.smallest(bits=...)`; 32 (float) is `bits=None`."""
    fn = getattr(space, which)
    return fn(bits=None if bits is None or bits == FLOAT_BITS else bits)


def with_uniform_bits(cfg: SubnetConfig, bits: int | None) -> SubnetConfig:
    """`cfg` with every slot at `bits` (None or 32: float), keeping the policy length of `cfg`."""
    if bits is None or bits == FLOAT_BITS:
        return cfg.with_policy(None)
    if cfg.policy is None:
        raise ValueError("with_uniform_bits needs a config whose policy fixes the slot count")
    return cfg.with_policy(QuantPolicy.uniform(len(cfg.policy), bits))


class SandwichSampler:
    """Draws the subnets of one step for a `Phase` of a search space."""

    def __init__(self, space: Any, seed: int = 0):
        self.space = space
        self.seed = seed

    def rng(self, step: int) -> random.Random:
        # A fresh generator per step: resume needs no sampler state and ranks agree on subnets.
        return random.Random(self.seed * 1_000_003 + step * 7919 + 17)

    def _raw_sample(self, seed: int, bits) -> SubnetConfig:
        # Not canonicalised: the policy / kernels are grafted onto other depths (training unchanged).
        if hasattr(self.space, "canonical"):
            return self.space.sample(seed=seed, bits=bits, canonical=False)
        return self.space.sample(seed=seed, bits=bits)

    def _restrict(self, cfg: SubnetConfig, largest: SubnetConfig, phase: Phase) -> SubnetConfig:
        """Keep only the phase's elastic dimensions; the others come from the largest (OFA PS)."""
        fixed = {f: getattr(largest, f) for e, f in ELASTIC_FIELDS.items() if e not in phase.elastic}
        return replace(cfg, **fixed) if fixed else cfg

    def _random_policy(self, rng: random.Random, phase: Phase) -> QuantPolicy | None:
        if phase.bits is None:
            return None
        return self._raw_sample(rng.randrange(2**31), phase.bits).policy

    def _extreme(self, rng: random.Random, phase: Phase, which: str) -> SubnetConfig:
        if phase.bits is None:
            return _uniform(self.space, which, None)
        if phase.extreme_bits == "extreme":
            b = phase.max_bits if which == "largest" else phase.min_bits
            if which == "largest" and FLOAT_BITS in phase.bits:
                b = None
            return _uniform(self.space, which, b)
        if phase.extreme_bits == "random_uniform":
            return _uniform(self.space, which, rng.choice(phase.bits))
        cfg = _uniform(self.space, which, None)
        return cfg.with_policy(self._random_policy(rng, phase))

    def sample(self, step: int, phase: Phase) -> list[SubnetConfig]:
        """Subnets of `step`: [largest] or [largest, smallest, random x num_random]."""
        rng = self.rng(step)
        largest_arch = _uniform(self.space, "largest", None)
        out = [self._extreme(rng, phase, "largest")]
        if phase.sampler == "largest":
            return out
        smallest = self._restrict(self._extreme(rng, phase, "smallest"), largest_arch, phase)
        out.append(smallest)
        for _ in range(phase.num_random):
            cfg = self._raw_sample(rng.randrange(2**31), phase.bits)
            out.append(self._restrict(cfg, largest_arch, phase))
        return out

    def extremes(self, phase: Phase) -> tuple[SubnetConfig, SubnetConfig]:
        """Largest subnet at the phase's highest bits and smallest at its lowest (for evaluation)."""
        if phase.bits is None:
            return _uniform(self.space, "largest", None), _uniform(self.space, "smallest", None)
        top = None if FLOAT_BITS in phase.bits else phase.max_bits
        return _uniform(self.space, "largest", top), _uniform(self.space, "smallest", phase.min_bits)
