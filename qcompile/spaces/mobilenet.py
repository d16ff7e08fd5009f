"""MobileNetV3 (QFA / OQA Table 8, OFA) and MobileNetV2 (OQA Table 7, APQ fine-grained channels) spaces."""

from __future__ import annotations

from collections.abc import Sequence

from qcompile.spaces.base import HeadSpec, StagedSpace, StageSpec, resolution_list

KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)


def mobilenet_v3(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    resolutions: Sequence[int] = (128, 160, 192, 224),
    in_channels: int = 3,
    *,
    kernels: Sequence[int] = KERNELS,
    expands: Sequence[float] = EXPANDS,
    depths: Sequence[int] = DEPTHS,
    bit_choices: Sequence[int] = (2, 3, 4, 8, 32),
    kernel_transform: bool = False,
    dropout: float = 0.1,
) -> StagedSpace:
    """The QFA / OQA MobileNetV3 space (OQA Table 8; layer details of OFA's OFAMobileNetV3).

    Stem 3x3/2 (16, h-swish); a fixed first block (depthwise 3x3 + 1x1, ReLU, residual); five elastic
    stages of up to 4 MBConv blocks (24 ReLU, 40 ReLU+SE, 80 h-swish, 112 h-swish+SE, 160 h-swish+SE)
    with kernel {3,5,7}, expand {3,4,6}, depth {2,3,4}; head 1x1 960 (BN, h-swish), pool, 1x1 1280
    (no BN, h-swish), classifier.
    """
    k, e, d = tuple(kernels), tuple(expands), tuple(depths)
    stages = [
        StageSpec("mbv2", (16,), (1,), 1, (3,), (1,), "relu"),
        StageSpec("mbv3", (24,), d, 2, k, e, "relu"),
        StageSpec("mbv3", (40,), d, 2, k, e, "relu", se=True),
        StageSpec("mbv3", (80,), d, 2, k, e, "hswish"),
        StageSpec("mbv3", (112,), d, 1, k, e, "hswish", se=True),
        StageSpec("mbv3", (160,), d, 2, k, e, "hswish", se=True),
    ]
    args = dict(
        num_classes=num_classes,
        width_mult=width_mult,
        resolutions=resolution_list(resolutions),
        in_channels=in_channels,
        kernels=list(k),
        expands=list(e),
        depths=list(d),
        bit_choices=list(bit_choices),
        kernel_transform=kernel_transform,
        dropout=dropout,
    )
    return StagedSpace(
        "mobilenet_v3",
        stem_widths=(16,),
        stem_act="hswish",
        stages=stages,
        head=HeadSpec(expand=960, mix=1280, act="hswish", mix_bn=False, dropout=dropout),
        num_classes=num_classes,
        width_mult=width_mult,
        resolutions=resolutions,
        in_channels=in_channels,
        bit_choices=tuple(bit_choices),
        kernel_transform=kernel_transform,
        args=args,
    )


def mobilenet_v2(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    resolutions: Sequence[int] = (128, 160, 192, 224),
    in_channels: int = 3,
    *,
    fine_grained: bool = False,
    kernels: Sequence[int] = KERNELS,
    expands: Sequence[float] = EXPANDS,
    depths: Sequence[int] = DEPTHS,
    bit_choices: Sequence[int] = (2, 3, 4, 8, 32),
    dropout: float = 0.1,
) -> StagedSpace:
    """The OQA MobileNetV2 space (OQA Table 7), with APQ's fine-grained channels as an option.

    Stem 3x3/2 (32, ReLU6); a fixed first block (expand 1, 16); stages 24/40/80/96/192 of depth {2,3,4}
    and a 320 stage of depth 1, all MBConv with kernel {3,5,7}, expand {3,4,6}, ReLU6; head 1x1 1280
    (BN, ReLU6), pool, classifier. With `fine_grained=True` (APQ 3.1) each block's middle channels are
    searched in steps of 8 from 4x to 6x its input instead of the expand ratio.
    """
    k, e, d = tuple(kernels), tuple(expands), tuple(depths)
    rr = (4.0, 6.0) if fine_grained else None
    ee = (6,) if fine_grained else e

    def st(w, dd, s):
        return StageSpec("mbv2", (w,), dd, s, k, ee, "relu6", channel_ratio_range=rr)

    stages = [
        StageSpec("mbv2", (16,), (1,), 1, (3,), (1,), "relu6"),
        st(24, d, 2),
        st(40, d, 2),
        st(80, d, 2),
        st(96, d, 1),
        st(192, d, 2),
        st(320, (1,), 1),
    ]
    args = dict(
        num_classes=num_classes,
        width_mult=width_mult,
        resolutions=resolution_list(resolutions),
        in_channels=in_channels,
        fine_grained=fine_grained,
        kernels=list(k),
        expands=list(e),
        depths=list(d),
        bit_choices=list(bit_choices),
        dropout=dropout,
    )
    return StagedSpace(
        "mobilenet_v2",
        stem_widths=(32,),
        stem_act="relu6",
        stages=stages,
        head=HeadSpec(expand=1280, mix=None, act="relu6", dropout=dropout),
        num_classes=num_classes,
        width_mult=width_mult,
        resolutions=resolutions,
        in_channels=in_channels,
        bit_choices=tuple(bit_choices),
        args=args,
    )
