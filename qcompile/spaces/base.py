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
from typing import TYPE_CHECKING, Any

from qcompile.config import QuantPolicy, SubnetConfig
from qcompile.errors import ConfigError
from qcompile.nn.blocks import BLOCK_CONVS, BLOCK_TYPES
from qcompile.nn.elastic import (
    make_divisible,
)

if TYPE_CHECKING:
    from qcompile.spaces.supernet import Supernet

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
        """The weight-sharing supernet of this space (`qcompile.spaces.supernet.Supernet`)."""
        from qcompile.spaces.supernet import Supernet

        return Supernet(self)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


__all__ = ["StagedSpace", "StageSpec", "HeadSpec", "Gene", "field"]


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
