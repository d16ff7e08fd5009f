"""Staged search spaces: a stem, elastic stages of blocks, a head. MobileNetV2/V3 and SpaceEvo are instances.

The space owns everything a config means: which fields exist and their choices (the *genes*
search and predictors see through `encode`/`decode`), validation, sampling, the layer list of a
subnet (for exact parameter / MAC / BitOP counts computed from the config alone), and building
the weight-sharing supernet.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from qcompile.config import FLOAT_BITS, QuantPolicy, SubnetConfig
from qcompile.errors import ConfigError
from qcompile.nn.blocks import BLOCK_CONVS, BLOCK_TYPES, ConvUnit, ElasticBlock
from qcompile.nn.elastic import (
    Const,
    DepthGate,
    ElasticConv2d,
    ElasticLinear,
    QuantPoint,
    WidthOf,
    make_divisible,
    out_size,
)

#: the "format" field of `StagedSpace.to_json()` documents
SPACE_JSON_FORMAT = "qcompile.space/1"
#: space name -> function(space) -> extra fields of its JSON (SpaceEvo's encoding: qcompile.spaces.hyperspace)
JSON_EXTRAS: dict[str, Any] = {}


@dataclass(frozen=True)
class StageSpec:
    """One stage: block type, width choices, depth choices, first stride, kernel and expand choices."""

    block: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    stride: int
    kernels: tuple[int, ...] = (3,)
    expands: tuple[float, ...] = (1,)
    act: str = "relu"
    se: bool = False
    #: APQ fine-grained middle channels: per block, choices are multiples of 8 between these
    #: ratios of the block input (None = expand ratios)
    channel_ratio_range: tuple[float, float] | None = None

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @property
    def elastic(self) -> bool:
        return any(len(c) > 1 for c in (self.widths, self.depths, self.kernels, self.expands)) or (
            self.channel_ratio_range is not None
        )


@dataclass(frozen=True)
class HeadSpec:
    """Head: optional 1x1 expand (+BN+act) before the pool, optional 1x1 feature mix after it, classifier."""

    expand: int | None
    mix: int | None
    act: str
    mix_bn: bool = False
    dropout: float = 0.0


@dataclass(frozen=True)
class LayerDesc:
    """One conv / linear layer of a concrete subnet (computed from the config alone)."""

    name: str
    kind: str  # "conv" | "linear"
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    groups: int
    in_hw: int
    out_hw: int
    bias: bool
    bn: bool
    slot: int | None
    role: str

    @property
    def params(self) -> int:
        w = self.out_ch * (self.in_ch // self.groups) * self.kernel * self.kernel
        return w + (self.out_ch if self.bias else 0) + (2 * self.out_ch if self.bn else 0)

    @property
    def macs(self) -> int:
        return self.out_hw * self.out_hw * self.out_ch * (self.in_ch // self.groups) * self.kernel * self.kernel


@dataclass(frozen=True)
class Gene:
    """One searchable choice of a config: `field[index]` takes a value from `choices`."""

    field: str
    index: int | None
    choices: tuple


class StagedSpace:
    """A search space of stem -> stages -> head networks with elastic depth, width, kernel, expand, resolution, bits."""

    def __init__(
        self,
        name: str,
        *,
        stem_widths: tuple[int, ...],
        stem_act: str,
        stages: Sequence[StageSpec],
        head: HeadSpec,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        resolutions: Sequence[int] = (224,),
        in_channels: int = 3,
        search_widths: bool = False,
        bit_choices: tuple[int, ...] = (2, 3, 4, 8, 32),
        kernel_transform: bool = False,
        args: dict | None = None,
    ) -> None:
        if not _is_int(num_classes, 1):
            raise ConfigError("num_classes", num_classes, "an integer >= 1")
        if not _is_positive_finite(width_mult):
            raise ConfigError("width_mult", width_mult, "a positive finite number")
        if not _is_int(in_channels, 1):
            raise ConfigError("in_channels", in_channels, "an integer >= 1")
        try:
            res = tuple(sorted(int(r) for r in resolutions))
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError("resolutions", resolutions, "a non-empty list of integer sizes >= 8") from e
        if not res or res[0] < 8:
            raise ConfigError("resolutions", resolutions, "a non-empty list of sizes >= 8")
        for s in stages:
            if s.block not in BLOCK_TYPES:
                raise ConfigError("stages.block", s.block, BLOCK_TYPES)
        self.name = name
        self.args = dict(args or {})
        self.num_classes, self.width_mult, self.in_channels = num_classes, width_mult, in_channels
        self.resolutions = res
        self.search_widths = search_widths
        self.bit_choices = tuple(bit_choices)
        self.kernel_transform = kernel_transform

        def scale(w: int) -> int:
            return make_divisible(w * width_mult, 8)

        self.stem_widths = tuple(sorted({scale(w) for w in stem_widths}))
        self.stem_act = stem_act
        self.stages = tuple(replace(s, widths=tuple(sorted({scale(w) for w in s.widths}))) for s in stages)
        self.head = replace(
            head,
            expand=None if head.expand is None else scale(head.expand),
            mix=None if head.mix is None else scale(head.mix),
        )
        # stages that appear in the config (any choice) vs fixed ones
        self.config_stages = tuple(i for i, s in enumerate(self.stages) if s.elastic)
        if not search_widths and any(len(self.stages[i].widths) > 1 for i in range(len(self.stages))):
            raise ConfigError("widths", "several width choices", "search_widths=True to search widths")
        self._block_slots: list[tuple[int, int]] = [
            (si, b) for si in self.config_stages for b in range(self.stages[si].max_depth)
        ]
        self._layer_slots: list[str] = []
        self._slot_of: dict[tuple[int, int], tuple[int, ...]] = {}
        for si, b in self._block_slots:
            n = BLOCK_CONVS[self.stages[si].block]
            start = len(self._layer_slots)
            self._layer_slots += [f"stages.{si}.blocks.{b}.conv{j}" for j in range(n)]
            self._slot_of[(si, b)] = tuple(range(start, start + n))

    # ------------------------------------------------------------------------------------------
    # structure
    # ------------------------------------------------------------------------------------------
    @property
    def num_block_slots(self) -> int:
        return len(self._block_slots)

    def layer_slots(self) -> list[str]:
        """Names of the policy's layer slots, in policy order."""
        return list(self._layer_slots)

    @property
    def num_layer_slots(self) -> int:
        return len(self._layer_slots)

    def block_slot(self, stage: int, index: int) -> int | None:
        """Index of block `index` of stage `stage` in `kernels`/`expands`, or None for a fixed stage."""
        try:
            return self._block_slots.index((stage, index))
        except ValueError:
            return None

    def _fine_channels(self, si: int, in_max: int) -> tuple[int, ...]:
        lo, hi = self.stages[si].channel_ratio_range  # type: ignore[misc]
        return tuple(range(make_divisible(in_max * lo, 8), make_divisible(in_max * hi, 8) + 1, 8))

    def _stage_in_max(self, si: int) -> int:
        return max(self.stem_widths) if si == 0 else max(self.stages[si - 1].widths)

    def genes(self) -> list[Gene]:
        """The searchable choices, in encoding order. Fixed (single-choice) values are included for clarity."""
        if not hasattr(self, "_genes"):
            self._genes = self._build_genes()
        return list(self._genes)

    def _build_genes(self) -> list[Gene]:
        g = [Gene("resolution", None, self.resolutions)]
        if self.search_widths:
            g.append(Gene("widths", 0, self.stem_widths))
            for k, si in enumerate(self.config_stages):
                g.append(Gene("widths", k + 1, self.stages[si].widths))
        for k, si in enumerate(self.config_stages):
            g.append(Gene("depths", k, self.stages[si].depths))
        for bs, (si, b) in enumerate(self._block_slots):
            st = self.stages[si]
            g.append(Gene("kernels", bs, st.kernels))
            if st.channel_ratio_range is not None:
                in_max = self._stage_in_max(si) if b == 0 else max(st.widths)
                g.append(Gene("channels", bs, self._fine_channels(si, in_max)))
            g.append(Gene("expands", bs, st.expands))
        return g

    # ------------------------------------------------------------------------------------------
    # configs
    # ------------------------------------------------------------------------------------------
    def _uses_channels(self) -> bool:
        return any(self.stages[si].channel_ratio_range is not None for si in self.config_stages)

    def _make(self, pick, bits: Sequence[int] | None, rng: random.Random | None) -> SubnetConfig:
        values: dict[str, Any] = {"widths": [], "depths": [], "kernels": [], "expands": [], "channels": []}
        resolution = None
        for gene in self.genes():
            v = pick(gene)
            if gene.field == "resolution":
                resolution = v
            else:
                values[gene.field].append(v)
        policy = None
        if bits is not None:
            bits = self._check_bits("bits", bits)
            if rng is None:
                policy = QuantPolicy.uniform(self.num_layer_slots, bits[0])
            else:
                policy = QuantPolicy(tuple((rng.choice(bits), rng.choice(bits)) for _ in range(self.num_layer_slots)))
        return SubnetConfig(
            resolution=resolution,
            depths=tuple(values["depths"]),
            kernels=tuple(values["kernels"]),
            expands=tuple(values["expands"]),
            widths=tuple(values["widths"]) if self.search_widths else None,
            channels=tuple(values["channels"]) if self._uses_channels() else None,
            policy=policy,
        )

    def _check_bits(self, name: str, bits: Sequence[int] | int) -> tuple[int, ...]:
        if isinstance(bits, int):
            bits = (bits,)
        bits = tuple(int(b) for b in bits)
        bad = [b for b in bits if b not in self.bit_choices]
        if not bits or bad:
            raise ConfigError(name, bad or bits, self.bit_choices)
        return bits

    def sample(
        self, seed: int | None = None, bits: Sequence[int] | None = None, canonical: bool = True
    ) -> SubnetConfig:
        """A uniformly random subnet; with `bits`, also a random per-layer (weight, act) bit policy.

        The result is `canonical` (genes of skipped blocks normalised) unless `canonical=False`, which
        the training sampler uses when it grafts the sampled policy or kernels onto another depth.
        """
        rng = random.Random(seed)
        cfg = self._make(lambda g: rng.choice(g.choices), bits, rng)
        return self.canonical(cfg) if canonical else cfg

    def canonical(self, cfg: SubnetConfig) -> SubnetConfig:
        """The one representative of every config that compiles to the same network as `cfg`.

        Genes of blocks the depths skip (kernel, expand, fine channels) take their first choice, and
        the policy entries of their layer slots take the largest weight and activation bits of the
        active slots (so a float policy stays float and a uniform one stays uniform). Two configs that
        differ only in skipped blocks then have equal `stable_hash` (APQ Sec. 3.2 encodes
        skipped blocks as all-zero for the same reason). Idempotent.
        """
        self.validate(cfg)
        active = self._active_block_slots(cfg)
        if all(active):
            return cfg
        elastic = ("kernels", "expands", "channels")
        first = {(g.field, g.index): g.choices[0] for g in self.genes() if g.field in elastic}
        changes: dict[str, Any] = {}
        for fname in ("kernels", "expands", "channels"):
            seq = getattr(cfg, fname)
            if seq is None:
                continue
            new = tuple(v if active[i] else first.get((fname, i), v) for i, v in enumerate(seq))
            if new != seq:
                changes[fname] = new
        if cfg.policy is not None:
            slot_active = self._active_layer_slots(cfg)
            on = [p for p, a in zip(cfg.policy.bits, slot_active) if a]
            if on:
                fill = (max(w for w, _ in on), max(a for _, a in on))
                bits = tuple(p if a else fill for p, a in zip(cfg.policy.bits, slot_active))
                if bits != cfg.policy.bits:
                    changes["policy"] = QuantPolicy(bits)
        return replace(cfg, **changes) if changes else cfg

    def largest(self, bits: int | None = None) -> SubnetConfig:
        """The largest subnet; with `bits`, uniform bit-width `bits` for weights and activations."""
        return self._make(lambda g: max(g.choices), None if bits is None else (bits,), None)

    def smallest(self, bits: int | None = None) -> SubnetConfig:
        return self._make(lambda g: min(g.choices), None if bits is None else (bits,), None)

    def uniform_policy(self, weight_bits: int, act_bits: int | None = None) -> QuantPolicy:
        self._check_bits("weight_bits", weight_bits)
        self._check_bits("act_bits", weight_bits if act_bits is None else act_bits)
        return QuantPolicy.uniform(self.num_layer_slots, weight_bits, act_bits)

    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Raise `ConfigError` naming the field, value and allowed set on any violation; return cfg."""
        if not isinstance(cfg, SubnetConfig):
            raise ConfigError("config", type(cfg).__name__, "a qcompile.SubnetConfig")
        counts: dict[str, int] = {}
        for gene in self.genes():
            if gene.field == "resolution":
                if cfg.resolution not in gene.choices:
                    raise ConfigError("resolution", cfg.resolution, gene.choices)
                continue
            seq = getattr(cfg, gene.field)
            if seq is None:
                raise ConfigError(gene.field, None, f"a list of {self._expected_len(gene.field)} values")
            counts[gene.field] = counts.get(gene.field, 0) + 1
            if gene.index is not None and gene.index < len(seq) and seq[gene.index] not in gene.choices:
                raise ConfigError(f"{gene.field}[{gene.index}]", seq[gene.index], gene.choices)
        for fname in ("depths", "kernels", "expands", "widths", "channels"):
            seq = getattr(cfg, fname)
            want = counts.get(fname, 0)
            if want == 0:
                if seq is not None and fname in ("widths", "channels"):
                    raise ConfigError(fname, seq, f"None (space {self.name} does not search {fname})")
                continue
            if len(seq) != want:
                raise ConfigError(f"{fname}", f"{len(seq)} values", f"exactly {want} values for space {self.name}")
        if cfg.policy is not None:
            if len(cfg.policy) != self.num_layer_slots:
                raise ConfigError(
                    "policy", f"{len(cfg.policy)} layer entries", f"exactly {self.num_layer_slots} (one per layer slot)"
                )
            for i, (w, a) in enumerate(cfg.policy.bits):
                if w not in self.bit_choices:
                    raise ConfigError(f"policy[{i}].weight_bits ({self._layer_slots[i]})", w, self.bit_choices)
                if a not in self.bit_choices:
                    raise ConfigError(f"policy[{i}].act_bits ({self._layer_slots[i]})", a, self.bit_choices)
        return cfg

    def _expected_len(self, fname: str) -> int:
        return sum(1 for g in self.genes() if g.field == fname)

    def size(self, bits: Sequence[int] | None = None) -> int:
        """Exact number of distinct subnets (times bit policies of the layers present, with `bits`).

        QFA section 4: a block with k kernels, e expands and L layers of b bit choices for weights and
        activations has k*e*b^(2L) configurations; a stage sums that to the power d over its depths.
        """
        nb = 1 if bits is None else len(self._check_bits("bits", bits))
        total = len(self.resolutions)
        if self.search_widths:
            total *= len(self.stem_widths)
        for si in self.config_stages:
            st = self.stages[si]
            per_block_bits = nb ** (2 * BLOCK_CONVS[st.block])
            stage_total = 0
            for d in st.depths:
                prod = 1
                for b in range(d):
                    n_mid = 1
                    if st.channel_ratio_range is not None:
                        in_max = self._stage_in_max(si) if b == 0 else max(st.widths)
                        n_mid = len(self._fine_channels(si, in_max))
                    prod *= len(st.kernels) * len(st.expands) * n_mid * per_block_bits
                stage_total += prod
            total *= stage_total * (len(st.widths) if self.search_widths else 1)
        return total

    # ------------------------------------------------------------------------------------------
    # encodings and variation (search sees only these)
    # ------------------------------------------------------------------------------------------
    def encode(self, cfg: SubnetConfig, one_hot: bool = True) -> np.ndarray:
        """Fixed-length vector: one-hot per gene (APQ/QFA predictors); skipped blocks are all-zero (APQ 3.2).

        Bits: one-hot over `bit_choices` for weight and activation of every layer slot. With
        `one_hot=False`, the choice indices (for evolution operators).
        """
        self.validate(cfg)
        active = self._active_block_slots(cfg)
        parts: list[np.ndarray] = []
        for gene in self.genes():
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
        policy = cfg.policy or QuantPolicy.uniform(self.num_layer_slots, FLOAT_BITS)
        slot_active = self._active_layer_slots(cfg)
        for i, (w, a) in enumerate(policy.bits):
            for b in (w, a):
                if not one_hot:
                    parts.append(np.array([self.bit_choices.index(b)], dtype=np.float32))
                    continue
                vec = np.zeros(len(self.bit_choices), dtype=np.float32)
                if slot_active[i]:
                    vec[self.bit_choices.index(b)] = 1.0
                parts.append(vec)
        return np.concatenate(parts)

    def encoding_size(self, one_hot: bool = True) -> int:
        if not one_hot:
            return len(self.genes()) + 2 * self.num_layer_slots
        return sum(len(g.choices) for g in self.genes()) + 2 * self.num_layer_slots * len(self.bit_choices)

    def decode(self, indices: Sequence[int]) -> SubnetConfig:
        """Inverse of `encode(cfg, one_hot=False)` on canonical configs; the result is canonical."""
        genes = self.genes()
        if len(indices) != len(genes) + 2 * self.num_layer_slots:
            raise ConfigError("indices", len(indices), f"{len(genes) + 2 * self.num_layer_slots} choice indices")
        it = iter(int(i) for i in indices)
        vals = iter([g.choices[next(it)] for g in genes])
        cfg = self._make(lambda g: next(vals), None, None)
        bits = [self.bit_choices[next(it)] for _ in range(2 * self.num_layer_slots)]
        policy = QuantPolicy(tuple(zip(bits[::2], bits[1::2])))
        return self.canonical(cfg.with_policy(None if policy.is_float else policy))

    def choice_counts(self) -> list[int]:
        """Number of choices per index of `encode(one_hot=False)` (for mutation / crossover / pymoo bounds)."""
        return [len(g.choices) for g in self.genes()] + [len(self.bit_choices)] * (2 * self.num_layer_slots)

    def mutate(self, cfg: SubnetConfig, rate: float = 0.1, seed: int | None = None, bits: Sequence[int] | None = None):
        """Resample each gene with probability `rate` (APQ / OFA evolution); bits only within `bits`."""
        rng = random.Random(seed)
        idx = self.encode(cfg, one_hot=False).astype(int)
        counts = self.choice_counts()
        allowed = None if bits is None else [self.bit_choices.index(b) for b in self._check_bits("bits", bits)]
        ng = len(self.genes())
        for i in range(len(idx)):
            if rng.random() < rate:
                idx[i] = rng.choice(allowed) if (i >= ng and allowed is not None) else rng.randrange(counts[i])
        return self.decode(idx)

    def crossover(self, a: SubnetConfig, b: SubnetConfig, seed: int | None = None) -> SubnetConfig:
        """Uniform crossover: each gene from either parent (APQ)."""
        rng = random.Random(seed)
        ia, ib = self.encode(a, one_hot=False), self.encode(b, one_hot=False)
        return self.decode([x if rng.random() < 0.5 else y for x, y in zip(ia, ib)])

    # ------------------------------------------------------------------------------------------
    # analytic description of a subnet
    # ------------------------------------------------------------------------------------------
    def _active_block_slots(self, cfg: SubnetConfig) -> list[bool]:
        out = []
        for si, b in self._block_slots:
            k = self.config_stages.index(si)
            out.append(b < cfg.depths[k])
        return out

    def _active_layer_slots(self, cfg: SubnetConfig) -> list[bool]:
        active = self._active_block_slots(cfg)
        out = [False] * self.num_layer_slots
        for bs, key in enumerate(self._block_slots):
            for s in self._slot_of[key]:
                out[s] = active[bs]
        return out

    def stage_width(self, cfg: SubnetConfig, si: int) -> int:
        if si in self.config_stages and self.search_widths:
            return cfg.widths[self.config_stages.index(si) + 1]
        return max(self.stages[si].widths)

    def stem_width(self, cfg: SubnetConfig) -> int:
        return cfg.widths[0] if self.search_widths else max(self.stem_widths)

    def stage_depth(self, cfg: SubnetConfig, si: int) -> int:
        if si in self.config_stages:
            return cfg.depths[self.config_stages.index(si)]
        return max(self.stages[si].depths)

    def layers(self, cfg: SubnetConfig) -> list[LayerDesc]:
        """The conv/linear layers of subnet `cfg`, computed from the config alone (not from modules)."""
        self.validate(cfg)
        L: list[LayerDesc] = []
        hw = cfg.resolution
        c = self.stem_width(cfg)
        o = out_size(hw, 3, 2)
        L.append(LayerDesc("stem", "conv", self.in_channels, c, 3, 2, 1, hw, o, False, True, None, "stem"))
        hw = o
        for si, st in enumerate(self.stages):
            width = self.stage_width(cfg, si)
            for b in range(self.stage_depth(cfg, si)):
                stride = st.stride if b == 0 else 1
                bs = self.block_slot(si, b)
                k = cfg.kernels[bs] if bs is not None else st.kernels[0]
                e = cfg.expands[bs] if bs is not None else st.expands[0]
                if bs is not None and cfg.channels is not None and st.channel_ratio_range is not None:
                    mid = cfg.channels[bs]
                else:
                    mid = make_divisible(round(c * e), 8)
                slots = self._slot_of.get((si, b), (None, None, None))
                name = f"stages.{si}.blocks.{b}"
                o = out_size(hw, k, stride)
                se = st.se or st.block.endswith("_se")

                def add(n, cin, cout, kk, s, g, ih, oh, slot, role="block", bias=False, bn=True, name=name):
                    L.append(LayerDesc(f"{name}.{n}", "conv", cin, cout, kk, s, g, ih, oh, bias, bn, slot, role))

                def add_se(ch, at_hw):
                    mid_se = make_divisible(ch // 4, 8)
                    add("se.reduce", ch, mid_se, 1, 1, 1, 1, 1, None, "se", True, False)
                    add("se.expand", mid_se, ch, 1, 1, 1, 1, 1, None, "se", True, False)

                if st.block in ("mbv2", "mbv3"):
                    if max(st.expands) == 1 and min(st.expands) == 1:
                        add("conv0", c, c, k, stride, c, hw, o, slots[0])
                        mid = c
                        proj = slots[1]
                    else:
                        add("conv0", c, mid, 1, 1, 1, hw, hw, slots[0])
                        add("conv1", mid, mid, k, stride, mid, hw, o, slots[1])
                        proj = slots[2]
                    if se:
                        add_se(mid, o)
                    add("project", mid, width, 1, 1, 1, o, o, proj)
                elif st.block == "mbv1":
                    add("conv0", c, c, k, stride, c, hw, o, slots[0])
                    add("conv1", c, width, 1, 1, 1, o, o, slots[1])
                elif st.block.startswith("bottleneck"):
                    add("conv0", c, mid, 1, 1, 1, hw, hw, slots[0])
                    add("conv1", mid, mid, k, stride, 1, hw, o, slots[1])
                    if se:
                        add_se(mid, o)
                    add("project", mid, width, 1, 1, 1, o, o, slots[2])
                else:  # fused
                    add("conv0", c, mid, k, stride, 1, hw, o, slots[0])
                    if se:
                        add_se(mid, o)
                    add("project", mid, width, 1, 1, 1, o, o, slots[1])
                c, hw = width, o
        h = self.head
        if h.expand is not None:
            L.append(LayerDesc("head.expand", "conv", c, h.expand, 1, 1, 1, hw, hw, False, True, None, "head"))
            c = h.expand
        if h.mix is not None:
            L.append(LayerDesc("head.mix", "conv", c, h.mix, 1, 1, 1, 1, 1, False, h.mix_bn, None, "head"))
            c = h.mix
        L.append(LayerDesc("classifier", "linear", c, self.num_classes, 1, 1, 1, 1, 1, True, False, None, "classifier"))
        return L

    def count_params(self, cfg: SubnetConfig) -> int:
        return sum(layer.params for layer in self.layers(cfg))

    def count_macs(self, cfg: SubnetConfig) -> int:
        return sum(layer.macs for layer in self.layers(cfg))

    def to_dict(self) -> dict[str, Any]:
        """Constructor arguments (space name + args) so a checkpoint can rebuild the same space."""
        return {"name": self.name, "args": self.args}

    def to_json(self) -> str:
        """The space as JSON text; `qcompile.spaces.from_json(text)` rebuilds an equal space.

        For SpaceEvo spaces the text also carries the paper's appendix encoding
        ("PerStageBlock-PerStageWidth") when the space is a point of a known hyperspace.
        """
        import json

        doc: dict[str, Any] = {"format": SPACE_JSON_FORMAT, **self.to_dict()}
        extra = JSON_EXTRAS.get(self.name)
        if extra is not None:
            doc.update(extra(self))
        return json.dumps(doc, indent=1, sort_keys=True)

    def spec(self) -> dict[str, Any]:
        """Everything that defines the space after construction (for equality checks across round trips)."""
        return {
            "name": self.name,
            "stem_widths": self.stem_widths,
            "stages": self.stages,
            "head": self.head,
            "num_classes": self.num_classes,
            "resolutions": self.resolutions,
            "in_channels": self.in_channels,
            "bit_choices": self.bit_choices,
            "search_widths": self.search_widths,
            "kernel_transform": self.kernel_transform,
        }

    # ------------------------------------------------------------------------------------------
    # supernet
    # ------------------------------------------------------------------------------------------
    def build_supernet(self) -> Supernet:
        return Supernet(self)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


def _is_fx_tracing() -> bool:
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


class Stage(nn.Module):
    """Blocks of one stage; blocks beyond the minimum depth are behind a `DepthGate`."""

    def __init__(self, blocks: list[ElasticBlock], gates: list[DepthGate | None]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.gates = nn.ModuleList([g if g is not None else nn.Identity() for g in gates])
        self._gated = [g is not None for g in gates]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk, gate, gated in zip(self.blocks, self.gates, self._gated):
            if not gated:
                x = blk(x)
            elif _is_fx_tracing():
                x = gate(x, blk(x))
            elif gate.active:  # eager: skip inactive blocks instead of computing and discarding
                x = blk(x)
        return x


class Supernet(nn.Module):
    """The weight-sharing supernet of a `StagedSpace`. `qcompile.set_active(net, cfg)` selects the subnet."""

    def __init__(self, space: StagedSpace) -> None:
        super().__init__()
        self.space_info = space.to_dict()
        sw = max(space.stem_widths)
        stem_rule = WidthOf(0, sw) if space.search_widths else Const(sw)
        self.stem = ConvUnit(
            ElasticConv2d(space.in_channels, sw, 3, stride=2, out_rule=stem_rule, role="stem"), space.stem_act
        )
        self.stem_out = QuantPoint("block_out")
        stages = []
        c_max, c_rule = sw, stem_rule
        for si, st in enumerate(space.stages):
            wmax = max(st.widths)
            if si in space.config_stages and space.search_widths:
                w_rule = WidthOf(space.config_stages.index(si) + 1, wmax)
            else:
                w_rule = Const(wmax)
            blocks, gates = [], []
            for b in range(st.max_depth):
                bs = space.block_slot(si, b)
                blocks.append(
                    ElasticBlock(
                        st.block,
                        max_in=c_max if b == 0 else wmax,
                        max_out=wmax,
                        in_rule=c_rule if b == 0 else w_rule,
                        out_rule=w_rule,
                        stride=st.stride if b == 0 else 1,
                        kernels=st.kernels,
                        expands=st.expands if st.channel_ratio_range is None else (st.channel_ratio_range[1],),
                        act=st.act,
                        se=st.se,
                        block_slot=bs,
                        policy_slots=space._slot_of.get((si, b)),
                        kernel_transform=space.kernel_transform,
                    )
                )
                k = space.config_stages.index(si) if si in space.config_stages else None
                gates.append(DepthGate(k, b) if k is not None and b >= min(st.depths) else None)
            stages.append(Stage(blocks, gates))
            c_max, c_rule = wmax, w_rule
        self.stages = nn.ModuleList(stages)
        h = space.head
        self.head_expand = None
        if h.expand is not None:
            self.head_expand = ConvUnit(ElasticConv2d(c_max, h.expand, 1, role="head"), h.act)
            c_max = h.expand
        self.pool_in = QuantPoint("pool_in")
        self.head_mix = None
        if h.mix is not None:
            conv = ElasticConv2d(c_max, h.mix, 1, role="head")
            self.head_mix = ConvUnit(conv, h.act)
            if not h.mix_bn:
                self.head_mix.bn = None
            c_max = h.mix
        self.dropout = nn.Dropout(h.dropout)
        self.classifier = ElasticLinear(c_max, space.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_out(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        if self.head_expand is not None:
            x = self.head_expand(x)
        x = self.pool_in(x).mean((2, 3), keepdim=True)
        if self.head_mix is not None:
            x = self.head_mix(x)
        x = torch.flatten(x, 1)
        return self.classifier(self.dropout(x))


__all__ = ["StagedSpace", "StageSpec", "HeadSpec", "LayerDesc", "Gene", "Supernet", "Stage", "field"]


def _is_int(v: object, lo: int) -> bool:
    """An integer (Python or NumPy, not bool) >= lo."""
    import operator

    if isinstance(v, bool):
        return False
    try:
        return operator.index(v) >= lo
    except TypeError:
        return False


def _is_positive_finite(v: object) -> bool:
    if isinstance(v, (bool, str, bytes)):
        return False
    try:
        return 0 < float(v) < float("inf")  # NaN compares false
    except (TypeError, ValueError):
        return False


def resolution_list(resolutions: object) -> list:
    """`resolutions` as a list; ConfigError when it is not a sequence of sizes."""
    if isinstance(resolutions, (str, bytes)) or not hasattr(resolutions, "__iter__"):
        raise ConfigError("resolutions", resolutions, "a non-empty list of integer sizes >= 8")
    return list(resolutions)
