"""The standard MobileNetV2 for the peer harness: the network ARCHITECTURE.md's peer figures were
measured on, so `python -m qcompile.bench` can reproduce them (subnets of a space are benchmarked by
`qcompile bench <subnet>`, `qcompile.cli.bench_run`).

`MobileNetV2` is the float network of Sandler et al. 2018 (Table 2: inverted residual blocks
t, c, n, s), width multiplier and depth scalable so tests can use a tiny one.
`synthetic_integer_graph` writes an IntegerGraph with the same layer shapes (conv2d + requantize
with ReLU6 clamps, residual `add`, `mean`, `linear`, `dequantize_acc`) and random 8-bit weights,
calibrated with the reference ops so codes spread over their range: it times our ONNX export on
the exact MobileNetV2 workload; it is not a trained network.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qcompile.ops import IntegerGraph, IntegerGraphBuilder
from qcompile.ops import reference as R
from qcompile.quant.fixed_point import quantize_multipliers

#: (expansion t, channels c, repeats n, stride s), MobileNetV2 Table 2
MBV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _div8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> project 1x1 (linear bottleneck), residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """Float MobileNetV2; `width` scales channels, `depth` caps the repeats per stage (tiny test nets)."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, depth: int | None = None):
        super().__init__()
        cin = _div8(32 * width)
        last = _div8(1280 * max(1.0, width))
        feats: list[nn.Module] = [_conv_bn(3, cin, 3, 2)]
        self.blocks: list[tuple[int, int, int, int]] = []
        for t, c, n, s in MBV2_SETTINGS:
            cout = _div8(c * width)
            for i in range(n if depth is None else min(n, depth)):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                self.blocks.append((cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(_conv_bn(cin, last, 1, 1))
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        self.stem_channels, self.last_channels = _div8(32 * width), last
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2(num_classes: int = 1000, width: float = 1.0, depth: int | None = None, seed: int = 0) -> MobileNetV2:
    """A MobileNetV2 in eval mode with seeded random weights (latency only)."""
    torch.manual_seed(seed)
    return MobileNetV2(num_classes, width, depth).eval()


class _Writer:
    """Writes the integer program and evaluates it on a calibration input at the same time."""

    def __init__(self, x: torch.Tensor, seed: int):
        self.b = IntegerGraphBuilder()
        self.gen = torch.Generator().manual_seed(seed)
        inv_scale, offset = 32.0, 128.5
        self.node = self.b.call(R.quantize, self.b.input("x"), inv_scale, offset, 255)
        self.val = R.quantize(x, inv_scale, offset, 255)
        self.zp = 128

    def conv(self, cout: int, k: int, stride: int, groups: int, relu6: bool) -> None:
        cin = self.val.shape[1]
        w = torch.randint(-127, 128, (cout, cin // groups, k, k), generator=self.gen).to(torch.int8)
        kw = dict(stride=stride, padding=k // 2, dilation=1, groups=groups, pad_value=self.zp)
        acc = R.conv2d(self.val, w, torch.zeros(cout, dtype=torch.int32), **kw).to(torch.float64)
        flat = acc.transpose(0, 1).reshape(cout, -1)
        lo_q, hi_q = flat.amin(1), flat.amax(1)
        # output codes: zero point 20 for ReLU6 outputs (lo = 20: the ReLU), 128 for linear bottlenecks
        zp_out, lo = (20, 20) if relu6 else (128, 0)
        m = (255 - lo) / torch.clamp(hi_q - lo_q, min=1.0) * (0.8 if relu6 else 1.6)
        mult, shift = (torch.tensor(v, dtype=torch.int32) for v in quantize_multipliers(m.numpy(), "conv"))
        center = torch.zeros_like(m) if relu6 else (lo_q + hi_q) / 2  # ReLU6: acc 0 -> the zero point
        bias = torch.round(zp_out / m - center).to(torch.int32)
        node = self.b.call(R.conv2d, self.node, self.b.const(w), self.b.const(bias), **kw)
        self.node = self.b.call(R.requantize, node, self.b.const(mult), self.b.const(shift), lo=lo, hi=255)
        self.val = R.requantize(R.conv2d(self.val, w, bias, **kw), mult, shift, lo=lo, hi=255)
        self.zp = zp_out

    def add(self, other_node, other_val) -> None:
        # (a + b) / 2: both inputs and the output have zero point 128
        s = 31
        kw = dict(multiplier_a=1 << 30, multiplier_b=1 << 30, offset=1 << (s - 1), shift=s, lo=0, hi=255)
        self.node = self.b.call(R.add, self.node, other_node, **kw)
        self.val = R.add(self.val, other_val, **kw)


def synthetic_integer_graph(model: MobileNetV2, resolution: int = 224, seed: int = 0) -> IntegerGraph:
    """An IntegerGraph with `model`'s layer shapes and random calibrated 8-bit weights (see module doc)."""
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    w = _Writer(x, seed)
    w.conv(model.stem_channels, 3, 2, 1, True)
    for cin, cout, stride, t in model.blocks:
        skip_node, skip_val = w.node, w.val
        hidden = cin * t
        if t != 1:
            w.conv(hidden, 1, 1, 1, True)
        w.conv(hidden, 3, stride, hidden, True)
        w.conv(cout, 1, 1, 1, False)
        if stride == 1 and cin == cout:
            w.add(skip_node, skip_val)
    w.conv(model.last_channels, 1, 1, 1, True)
    hw = w.val.shape[2] * w.val.shape[3]
    s = 30 + int(math.log2(hw))
    mkw = dict(multiplier=round(2**s / hw), offset=1 << (s - 1), shift=s, lo=0, hi=255)
    node = w.b.call(R.mean, w.node, **mkw)
    node = w.b.call(R.flatten, node)
    ncls = model.classifier.out_features
    fc = torch.randint(-127, 128, (ncls, model.last_channels), generator=w.gen).to(torch.int8)
    node = w.b.call(R.linear, node, w.b.const(fc), w.b.const(torch.zeros(ncls, dtype=torch.int32)))
    node = w.b.call(R.dequantize_acc, node, w.b.const(torch.full((ncls,), 1e-4, dtype=torch.float64)))
    return w.b.build(node, meta={"input_shape": [1, 3, resolution, resolution], "synthetic": True,
                                 "model": "mobilenet_v2-shaped"})


#: the subnets `python -m qcompile.bench --model` names besides the standard MobileNetV2: (space, num_classes,
#: width multiplier, resolution, calibration batch size). "mobilenet_v3-largest": `space.largest()` of the QFA/OQA
#: MobileNetV3 space (OQA Table 8: kernel 7, expand 6, depth 4 in every stage) at width 1.0, 224 px, ImageNet's
#: 1000 classes; "demo": the same architecture at the size `make demo` deploys (`qcompile.cli.demo.DemoSettings`:
#: width 0.35, 32 px, the 10 digits classes).
SPACE_MODELS: dict[str, tuple[str, int, float, int, int]] = {
    "mobilenet_v3-largest": ("mobilenet_v3", 1000, 1.0, 224, 2),
    "demo": ("mobilenet_v3", 10, 0.35, 32, 8),
}


def largest_subnet(space_name: str = "mobilenet_v3", *, num_classes: int = 1000, width: float = 1.0,
                   resolution: int = 224, bits: int = 8, seed: int = 0, calib_batch: int = 2):
    """The calibrated fake-quant `space.largest(bits=bits)` subnet (every layer, the first too, at `bits`) of
    `space_name` at `width` and `resolution`, random weights (seeded), calibrated on two batches of
    `calib_batch` random images: the workload for latency, not for accuracy."""
    from qcompile import api as qc
    from qcompile import spaces

    torch.manual_seed(seed)
    space = spaces.get_space(space_name, num_classes=num_classes, width_mult=width, resolutions=(resolution,))
    cfg = space.largest(bits=bits)
    qnet = qc.quantize(qc.trace(space.build_supernet()), weight_bits=(bits,), act_bits=(bits,), first_layer=bits)
    sub = qc.extract(qnet, cfg)
    gen = torch.Generator().manual_seed(seed)
    qc.calibrate(sub, [torch.randn(calib_batch, space.in_channels, resolution, resolution, generator=gen)
                       for _ in range(2)])
    return sub


def space_model(model: str, *, num_classes: int | None = None, width: float | None = None,
                resolution: int | None = None, seed: int = 0):
    """`largest_subnet` of one of `SPACE_MODELS` (`"demo"`, `"mobilenet_v3-largest"`), every field that is not
    None overriding the model's: the one builder of `python -m qcompile.bench --model` and of the benchmarks that
    time the demo-sized subnet (`benchmarks.overhead`, `batch`, `parallel_regions`)."""
    if model not in SPACE_MODELS:
        from qcompile.errors import ConfigError

        raise ConfigError(f"model {model!r}: not a space model; allowed: {', '.join(SPACE_MODELS)}")
    space_name, classes, w, res, calib_batch = SPACE_MODELS[model]
    return largest_subnet(space_name, num_classes=classes if num_classes is None else num_classes,
                          width=w if width is None else width, resolution=res if resolution is None else resolution,
                          seed=seed, calib_batch=calib_batch)


def harness_program(model: str = "mobilenet_v2", *, classes: int | None = None, width: float | None = None,
                    resolution: int | None = None) -> tuple[nn.Module, IntegerGraph, str]:
    """(float network the peers run, IntegerGraph the qcompile rows lower, title) of `python -m qcompile.bench
    --model model`: MobileNetV2 and its same-shaped `synthetic_integer_graph`, or the `space_model` of one of
    `SPACE_MODELS` (its `float_copy` for the peers). Fields left None take the model's own. The one builder of the
    harness and of `benchmarks.tune_peers`, whose exported lowerings the harness reuses only if the program is
    identical (`peers.lowering_key`)."""
    space_name, c, w, r, _ = SPACE_MODELS.get(model, ("", 1000, 1.0, 224, 0))
    classes, width, resolution = (c if classes is None else classes, w if width is None else width,
                                  r if resolution is None else resolution)
    if model == "mobilenet_v2":
        net = mobilenet_v2(num_classes=classes, width=width)
        return net, synthetic_integer_graph(net, resolution), f"MobileNetV2 (width {width}) {resolution}x{resolution}"
    from qcompile import api as qc
    from qcompile.passes.float_copy import float_copy

    sub = space_model(model, num_classes=classes, width=width, resolution=resolution)
    title = f"largest 8-bit {space_name} subnet (width {width}, {classes} classes) {resolution}x{resolution}"
    return float_copy(sub).eval(), qc.to_integer(sub), title
