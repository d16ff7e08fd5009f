"""MobileNetV2-shaped workloads built three ways on the same layer shapes, for side-by-side timing.

- qcompile/TVM: the integer program (conv2d+requantize, residual add, mean, linear) emitted through the
  registered x86 strategies, i.e. exactly the kernels `qc.lower` uses, with random codes and fixed-point
  parameters (speed does not depend on values);
- onnxruntime INT8: the float twin exported to ONNX and quantized QDQ (u8 activations, s8 per-channel
  weights), run by MLAS;
- torch.ao INT8: the float twin through FX graph-mode post-training quantization (x86 / fbgemm).

The network is MobileNetV2 1.0 (Sandler et al. 2018, Table 2: expand 6, 3x3 depthwise, widths
32-16-24-32-64-96-160-320-1280).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qcompile.bench.models import MBV2_SETTINGS

log = logging.getLogger(__name__)

# (expand t, out channels c, repeats n, first stride s): MobileNetV2 Table 2, shared with the peer harness
MBV2_BLOCKS = MBV2_SETTINGS


@dataclass(frozen=True)
class ConvLayer:
    """One conv of the network (batch 1, NCHW)."""

    c: int
    h: int
    o: int
    k: int
    stride: int
    groups: int

    @property
    def ho(self) -> int:
        return (self.h + 2 * (self.k // 2) - self.k) // self.stride + 1

    @property
    def macs(self) -> int:
        return self.o * (self.c // self.groups) * self.k * self.k * self.ho * self.ho

    @property
    def kind(self) -> str:
        if self.groups > 1:
            return "depthwise"
        return "pointwise" if self.k == 1 else "full"


def mbv2_layers(resolution: int = 224) -> list[tuple[str, ConvLayer, bool, bool]]:
    """The conv layers in order as `(name, layer, residual_after, starts_block)`."""
    out = []
    h = resolution
    first = ConvLayer(3, h, 32, 3, 2, 1)
    out.append(("stem", first, False, False))
    h, c = first.ho, 32
    for bi, (t, co, n, s) in enumerate(MBV2_BLOCKS):
        for r in range(n):
            stride = s if r == 0 else 1
            mid = c * t
            if t != 1:
                out.append((f"b{bi}.{r}.expand", ConvLayer(c, h, mid, 1, 1, 1), False, True))
            dw = ConvLayer(mid, h, mid, 3, stride, mid)
            out.append((f"b{bi}.{r}.dw", dw, False, t == 1))
            h = dw.ho
            out.append((f"b{bi}.{r}.project", ConvLayer(mid, h, co, 1, 1, 1), stride == 1 and c == co, False))
            c = co
    out.append(("head", ConvLayer(c, h, 1280, 1, 1, 1), False, False))
    return out


def mbv2_depthwise_layers(resolution: int = 224) -> tuple[dict, dict]:
    """MobileNetV2's distinct depthwise layers: ({(C, H, stride): calls per network}, {(C, H, stride): ConvLayer})."""
    calls: dict = {}
    shapes = {}
    for _name, ly, _, _ in mbv2_layers(resolution):
        if ly.kind == "depthwise":
            calls[ly.c, ly.h, ly.stride] = calls.get((ly.c, ly.h, ly.stride), 0) + 1
            shapes[ly.c, ly.h, ly.stride] = ly
    return calls, shapes


def _requant_params(rng: np.random.Generator, o: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bias, multiplier, shift keeping codes mid-range for a K-long u8 x s8 dot product."""
    shift = np.full(o, 38, np.int32)
    mult = (rng.uniform(0.5, 1.0, o) * 2.0**38 / (64.0 * np.sqrt(k) * 40)).astype(np.int32)
    bias = rng.integers(-1000, 1000, o).astype(np.int32)
    return bias, mult, shift


def build_relax_mbv2(target, resolution: int = 224, num_classes: int = 1000, seed: int = 0, w_bits: int = 8):
    """Relax IRModule of the 8-bit integer MobileNetV2 through qcompile's strategies (input u8 NCHW)."""
    from tvm import relax

    from qcompile.backends.tvm.strategy import OpCall, select_strategy

    rng = np.random.default_rng(seed)
    hw = 2 ** (w_bits - 1)

    def emit(bb, op, params, args):
        call = OpCall(op, params, target)
        strat = select_strategy(call)
        if strat is None:
            raise RuntimeError(f"no strategy for {op} {params}")
        return strat.emit(bb, call, args)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, resolution, resolution), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            cur = x
            block_in = x
            for name, ly, residual, starts_block in mbv2_layers(resolution):
                if starts_block:
                    block_in = cur
                w = rng.integers(-hw, hw, (ly.o, ly.c // ly.groups, ly.k, ly.k)).astype(np.int8)
                bias, mult, shift = _requant_params(rng, ly.o, ly.c // ly.groups * ly.k * ly.k)
                params = {
                    "x_shape": (1, ly.c, ly.h, ly.h),
                    "w_shape": w.shape,
                    "out_shape": (1, ly.o, ly.ho, ly.ho),
                    "stride": (ly.stride, ly.stride),
                    "padding": (ly.k // 2, ly.k // 2),
                    "dilation": (1, 1),
                    "groups": ly.groups,
                    "pad_value": 0,
                    "lo": 0,
                    "hi": 255,
                    "node": name,
                }
                consts = [relax.const(a) for a in (w, bias, mult, shift)]
                cur = emit(bb, "conv2d_requant", params, [cur, *consts])
                if residual:
                    shape = (1, ly.o, ly.ho, ly.ho)
                    add = {
                        "shapes": (shape, shape),
                        "multiplier_a": 1 << 29,
                        "multiplier_b": 1 << 29,
                        "offset": 1 << 29,
                        "shift": 30,
                        "lo": 0,
                        "hi": 255,
                        "node": name + ".add",
                    }
                    cur = emit(bb, "add", add, [cur, block_in])
            last = mbv2_layers(resolution)[-1][1]
            mean = {
                "shapes": ((1, last.o, last.ho, last.ho),),
                "multiplier": 1 << 24,
                "offset": 1 << 29,
                "shift": 30,
                "lo": 0,
                "hi": 255,
                "node": "pool",
            }
            cur = emit(bb, "mean", mean, [cur])
            cur = bb.emit(relax.op.reshape(cur, (1, last.o)))
            w = rng.integers(-hw, hw, (num_classes, last.o)).astype(np.int8)
            bias = rng.integers(-1000, 1000, num_classes).astype(np.int32)
            fc = {"x_shape": (1, last.o), "w_shape": w.shape, "out_shape": (1, num_classes), "node": "fc"}
            cur = emit(bb, "linear", fc, [cur, relax.const(w), relax.const(bias)])
            out = bb.emit_output(cur)
        bb.emit_func_output(out)
    return bb.get()


# ---------------------------------------------------------------------------------------------
# float twin and peers: the ones `qcompile bench` uses (qcompile.bench)


def float_twin(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """MobileNetV2 1.0 in float, seeded (`qcompile.bench.mobilenet_v2`): the shape twin of `build_relax_mbv2`.

    Its BatchNorms fold into the convs in both peers (the ONNX export in eval mode, torch.ao's fusion)."""
    from qcompile.bench import mobilenet_v2

    return mobilenet_v2(num_classes, seed=seed)


class SingleConv(nn.Module):
    """One conv + ReLU6 (the per-kernel peer of a fused conv2d+requantize)."""

    def __init__(self, ly: ConvLayer):
        super().__init__()
        self.conv = nn.Conv2d(ly.c, ly.o, ly.k, ly.stride, ly.k // 2, groups=ly.groups)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def _calibration(shape: tuple[int, ...], seed: int, n: int = 4) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.standard_normal(shape).astype(np.float32) for _ in range(n)]


def ort_int8(model: nn.Module, shape: tuple[int, ...], threads: int = 2, seed: int = 0):
    """onnxruntime INT8 QDQ runner of `model` (u8 activations, s8 per-channel weights, MLAS):
    `qcompile.bench.peers.ort_int8_static` on the float export, calibrated on 4 random inputs."""
    import tempfile
    from pathlib import Path

    from qcompile.bench.peers import export_float_onnx, ort_int8_static

    cal = _calibration(shape, seed)
    with tempfile.TemporaryDirectory() as d:  # the session holds the model in memory
        fp = export_float_onnx(model.eval(), cal[0], Path(d) / "f.onnx")
        return ort_int8_static(fp, cal, Path(d) / "q.onnx", threads, per_channel=True)


def torch_ao_int8(model: nn.Module, shape: tuple[int, ...], seed: int = 0):
    """torch.ao FX post-training static quantization runner (x86 backend), calibrated on 4 random inputs
    (`qcompile.bench.peers.torch_ao_int8`)."""
    from qcompile.bench.peers import torch_ao_int8 as _torch_ao_int8

    return _torch_ao_int8(model, _calibration(shape, seed))
