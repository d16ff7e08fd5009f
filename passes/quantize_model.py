"""`quantize_model`: bring your own CNN. Trace any FX-traceable model and insert qcompile's quantizers.

A fixed network is a one-point search space: the result is the same kind of static fake-quant
`fx.GraphModule` that `qcompile.extract` returns (`QConv2d` / `QLinear` with frozen LSQ weight
quantizers, `nn.BatchNorm2d`, BatchQuant activation quantizers), so `qc.calibrate`, `qc.to_integer`,
`qc.lower`, `qc.export_onnx` and the CLI accept it unchanged.

Where the quantizers go (the tensors the integer program materialises, docs/integer_semantics.md):

* every quantized conv / linear gets an input BatchQuant at the layer's activation bits (QFA Eq. 5) and an
  LSQ weight quantizer at its weight bits (QFA Eq. 2, OQA Eq. 1), per output channel;
* a tensor consumed by a residual add, an SE multiply, an average or max pool, a lookup-table activation
  (h-swish, h-sigmoid, swish, sigmoid), or by more than one node gets one shared 8-bit BatchQuant at its
  producer (the `QuantPoint`s of qcompile's supernets: residual_in, block_out, se_in, se_gate, pool_in,
  pre_act). A layer whose input already is such a quantizer at the layer's bits shares it.

Weight steps: `"maxabs"` `s_c = max|w_c| / Qp`, `"mse"` the per-channel clip ratio minimising
`||w - Q(w)||^2` over a grid, `"lsq"` OQA Sec. 3.2's training rule `s = 2 mean|w| / sqrt(Qp)`.
Activation ranges come from `qc.calibrate(gm, batches, bn=False)` (QFA Sec. 3.4 calibration with the
min-max estimator, Eq. 7, widened to contain 0; a trained model keeps its BN statistics).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from qcompile.config import FLOAT_BITS, QuantPolicy, SubnetConfig
from qcompile.errors import ConfigError, LoweringError
from qcompile.nn.static import QConv2d, QLinear, link_input_quantizers
from qcompile.passes.insert_quantizers import PolicyBits
from qcompile.passes.patterns import classify, set_module
from qcompile.quant import LSQ, SUPPORTED_BITS, ActQuantizer, BatchQuant
from qcompile.quant.functional import signed_range

__all__ = [
    "ALLOWED_BITS",
    "WEIGHT_INITS",
    "LayerInfo",
    "bitops",
    "init_weight_steps",
    "layer_info",
    "layer_names",
    "quantize_model",
    "resolve_policy",
]

log = logging.getLogger(__name__)

#: bit-widths of a policy entry: 2-8, or 32 (the layer stays float)
ALLOWED_BITS: tuple[int, ...] = tuple(SUPPORTED_BITS) + (FLOAT_BITS,)
WEIGHT_INITS = ("maxabs", "mse", "lsq")
#: bits of the shared quantizers at residual adds, SE, pools and lookup-table inputs (as `residual_bits`)
POINT_BITS = 8
_LUT_ACTS = ("hardswish", "hardsigmoid", "silu", "sigmoid")
_CODE_CONSUMERS = ("add", "mul", "mean", "maxpool")
_SUPPORTED = ("nn.Conv2d (numeric zero padding; full, depthwise, grouped), nn.Linear, nn.BatchNorm2d after a conv, "
              "ReLU, ReLU6, Hardswish, Hardsigmoid, SiLU, Sigmoid, residual add, SE multiply, average pool (global), "
              "max pool, flatten, dropout/identity")


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer (a policy slot) of a model: what a cost model and a bit search need.

    `macs` are multiply-accumulates per image at the example input's resolution; BitOPs of a policy are
    `sum macs * weight_bits * act_bits` (APQ / OQA's BitOPs, 32 for float).
    """

    name: str
    op: str  # "conv2d" | "linear"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    macs: int
    params: int
    weight_bits: int = POINT_BITS
    act_bits: int = POINT_BITS

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


# -- tracing and inspection ------------------------------------------------------------------------------


def _trace(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        return copy.deepcopy(model)
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module")
    model = copy.deepcopy(model)
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # torch.fx raises many types on data-dependent control flow
        raise ConfigError("model", type(model).__name__, "an FX-traceable nn.Module",
                          f"torch.fx.symbolic_trace failed: {type(e).__name__}: {e}") from e


def _layer_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    out, seen = [], set()
    for n in gm.graph.nodes:
        is_layer = n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Conv2d, nn.Linear))
        if is_layer and n.target not in seen:
            out.append(n)
            seen.add(n.target)
    return out


def layer_names(model: nn.Module) -> list[str]:
    """Names of the policy slots (conv / linear layers, graph order) of a plain model or a `quantize_model` result.

    Each is the layer's module path (`"layer1.0.conv1"`): the keys of a `{layer_name: (w, a)}` policy.
    """
    layers = getattr(model, "qc_layers", None)
    if layers is not None:
        return [ly.name for ly in layers]
    return [n.target for n in _layer_nodes(_trace(model))]


def _shape_of(n: fx.Node) -> tuple[int, ...]:
    tm = n.meta.get("tensor_meta")
    return tuple(int(s) for s in tm.shape) if tm is not None and hasattr(tm, "shape") else ()


def _layer_infos(gm: fx.GraphModule, bits: Mapping[str, tuple[int, int]] | None = None) -> tuple[LayerInfo, ...]:
    """LayerInfo of each layer; needs ShapeProp's tensor_meta on the graph."""
    infos = []
    for n in _layer_nodes(gm):
        m = gm.get_submodule(n.target)
        out = _shape_of(n)
        per_image = 1
        for s in out[1:]:
            per_image *= s
        params = sum(p.numel() for p in (m.weight, m.bias) if p is not None)
        w, a = (bits or {}).get(n.target, (POINT_BITS, POINT_BITS))
        if isinstance(m, nn.Conv2d):
            k = tuple(int(v) for v in m.kernel_size)
            macs = per_image * (m.in_channels // m.groups) * k[0] * k[1]
            infos.append(LayerInfo(n.target, "conv2d", m.in_channels, m.out_channels, k,  # type: ignore[arg-type]
                                   tuple(int(v) for v in m.stride), int(m.groups), int(macs), int(params), w, a))
        else:
            macs = per_image * m.in_features
            infos.append(LayerInfo(n.target, "linear", m.in_features, m.out_features, (1, 1), (1, 1), 1, int(macs),
                                   int(params), w, a))
    return tuple(infos)


def _example(example_inputs: Any) -> torch.Tensor:
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) and example_inputs else example_inputs
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ConfigError("example_inputs", type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape),
                          "a tuple holding one image batch tensor (N, C, H, W)")
    return x


def layer_info(model: nn.Module, example_inputs: Any = None) -> tuple[LayerInfo, ...]:
    """Per-layer `LayerInfo` (MACs at the example input's size, params, bits) of a model or a quantized model.

    A `quantize_model` result carries it (`gm.qc_layers`); a plain model needs `example_inputs`.
    """
    layers = getattr(model, "qc_layers", None)
    if layers is not None:
        return tuple(layers)
    if example_inputs is None:
        raise ConfigError("example_inputs", None, "a tuple holding one image batch", "MACs depend on the input size")
    gm = _trace(model).eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(_example(example_inputs)[:1])
    return _layer_infos(gm)


def bitops(layers: Sequence[LayerInfo], policy: Any = None) -> int:
    """BitOPs `sum macs * w * a` of `layers` under `policy` (any form `quantize_model` takes; default their bits)."""
    names = [ly.name for ly in layers]
    bits = resolve_policy(policy, names) if policy is not None else {ly.name: (ly.weight_bits, ly.act_bits)
                                                                      for ly in layers}
    return int(sum(ly.macs * bits[ly.name][0] * bits[ly.name][1] for ly in layers))


# -- policy ---------------------------------------------------------------------------------------------------


def _check_bits(field: str, value: Any) -> tuple[int, int]:
    try:
        w, a = value
        w, a = int(w), int(a)
    except (TypeError, ValueError):
        raise ConfigError(field, value, f"a (weight_bits, act_bits) pair with bits in {ALLOWED_BITS}") from None
    for b in (w, a):
        if b not in ALLOWED_BITS:
            raise ConfigError(field, value, f"bits in {ALLOWED_BITS} (32 = float)")
    return w, a


def resolve_policy(policy: Any, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """`{layer_name: (w, a)}` for every layer of `names` from `(w, a)`, a `QuantPolicy` (one slot per layer, in
    `layer_names` order) or a dict (layers it omits get `(8, 8)`). Unknown names and bits raise `ConfigError`."""
    names = list(names)
    if isinstance(policy, QuantPolicy):
        if len(policy) != len(names):
            raise ConfigError("policy", f"QuantPolicy with {len(policy)} slots",
                              f"{len(names)} slots, one per layer of qc.layer_names(model)")
        return {n: _check_bits(f"policy[{n!r}]", policy[i]) for i, n in enumerate(names)}
    if isinstance(policy, Mapping):
        unknown = [k for k in policy if k not in names]
        if unknown:
            raise ConfigError("policy", unknown[0] if len(unknown) == 1 else unknown,
                              f"layer names of qc.layer_names(model): {names}")
        return {n: _check_bits(f"policy[{n!r}]", policy.get(n, (POINT_BITS, POINT_BITS))) for n in names}
    if isinstance(policy, (tuple, list)) and len(policy) == 2 and all(isinstance(b, int) for b in policy):
        wa = _check_bits("policy", policy)
        return {n: wa for n in names}
    raise ConfigError("policy", policy, "(w, a), a QuantPolicy, or {layer_name: (w, a)}")


# -- spelling normalisation -------------------------------------------------------------------------------------


def _is_flatten_reshape(n: fx.Node) -> bool:
    """`x.view(x.size(0), -1)`, `x.reshape(n, -1)`, `torch.reshape(...)`: (N, ...) -> (N, prod(...)) on a 4-D x."""
    is_reshape = (n.op == "call_method" and n.target in ("view", "reshape")) or (
        n.op == "call_function" and n.target is torch.reshape)
    if not is_reshape or not n.args or not isinstance(n.args[0], fx.Node):
        return False
    src, out = _shape_of(n.args[0]), _shape_of(n)
    return len(src) == 4 and len(out) == 2 and out[0] == src[0] and out[1] == src[1] * src[2] * src[3]


def _is_global_avg_pool(gm: fx.GraphModule, n: fx.Node) -> bool:
    """`nn.AvgPool2d(k)` / `F.avg_pool2d(x, k)` whose single window is the whole (unpadded) input."""
    if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.AvgPool2d):
        m = gm.get_submodule(n.target)
        k, pad = m.kernel_size, m.padding
    elif n.op == "call_function" and n.target is torch.nn.functional.avg_pool2d:
        k = n.args[1] if len(n.args) > 1 else n.kwargs.get("kernel_size")
        pad = n.args[3] if len(n.args) > 3 else n.kwargs.get("padding", 0)
    else:
        return False
    src = _shape_of(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else ()
    kk = (k, k) if isinstance(k, int) else tuple(k)
    return len(src) == 4 and kk == src[2:] and pad in (0, (0, 0)) and _shape_of(n)[2:] == (1, 1)


def _normalise(gm: fx.GraphModule) -> None:
    """Rewrite equivalent spellings into the ones the lowering knows (needs ShapeProp's tensor_meta):
    a batch-keeping reshape of a 4-D tensor to 2-D becomes `torch.flatten(x, 1)` and an average pool whose
    window is the whole input becomes `torch.mean(x, (2, 3), keepdim=True)`; dead shape arithmetic goes."""
    changed = False
    for n in list(gm.graph.nodes):
        new = None
        if _is_flatten_reshape(n):
            with gm.graph.inserting_after(n):
                new = gm.graph.call_function(torch.flatten, (n.args[0], 1))
        elif _is_global_avg_pool(gm, n):
            with gm.graph.inserting_after(n):
                new = gm.graph.call_function(torch.mean, (n.args[0],), {"dim": (2, 3), "keepdim": True})
        if new is not None:
            new.meta = dict(n.meta)
            n.replace_all_uses_with(new)
            gm.graph.erase_node(n)
            changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()


# -- unsupported layers ----------------------------------------------------------------------------------------


def _unsupported(gm: fx.GraphModule) -> list[str]:
    bad, calls = [], {}
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        k = classify(n, gm)
        what: Any = n.target
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            what = type(mod).__name__
            calls[n.target] = calls.get(n.target, 0) + 1
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and calls[n.target] == 2:
                bad.append(f"{n.name} (call_module {what} {n.target!r} called twice; give each call its own layer)")
            if isinstance(mod, nn.Conv2d) and (isinstance(mod.padding, str) or mod.padding_mode != "zeros"):
                bad.append(f"{n.name} (call_module {what} padding={mod.padding!r} "
                           f"padding_mode={mod.padding_mode!r}; use numeric zero padding)")
        if k.kind in ("unknown", "get_attr"):
            bad.append(f"{n.name} ({n.op} {getattr(what, '__name__', what)})")
    return bad


# -- weight steps ---------------------------------------------------------------------------------------------


@torch.no_grad()
def init_weight_steps(wq: LSQ, weight: torch.Tensor, method: str = "maxabs", grid: int = 96) -> torch.Tensor:
    """Set the step of `wq`'s active bits from `weight` by `method` (module doc) and return it.

    `"mse"` tries clip ratios `r` in `[0.05, 1]` (`grid` values) per output channel, with qcompile's
    round-half-up rule, and keeps the `s = r max|w_c| / Qp` of least squared error.
    """
    if method not in WEIGHT_INITS:
        raise ConfigError("weight_init", method, WEIGHT_INITS)
    bits = wq.active_bits
    if method == "lsq":
        wq.initialized[wq.bits.index(bits)] = False
        wq(weight)  # OQA Sec. 3.2 rule on first use
        return wq.step()
    n, p = signed_range(bits)
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    amax = w.abs().amax(dim=1).clamp_min(1e-8)
    if method == "maxabs":
        s = amax / p
    else:
        best_err = torch.full_like(amax, float("inf"))
        s = amax / p
        for r in torch.linspace(0.05, 1.0, grid, dtype=torch.float64):  # one ratio at a time: O x K memory
            st = r * amax / p
            q = torch.floor(torch.clamp(w / st[:, None], n, p) + 0.5)
            err = ((q * st[:, None] - w) ** 2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            s = torch.where(better, st, s)
    if not wq.per_channel:
        s = s.max() if method == "maxabs" else s.median()
    param = wq.steps[str(bits)]
    if wq.per_channel and param.numel() != s.numel():
        wq._materialize(s.numel(), param.device)
        param = wq.steps[str(bits)]
    param.copy_(s.to(param.dtype).reshape(param.shape))
    wq.initialized[wq.bits.index(bits)] = True
    return wq.step()


def _elastic_choices(bits: Mapping[str, tuple[int, int]], choices: Sequence[int] | None) -> tuple[int, ...] | None:
    if choices is None:
        return None
    try:
        ch = tuple(sorted({int(b) for b in choices}))
    except (TypeError, ValueError):
        raise ConfigError("bits_choices", choices, f"bit-widths in {ALLOWED_BITS}") from None
    bad = [b for b in ch if b not in ALLOWED_BITS]
    if not ch or bad:
        raise ConfigError("bits_choices", bad or choices, f"bit-widths in {ALLOWED_BITS}")
    return ch


def _choices(choices: tuple[int, ...] | None, b: int) -> tuple[int, ...]:
    """A quantizer's bit choices: the policy's `b` (static) or `choices` plus `b`, without 32 (passthrough)."""
    if choices is None:
        return () if b == FLOAT_BITS else (b,)
    return tuple(sorted({c for c in (*choices, b) if c != FLOAT_BITS}))


# -- the transformation ----------------------------------------------------------------------------------------


def _act_quant(bits: int, estimator: str) -> BatchQuant:
    q = BatchQuant((bits,), estimator=estimator)
    q.active_bits = bits
    return q


def _is_quantizer(gm: fx.GraphModule, n: Any) -> bool:
    return isinstance(n, fx.Node) and n.op == "call_module" and isinstance(gm.get_submodule(n.target), ActQuantizer)


def _needs_codes(gm: fx.GraphModule, n: fx.Node, kinds: dict[fx.Node, str], acts: dict[fx.Node, str]) -> bool:
    """Whether `n`'s value must be materialised as codes by a shared quantizer at its producer."""
    if n.op in ("output", "get_attr") or kinds[n] == "quantizer":
        return False
    users = list(n.users)
    for u in users:
        k = kinds.get(u)
        if k in _CODE_CONSUMERS:
            if k in ("add", "mul") and sum(isinstance(a, fx.Node) for a in u.args) < 2:
                continue  # x + 3: not a residual add, stays a float island
            return True
        if k == "act" and acts.get(u) in _LUT_ACTS:
            return True
    return len(users) > 1 and n.op != "placeholder"


def _safe(name: str) -> str:
    return name.replace(".", "_")


def quantize_model(
    model: nn.Module,
    policy: Any = (8, 8),
    example_inputs: Any = None,
    weight_init: str = "maxabs",
    *,
    per_channel: bool = True,
    estimator: str = "minmax_zero",
    bits_choices: Sequence[int] | None = None,
) -> fx.GraphModule:
    """A static fake-quant GraphModule of `model` under `policy` (module doc); `model` is not modified.

    Args:
        model: any FX-traceable CNN of the supported layers (see `_SUPPORTED`); BN keeps its statistics.
        policy: `(w, a)` for every layer, a `QuantPolicy` (slots in `layer_names(model)` order) or
            `{layer_name: (w, a)}`; bits 2-8, or 32 for a float layer.
        example_inputs: `(x,)` with one image batch `(N, C, H, W)`: fixes the input shape (batch 1 is lowered).
        weight_init: `"maxabs"`, `"mse"` or `"lsq"` (module doc).
        per_channel: per-output-channel weight steps (default) or one per layer.
        estimator: BatchQuant range estimator: `"minmax_zero"` (QFA Eq. 7 with 0 inside the range; the
            post-training default), `"minmax"`, `"channel_mean"` (Eq. 8), `"mean_std"` (Eq. 9).
        bits_choices: elastic bit choices (e.g. `(2, 3, 4, 8)`): every layer's quantizers hold one step / residual pair
            per choice and are bound to their policy slot, so `qc.set_active(gm, cfg)` switches the policy to
            `cfg.policy` (slots in `layer_names` order; `gm.subnet_config.with_policy(...)`) without re-quantizing
            (a bit search on a fixed model). Every layer then has its own input quantizer. Default: static.

    Raises `ConfigError` for bad policies / inputs, `LoweringError` listing every unsupported node at once.
    Run `qc.calibrate(gm, batches, bn=False)` before `to_integer` / `lower` / `export_onnx`.
    """
    if weight_init not in WEIGHT_INITS:
        raise ConfigError("weight_init", weight_init, WEIGHT_INITS)
    if example_inputs is None:
        raise ConfigError("example_inputs", None, "a tuple holding one image batch (N, C, H, W)",
                          "the input shape fixes pooling, MACs and the lowered program")
    x = _example(example_inputs)
    gm = _trace(model)
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(x[:1].to(torch.float32))
    except Exception as e:  # shape mismatch etc.: the float model itself fails on these inputs
        raise ConfigError("example_inputs", tuple(x.shape), f"inputs {type(model).__name__} runs on",
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    _normalise(gm)
    bad = _unsupported(gm)
    if bad:
        raise LoweringError(
            f"model {type(model).__name__}: {len(bad)} unsupported node(s): " + "; ".join(bad),
            f"quantize_model supports {_SUPPORTED}",
            "replace these layers with supported ones (e.g. a functional op by its module), keep them outside "
            "the quantized model, or extend qcompile.ops and the lowering",
        )
    names = [n.target for n in _layer_nodes(gm)]
    if not names:
        raise ConfigError("model", type(model).__name__, "a model with at least one nn.Conv2d or nn.Linear")
    bits = resolve_policy(policy, names)
    choices = _elastic_choices(bits, bits_choices)
    infos = _layer_infos(gm, bits)

    graph = gm.graph
    kinds: dict[fx.Node, str] = {}
    acts: dict[fx.Node, str] = {}
    for n in graph.nodes:
        k = classify(n, gm)
        kinds[n] = k.kind
        if k.kind == "act":
            acts[n] = k.params["act"]
    need = [n for n in graph.nodes if _needs_codes(gm, n, kinds, acts)]
    for n in need:
        name = f"{_safe(n.name)}_out_quant"
        gm.add_submodule(name, _act_quant(POINT_BITS, estimator))
        with graph.inserting_after(n):
            qn = graph.call_module(name, (n,))
        n.replace_all_uses_with(qn, delete_user_cb=lambda u, qn=qn: u is not qn)

    elastic = choices is not None
    for slot, node in enumerate([n for n in graph.nodes if n.op == "call_module" and n.target in bits]):
        w, a = bits[node.target]
        mod = gm.get_submodule(node.target)
        wq = None
        wch = _choices(choices, w)
        if wch:
            wq = LSQ(wch, per_channel=per_channel, num_channels=mod.weight.shape[0] if per_channel else None)
            for b in wch:  # every choice's step from the weights (elastic: one step per bit-width, QFA 3.3)
                wq.active_bits = b
                init_weight_steps(wq, mod.weight, weight_init)
            wq.active_bits = w
            if elastic:
                wq.qc_binding = PolicyBits(slot, 0)
        if isinstance(mod, nn.Conv2d):
            new: nn.Module = QConv2d(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride,
                                     padding=mod.padding, dilation=mod.dilation, groups=mod.groups,
                                     bias=mod.bias is not None, weight_quant=wq)
        else:
            new = QLinear(mod.in_features, mod.out_features, bias=mod.bias is not None, weight_quant=wq)
        with torch.no_grad():
            new.weight.copy_(mod.weight)
            if mod.bias is not None:
                new.bias.copy_(mod.bias)
        set_module(gm, node.target, new)
        ach = _choices(choices, a)
        if not ach:
            continue
        src = node.args[0]
        if not elastic and _is_quantizer(gm, src) and gm.get_submodule(src.target).active_bits == a:
            continue  # the shared quantizer at the producer already is this layer's input quantizer
        name = f"{_safe(node.target)}_input_quant"
        q = BatchQuant(ach, estimator=estimator)
        q.active_bits = a
        if elastic:
            q.qc_binding = PolicyBits(slot, 1)
        gm.add_submodule(name, q)
        with graph.inserting_before(node):
            qn = graph.call_module(name, (src,))
        node.replace_input_with(src, qn)

    graph.lint()
    gm.recompile()
    for n in graph.nodes:
        n.meta.pop("tensor_meta", None)
        n.type = None  # annotations break GraphModule pickling in torch 2.13 (as slice_subnet)
    for m in gm.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False  # in-place activations would overwrite a quantizer's output that others read
    link_input_quantizers(gm)
    shape = (1,) + tuple(int(s) for s in x.shape[1:])
    gm.meta["input_shape"] = shape
    gm.qc_layers = infos
    gm.qc_policy = dict(bits)
    if shape[2] == shape[3]:  # the model's one point of the search space: its resolution and policy slots
        gm.subnet_config = SubnetConfig(resolution=int(shape[2]), depths=(), kernels=(), expands=(),
                                        policy=QuantPolicy(tuple(bits[n] for n in names)))
    gm.quantize_model_options = {"policy": {k: list(v) for k, v in bits.items()}, "weight_init": weight_init,
                                 "per_channel": per_channel, "estimator": estimator, "input_shape": list(shape),
                                 "bits_choices": list(choices) if choices is not None else None}
    log.info("quantize_model: %d layers, %d shared quantizers", len(names), len(need))
    return gm.eval()
