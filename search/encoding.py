"""The encoding of subnet configs that search algorithms and predictors see, and its variation operators.

A space (`qcompile.spaces.StagedSpace`) says what a config is: its genes (`space.genes()`: a field, an index and
the choices), the bit choices and the layer slots. This module says how search reads and varies configs:
`encode` (one-hot per gene, skipped blocks all-zero, APQ section 3.2; or one choice index per gene),
`decode` (its inverse on canonical configs), `choice_counts` (bounds for pymoo and the operators), and the
APQ / OFA evolution operators `mutate` (resample each gene with a probability) and `crossover` (uniform).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from qcompile.config import FLOAT_BITS, QuantPolicy, SubnetConfig
from qcompile.errors import ConfigError

__all__ = ["choice_counts", "crossover", "decode", "encode", "encoding_size", "mutate"]


def encode(space, cfg: SubnetConfig, one_hot: bool = True) -> np.ndarray:
    """Fixed-length vector: one-hot per gene (APQ/QFA predictors); skipped blocks are all-zero (APQ 3.2).

    Bits: one-hot over `bit_choices` for weight and activation of every layer slot. With
    `one_hot=False`, the choice indices (for evolution operators).
    """
    space.validate(cfg)
    active = space._active_block_slots(cfg)
    parts: list[np.ndarray] = []
    for gene in space.genes():
        v = cfg.resolution if gene.field == "resolution" else getattr(cfg, gene.field)[gene.index]
        idx = gene.choices.index(v)
        if not one_hot:
            parts.append(np.array([idx], dtype=np.float32))
            continue
        vec = np.zeros(len(gene.choices), dtype=np.float32)
        skipped = gene.field in ("kernels", "expands", "channels") and not active[gene.index]
        if not skipped:
            vec[idx] = 1.0
        parts.append(vec)
    policy = cfg.policy or QuantPolicy.uniform(space.num_layer_slots, FLOAT_BITS)
    slot_active = space._active_layer_slots(cfg)
    for i, (w, a) in enumerate(policy.bits):
        for b in (w, a):
            if not one_hot:
                parts.append(np.array([space.bit_choices.index(b)], dtype=np.float32))
                continue
            vec = np.zeros(len(space.bit_choices), dtype=np.float32)
            if slot_active[i]:
                vec[space.bit_choices.index(b)] = 1.0
            parts.append(vec)
    return np.concatenate(parts)


def encoding_size(space, one_hot: bool = True) -> int:
    """Length of `encode(space, cfg, one_hot)`."""
    if not one_hot:
        return len(space.genes()) + 2 * space.num_layer_slots
    return sum(len(g.choices) for g in space.genes()) + 2 * space.num_layer_slots * len(space.bit_choices)


def decode(space, indices: Sequence[int]) -> SubnetConfig:
    """Inverse of `encode(space, cfg, one_hot=False)` on canonical configs; the result is canonical.

    Raises `ConfigError` naming the position when the length is wrong or an index is outside its gene's choices.
    """
    genes = space.genes()
    if len(indices) != len(genes) + 2 * space.num_layer_slots:
        raise ConfigError("indices", len(indices), f"{len(genes) + 2 * space.num_layer_slots} choice indices")
    counts = choice_counts(space)
    for pos, (i, n) in enumerate(zip(indices, counts)):
        if not 0 <= int(i) < n:
            raise ConfigError(f"indices[{pos}]", int(i), f"a choice index in [0, {n - 1}]")
    it = iter(int(i) for i in indices)
    vals = iter([g.choices[next(it)] for g in genes])
    cfg = space._make(lambda g: next(vals), None, None)
    bits = [space.bit_choices[next(it)] for _ in range(2 * space.num_layer_slots)]
    policy = QuantPolicy(tuple(zip(bits[::2], bits[1::2])))
    return space.canonical(cfg.with_policy(None if policy.is_float else policy))


def choice_counts(space) -> list[int]:
    """Number of choices per index of `encode(space, cfg, one_hot=False)` (for mutation / crossover / pymoo bounds)."""
    return [len(g.choices) for g in space.genes()] + [len(space.bit_choices)] * (2 * space.num_layer_slots)


def mutate(space, cfg: SubnetConfig, rate: float = 0.1, seed: int | None = None, bits: Sequence[int] | None = None):
    """Resample each gene with probability `rate` (APQ / OFA evolution); bits only within `bits`."""
    rng = random.Random(seed)
    idx = encode(space, cfg, one_hot=False).astype(int)
    counts = choice_counts(space)
    allowed = None if bits is None else [space.bit_choices.index(b) for b in space._check_bits("bits", bits)]
    ng = len(space.genes())
    for i in range(len(idx)):
        if rng.random() < rate:
            idx[i] = rng.choice(allowed) if (i >= ng and allowed is not None) else rng.randrange(counts[i])
    return decode(space, idx)


def crossover(space, a: SubnetConfig, b: SubnetConfig, seed: int | None = None) -> SubnetConfig:
    """Uniform crossover: each gene from either parent (APQ)."""
    rng = random.Random(seed)
    ia, ib = encode(space, a, one_hot=False), encode(space, b, one_hot=False)
    return decode(space, [x if rng.random() < 0.5 else y for x, y in zip(ia, ib)])
