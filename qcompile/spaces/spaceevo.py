"""The SpaceEvo hyperspace (SpaceEvo Appendix C.1, Tables 9-12): per-stage block type and width list.

A concrete search space is a point of the hyperspace: one block type (Table 11) and one list of
channel widths per elastic stage. `spaceevo()` with no block arguments is SpaceEvo@VNNI (Table 12).
"""

from __future__ import annotations

from collections.abc import Sequence

from qcompile.errors import ConfigError
from qcompile.nn.blocks import BLOCK_TYPES
from qcompile.spaces.base import HeadSpec, StagedSpace, StageSpec

#: Table 11 search ids -> block type
BLOCK_IDS = {0: "mbv1", 1: "mbv2", 2: "mbv3", 3: "bottleneck", 4: "bottleneck_se", 5: "fused", 6: "fused_se"}
#: Table 11 (Intel VNNI column): expand ratios and activation per block type
VNNI_BLOCKS = {
    "mbv1": ((1,), "relu"),
    "mbv2": ((4, 6, 8), "relu6"),
    "mbv3": ((4, 6, 8), "hswish"),
    "bottleneck": ((0.5, 1.0, 1.5), "relu"),
    "bottleneck_se": ((0.5, 1.0, 1.5), "relu"),
    "fused": ((1, 2, 3, 4), "swish"),
    "fused_se": ((1, 2, 3, 4), "swish"),
}
#: Table 9: per elastic stage (the residual stem + Stage1-6): depths, stride, width range (16-divisible)
VNNI_STAGES = (
    ((1, 2), 1, (16, 32)),
    ((2, 3, 4), 2, (32, 64)),
    ((2, 3, 4), 2, (32, 96)),
    ((2, 3, 4, 5, 6), 2, (64, 144)),
    ((2, 3, 4, 5, 6), 1, (112, 192)),
    ((2, 3, 4, 5, 6), 2, (192, 304)),
    ((1, 2), 1, (304, 448)),
)
#: Table 12 (SpaceEvo@VNNI): block types and width lists of the searched space
VNNI_SEARCHED_BLOCKS = ("bottleneck", "mbv2", "fused", "mbv2", "mbv2", "mbv3", "mbv3")
VNNI_SEARCHED_WIDTHS = (
    (16, 32),
    (32, 48),
    (64, 80),
    (112, 128, 144),
    (144, 160, 176),
    (240, 256, 272, 288, 304),
    (320, 336, 352, 368, 384, 400, 416),
)


def spaceevo(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    resolutions: Sequence[int] = (160, 176, 192, 208, 224),
    in_channels: int = 3,
    *,
    blocks: Sequence[str | int] | None = None,
    widths: Sequence[Sequence[int]] | None = None,
    stem_widths: Sequence[int] = (16, 32),
    kernels: Sequence[int] = (3, 5, 7),
    bit_choices: Sequence[int] = (2, 3, 4, 8, 32),
    dropout: float = 0.1,
    depths: Sequence[Sequence[int]] | None = None,
    width_ranges: Sequence[Sequence[int]] | None = None,
    head_mix: int = 1280,
) -> StagedSpace:
    """A search space of the SpaceEvo hyperspace; defaults give SpaceEvo@VNNI (Table 12).

    `blocks`: 7 block types (names or Table 11 ids) for the residual stem and Stage1-6.
    `widths`: 7 width lists (each within the stage's Table 9 range). The residual stem stage uses
    kernel 3 and expand 0.5 as in Table 12; other stages kernel {3,5,7} and Table 11's expand ratios.
    `depths` and `width_ranges` (7 entries each) replace Table 9's depth choices and width ranges
    (a scaled hyperspace, e.g. `qcompile.spaces.hyperspace.digits_hyperspace`); `head_mix` is the
    width of the 1x1 feature mix after the pool.
    """
    stage_table = list(VNNI_STAGES)
    if depths is not None:
        if len(depths) != len(VNNI_STAGES) or any(not d or min(int(x) for x in d) < 1 for d in depths):
            raise ConfigError("depths", depths, f"{len(VNNI_STAGES)} non-empty lists of depths >= 1")
        stage_table = [(tuple(int(x) for x in d), st, rg) for d, (_, st, rg) in zip(depths, stage_table)]
    if width_ranges is not None:
        if len(width_ranges) != len(VNNI_STAGES) or any(len(r) != 2 or r[0] > r[1] for r in width_ranges):
            raise ConfigError("width_ranges", width_ranges, f"{len(VNNI_STAGES)} (low, high) pairs with low <= high")
        stage_table = [(d, st, (int(r[0]), int(r[1]))) for r, (d, st, _) in zip(width_ranges, stage_table)]
    if head_mix < 1:
        raise ConfigError("head_mix", head_mix, "an integer >= 1")
    blk = list(VNNI_SEARCHED_BLOCKS if blocks is None else blocks)
    wid = [tuple(w) for w in (VNNI_SEARCHED_WIDTHS if widths is None else widths)]
    if len(blk) != len(VNNI_STAGES):
        raise ConfigError("blocks", blk, f"{len(VNNI_STAGES)} block types (residual stem + Stage1-6)")
    if len(wid) != len(VNNI_STAGES):
        raise ConfigError("widths", wid, f"{len(VNNI_STAGES)} width lists")
    names = []
    for i, b in enumerate(blk):
        name = BLOCK_IDS.get(b) if isinstance(b, int) else b
        if name not in BLOCK_TYPES:
            raise ConfigError(f"blocks[{i}]", b, sorted(BLOCK_TYPES) + sorted(BLOCK_IDS))
        names.append(name)
    stages = []
    for i, (name, ws, (stage_depths, stride, (lo, hi))) in enumerate(zip(names, wid, stage_table)):
        if not ws or any(w < lo or w > hi for w in ws):
            raise ConfigError(f"widths[{i}]", ws, f"widths within [{lo}, {hi}] (SpaceEvo Table 9 or width_ranges)")
        exp, act = VNNI_BLOCKS[name]
        if i == 0:
            stages.append(
                StageSpec(name, ws, stage_depths, stride, (3,), (0.5,) if name.startswith("bottleneck") else (1,), act)
            )
        else:
            stages.append(StageSpec(name, ws, stage_depths, stride, tuple(kernels), exp, act))
    args = dict(
        num_classes=num_classes,
        width_mult=width_mult,
        resolutions=list(resolutions),
        in_channels=in_channels,
        blocks=names,
        widths=[list(w) for w in wid],
        stem_widths=list(stem_widths),
        kernels=list(kernels),
        bit_choices=list(bit_choices),
        dropout=dropout,
    )
    if depths is not None:
        args["depths"] = [list(d) for d, _, _ in stage_table]
    if width_ranges is not None:
        args["width_ranges"] = [list(r) for _, _, r in stage_table]
    if head_mix != 1280:
        args["head_mix"] = head_mix
    return StagedSpace(
        "spaceevo",
        stem_widths=tuple(stem_widths),
        stem_act="hswish",
        stages=stages,
        head=HeadSpec(expand=None, mix=head_mix, act="hswish", mix_bn=True, dropout=dropout),
        num_classes=num_classes,
        width_mult=width_mult,
        resolutions=resolutions,
        in_channels=in_channels,
        search_widths=True,
        bit_choices=tuple(bit_choices),
        args=args,
    )
