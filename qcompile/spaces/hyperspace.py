"""The SpaceEvo hyperspace and its candidate spaces (SpaceEvo Sec. 3.2, Appendix C.1, Tables 9-12).

A *candidate space* is a value: per searchable stage (Stage1-6) one block type (Table 11 search id)
and one *window* of consecutive channel widths from the stage's range. It is encoded as in the
paper's appendix, "PerStageBlock-PerStageWidth": `151122-023231` means Stage1 MBv2 (id 1), Stage2
FusedMB (5), ...; the width digit is the index of the window's smallest width in the stage's range
(SpaceEvo@VNNI, Table 12, is exactly `151122-023231` of `vnni_hyperspace()`). The residual stem
stage (Table 12's first row) is fixed, as in the paper.

`CandidateSpace.build()` gives an ordinary `StagedSpace` (via `qcompile.spaces.spaceevo`), so
`space.to_json()` / `qcompile.spaces.from_json` save it and `qcompile train --space-json` trains it.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from qcompile.errors import ConfigError
from qcompile.spaces.base import JSON_EXTRAS
from qcompile.spaces.spaceevo import BLOCK_IDS, VNNI_STAGES

_DIGITS = string.digits + string.ascii_lowercase


@dataclass(frozen=True)
class HyperStage:
    """One searchable stage: depth choices, first stride, every width of its range, window length."""

    depths: tuple[int, ...]
    stride: int
    widths: tuple[int, ...]
    window: int

    def __post_init__(self) -> None:
        if not self.widths or list(self.widths) != sorted(set(self.widths)):
            raise ConfigError("HyperStage.widths", self.widths, "a non-empty increasing list of widths")
        if not 1 <= self.window <= len(self.widths):
            raise ConfigError("HyperStage.window", self.window, f"1..{len(self.widths)} (number of widths)")

    @property
    def n_windows(self) -> int:
        return len(self.widths) - self.window + 1

    def window_widths(self, index: int) -> tuple[int, ...]:
        if not 0 <= index < self.n_windows:
            raise ConfigError("window", index, f"0..{self.n_windows - 1}")
        return self.widths[index : index + self.window]


@dataclass(frozen=True)
class Hyperspace:
    """Search spaces pool (SpaceEvo Fig. 1a): 7 block types x width windows for each of Stage1-6.

    The fixed parts (stem, residual-stem stage, head, kernels, resolutions) follow Table 12.
    """

    name: str
    stages: tuple[HyperStage, ...]
    first_widths: tuple[int, ...] = (16, 32)
    first_depths: tuple[int, ...] = (1, 2)
    stem_widths: tuple[int, ...] = (16, 32)
    kernels: tuple[int, ...] = (3, 5, 7)
    resolutions: tuple[int, ...] = (160, 176, 192, 208, 224)
    num_classes: int = 1000
    in_channels: int = 3
    head_mix: int = 1280
    bit_choices: tuple[int, ...] = (2, 3, 4, 8, 32)
    dropout: float = 0.1
    blocks: tuple[str, ...] = field(default_factory=lambda: tuple(BLOCK_IDS[i] for i in range(7)))

    def __post_init__(self) -> None:
        if len(self.stages) != len(VNNI_STAGES) - 1:
            raise ConfigError("Hyperspace.stages", len(self.stages), f"{len(VNNI_STAGES) - 1} stages (Stage1-6)")
        if any(st.n_windows > len(_DIGITS) for st in self.stages):
            raise ConfigError("Hyperspace.stages", "too many windows", f"at most {len(_DIGITS)} per stage")

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def size(self) -> int:
        """Number of candidate spaces: prod over stages of (block types x windows) (Sec. 3.2: ~1e9 on VNNI)."""
        n = 1
        for st in self.stages:
            n *= len(self.blocks) * st.n_windows
        return n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hyperspace:
        try:
            d = dict(d)
            d["stages"] = tuple(
                HyperStage(tuple(s["depths"]), int(s["stride"]), tuple(s["widths"]), int(s["window"]))
                for s in d["stages"]
            )
            for k in ("first_widths", "first_depths", "stem_widths", "kernels", "resolutions", "bit_choices", "blocks"):
                if k in d:
                    d[k] = tuple(d[k])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ConfigError("hyperspace", sorted(d), f"a dict written by Hyperspace.to_dict() ({e})") from e

    def candidate(self, blocks: Sequence[int | str], windows: Sequence[int]) -> CandidateSpace:
        ids = tuple(self.blocks.index(b) if isinstance(b, str) and b in self.blocks else b for b in blocks)
        return CandidateSpace(self, tuple(int(i) for i in ids), tuple(int(w) for w in windows))

    def from_encoding(self, text: str) -> CandidateSpace:
        """Parse "PerStageBlock-PerStageWidth" (e.g. `151122-023231`)."""
        blk, sep, win = str(text).strip().partition("-")
        n = self.n_stages
        if not sep or len(blk) != n or len(win) != n or not blk.isdigit():
            raise ConfigError("encoding", text, f"{n} block ids, '-', {n} window indices (e.g. {'1' * n}-{'0' * n})")
        try:
            windows = [_DIGITS.index(c) for c in win.lower()]
        except ValueError as e:
            raise ConfigError("encoding", text, "window indices 0-9, a-z") from e
        return self.candidate([int(c) for c in blk], windows)

    def probe_space(self, block: str, resolutions: Sequence[int] | None = None):
        """The elastic space with `block` in every Stage1-6 over each stage's *whole* width range (SpaceEvo
        Sec. 3.3: one elastic stage per (stage, block type) covers every window of the hyperspace), 8-bit or
        float layers, no dropout. Block-wise distillation trains its stages; Q-T latency is priced on it."""
        from qcompile.spaces.spaceevo import spaceevo

        if block not in self.blocks:
            raise ConfigError("block", block, self.blocks)
        return spaceevo(
            num_classes=self.num_classes,
            resolutions=tuple(resolutions) if resolutions is not None else self.resolutions,
            in_channels=self.in_channels,
            blocks=["bottleneck", *[block] * self.n_stages],
            widths=[self.first_widths, *[st.widths for st in self.stages]],
            stem_widths=self.stem_widths,
            kernels=self.kernels,
            bit_choices=(8, 32),
            dropout=0.0,
            head_mix=self.head_mix,
            depths=[self.first_depths, *[st.depths for st in self.stages]],
            width_ranges=[(min(self.first_widths), max(self.first_widths)),
                          *[(st.widths[0], st.widths[-1]) for st in self.stages]],
        )

    def random(self, rng: random.Random) -> CandidateSpace:
        """A uniformly random candidate (Algorithm 1 line 1: random initial population)."""
        return CandidateSpace(
            self,
            tuple(rng.randrange(len(self.blocks)) for _ in self.stages),
            tuple(rng.randrange(st.n_windows) for st in self.stages),
        )


@dataclass(frozen=True)
class CandidateSpace:
    """One point of a `Hyperspace`: block id and width-window index per Stage1-6."""

    hyper: Hyperspace = field(repr=False, compare=True)
    block_ids: tuple[int, ...]
    windows: tuple[int, ...]

    def __post_init__(self) -> None:
        n = self.hyper.n_stages
        if len(self.block_ids) != n:
            raise ConfigError("blocks", self.block_ids, f"{n} block ids (Stage1-6)")
        if len(self.windows) != n:
            raise ConfigError("windows", self.windows, f"{n} window indices (Stage1-6)")
        for i, b in enumerate(self.block_ids):
            if not 0 <= b < len(self.hyper.blocks):
                raise ConfigError(f"blocks[{i}]", b, dict(enumerate(self.hyper.blocks)))
        for i, (w, st) in enumerate(zip(self.windows, self.hyper.stages)):
            if not 0 <= w < st.n_windows:
                raise ConfigError(f"windows[{i}]", w, f"0..{st.n_windows - 1} (Stage{i + 1})")

    @property
    def encoding(self) -> str:
        """SpaceEvo Appendix C.1 "PerStageBlock-PerStageWidth"."""
        return "".join(str(b) for b in self.block_ids) + "-" + "".join(_DIGITS[w] for w in self.windows)

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(self.hyper.blocks[b] for b in self.block_ids)

    def stage_widths(self, i: int) -> tuple[int, ...]:
        """Width choices of Stage(i+1)."""
        return self.hyper.stages[i].window_widths(self.windows[i])

    def build(self, **overrides: Any):
        """The candidate as a `StagedSpace` (a `qcompile.spaces.spaceevo` space)."""
        from qcompile.spaces.spaceevo import spaceevo

        h = self.hyper
        kw: dict[str, Any] = dict(
            num_classes=h.num_classes,
            resolutions=h.resolutions,
            in_channels=h.in_channels,
            blocks=["bottleneck", *self.block_names],
            widths=[h.first_widths, *[self.stage_widths(i) for i in range(h.n_stages)]],
            stem_widths=h.stem_widths,
            kernels=h.kernels,
            bit_choices=h.bit_choices,
            dropout=h.dropout,
            head_mix=h.head_mix,
        )
        if h.name != "vnni":
            kw["depths"] = [h.first_depths, *[st.depths for st in h.stages]]
            kw["width_ranges"] = [
                (min(h.first_widths), max(h.first_widths)),
                *[(st.widths[0], st.widths[-1]) for st in h.stages],
            ]
        kw.update(overrides)
        return spaceevo(**kw)

    def to_json(self) -> str:
        return self.build().to_json()

    def mutate_block(self, rng: random.Random, stage: int) -> CandidateSpace:
        """Algorithm 1 line 4: a different block type at `stage`."""
        b = self.block_ids[stage]
        nb = rng.choice([x for x in range(len(self.hyper.blocks)) if x != b])
        ids = list(self.block_ids)
        ids[stage] = nb
        return CandidateSpace(self.hyper, tuple(ids), self.windows)

    def mutate_width(self, rng: random.Random, stage: int) -> CandidateSpace | None:
        """Algorithm 1 line 6: a different width window at `stage` (None if the stage has one window)."""
        w = self.windows[stage]
        others = [x for x in range(self.hyper.stages[stage].n_windows) if x != w]
        if not others:
            return None
        ws = list(self.windows)
        ws[stage] = rng.choice(others)
        return CandidateSpace(self.hyper, self.block_ids, tuple(ws))


def vnni_hyperspace(num_classes: int = 1000) -> Hyperspace:
    """SpaceEvo Table 9 (Intel VNNI): 16-divisible widths; windows of 2, 2, 3, 3, 5, 7 widths (Table 12)."""
    windows = (2, 2, 3, 3, 5, 7)
    stages = tuple(
        HyperStage(tuple(d), s, tuple(range(lo, hi + 1, 16)), w)
        for (d, s, (lo, hi)), w in zip(VNNI_STAGES[1:], windows)
    )
    return Hyperspace("vnni", stages, num_classes=num_classes)


def digits_hyperspace(num_classes: int = 10, resolution: int = 16) -> Hyperspace:
    """Table 9 at half width (8-divisible), depths 1-2, one resolution (16: digits are 8x8): minutes on 2 cores.

    Each stage keeps the number of widths and the window length of Table 9 / Table 12, so the
    hyperspace has the same shape (7^6 x 2 x 4^5 ~ 2.4e8 candidate spaces).
    """
    ranges = ((16, 32), (16, 48), (32, 72), (56, 96), (96, 152), (152, 224))
    windows = (2, 2, 3, 3, 5, 7)
    depths = ((1, 2),) * 5 + ((1,),)
    strides = tuple(s for _, s, _ in VNNI_STAGES[1:])
    stages = tuple(
        HyperStage(d, s, tuple(range(lo, hi + 1, 8)), w) for d, s, (lo, hi), w in zip(depths, strides, ranges, windows)
    )
    return Hyperspace(
        "digits",
        stages,
        first_widths=(8, 16),
        first_depths=(1,),
        stem_widths=(8, 16),
        kernels=(3, 5),
        resolutions=(resolution,),
        num_classes=num_classes,
        head_mix=256,
        dropout=0.0,
    )


HYPERSPACES = {"vnni": vnni_hyperspace, "digits": digits_hyperspace}


def candidate_of(space, hyper: Hyperspace | None = None) -> CandidateSpace | None:
    """The candidate of `hyper` (default: any known hyperspace) that builds `space`, or None."""
    if getattr(space, "name", None) != "spaceevo":
        return None
    args = space.args
    hypers = [hyper] if hyper is not None else []
    if hyper is None:
        for make in HYPERSPACES.values():
            try:
                hypers.append(make(num_classes=args.get("num_classes", 1000)))
            except ConfigError:  # pragma: no cover - presets are valid
                continue
    blocks, widths = args.get("blocks"), args.get("widths")
    if not blocks or not widths or len(blocks) != 7:
        return None
    for h in hypers:
        try:
            ids = [h.blocks.index(b) for b in blocks[1:]]
            wins = [h.stages[i].widths.index(widths[i + 1][0]) for i in range(h.n_stages)]
            cand = CandidateSpace(h, tuple(ids), tuple(wins))
        except (ValueError, ConfigError):
            continue
        if cand.build().spec() == space.spec():
            return cand
    return None


def encoding_of(space) -> str | None:
    """"PerStageBlock-PerStageWidth" of a SpaceEvo space built from a known hyperspace, else None."""
    cand = candidate_of(space)
    return None if cand is None else cand.encoding


def _json_extra(space) -> dict[str, str]:
    enc = encoding_of(space)
    return {} if enc is None else {"encoding": enc}


JSON_EXTRAS["spaceevo"] = _json_extra

__all__ = [
    "HyperStage",
    "Hyperspace",
    "CandidateSpace",
    "vnni_hyperspace",
    "digits_hyperspace",
    "HYPERSPACES",
    "candidate_of",
    "encoding_of",
]
