"""The kernels `qc.lower` would emit for a subnet config, from the config alone (no TVM build).

nn-Meter (Zhang et al., MobiSys 2021) predicts latency per *kernel*, the unit a runtime actually
executes after fusion; qcompile owns its emitter, so the kernel list is not guessed from operator
rules but produced by the emitter's own walk in dry mode (`backends.tvm.emitter.plan_kernels`):
the same fusion, the same `OpCall` parameters, the same `select_strategy`, the same
`kernel_workload` record that a real lowering writes into `Lowered.meta["kernels"]`.

Whole-config path (about a second quiet, the cost of a config whose blocks are all unseen): a skeleton
quantized supernet of the space (random weights, cached per space), `extract` + a two-image random
calibration + `to_integer` (graph structure does not depend on the statistics), then the dry emission.
Memo (well under a millisecond): the kernels of each block depend only on the block's layer shapes and on
which of its bits change a kernel (32 = float island; 8-bit activations, which change the AVX2 GEMM mode),
the neighbouring layers' classes included (`block_keys`), so kernel lists are memoised per block (OFA/APQ
per-block lookup tables, Cai et al. 2020, Wang et al. 2020). A kernel belongs to the block of its last node
(`_group_of`), which places the float islands that cross a block boundary. Window path (a config with some
unseen blocks): each run of unseen blocks is planned by the same passes and the same dry emission on a window
of the skeleton supernet graph (`window_graph`: the run, the quantizer in front of it, the next block behind
it), a fraction of the whole config's cost.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from typing import Any

from qcompile.config import FLOAT_BITS, SubnetConfig
from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["kernel_workloads", "group_workloads", "skeleton_graph", "plan_graph", "workload_key", "space_key",
           "block_keys", "plan_config", "remember", "window_graph", "window_workloads"]

_SKELETONS: OrderedDict[str, Any] = OrderedDict()
_MEMO: dict[tuple, dict[Any, list[dict]]] = {}
_LOCK = threading.Lock()
_BLOCK_RE = re.compile(r"^stages_(\d+)_blocks_(\d+)_")
_HEAD_PREFIXES = ("head", "pool", "classifier")
#: torch seed of the skeleton supernets' random weights (kernel lists are reproducible across processes)
SKELETON_SEED = 0


def space_key(space: Any) -> str:
    """A stable identity of a space (its constructor arguments), for caches and table keys."""
    try:
        return json.dumps(space.to_dict(), sort_keys=True, default=repr)
    except AttributeError as e:
        raise ConfigError("space", type(space).__name__, "a qcompile StagedSpace (qc.spaces.*)") from e


def workload_key(w: dict) -> str:
    """Canonical string of a workload dict (the table's key)."""
    return json.dumps(w, sort_keys=True, separators=(",", ":"))


def _skeleton(space: Any) -> Any:
    """A quantized supernet of `space` with random weights (quantize() defaults), cached per space."""
    from qcompile import api as qc

    key = space_key(space)
    with _LOCK:
        if key in _SKELETONS:
            _SKELETONS.move_to_end(key)
            return _SKELETONS[key]
    import torch

    # seeded: which requantizations `to_integer` elides depends on the calibrated scales (`_same_quant`), so an
    # unseeded skeleton could give a config a different kernel list in each process or after an LRU eviction
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SKELETON_SEED)
        qnet = qc.quantize(qc.trace(space.build_supernet()))
    with _LOCK:
        _SKELETONS[key] = qnet
        while len(_SKELETONS) > 4:
            _SKELETONS.popitem(last=False)
    return qnet


def skeleton_graph(space: Any, cfg: SubnetConfig, qnet: Any = None) -> Any:
    """The IntegerGraph of `cfg` on the skeleton supernet (random weights; structure as a trained one), or on
    `qnet` (a trained quantized supernet of the space) when given."""
    import torch

    from qcompile import api as qc

    sub = qc.extract(qnet if qnet is not None else _skeleton(space), cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, space.in_channels, cfg.resolution, cfg.resolution, generator=g)
    qc.calibrate(sub, [x])
    return qc.to_integer(sub)


#: `plan_graph` slices, calibrates and lowers a config above this resolution at this one, then propagates the
#: config's own shapes through the integer graph: the op graph `to_integer` builds does not depend on the input
#: size (shapes enter the kernels only through `tensor_meta`), and the forward passes on real tensors (shape
#: recording, calibration, shape propagation of the fake-quant graph) were a third of a 224 px plan
PLAN_RESOLUTION = 64


def _unbound(space: Any) -> Any:
    """The skeleton's graph as a GraphModule without `space_info` (same modules): `slice_subnet` then accepts a
    config at a resolution the space does not list (`plan_graph` at `PLAN_RESOLUTION`); cached per space."""
    import copy

    from torch import fx

    qnet = _skeleton(space)
    view = qnet.__dict__.get("_qc_unbound")
    if view is None:
        view = fx.GraphModule(qnet, copy.deepcopy(qnet.graph))
        view.training = qnet.training  # the flag only: train() would reach the shared modules
        qnet.__dict__["_qc_unbound"] = view
    return view


def plan_graph(space: Any, cfg: SubnetConfig) -> Any:
    """The IntegerGraph `plan_config` walks: `skeleton_graph` without what does not change the kernels.

    The same `slice_subnet`, calibration and `to_integer` passes, minus the accumulator range analysis (it only
    annotates node meta and refuses overflow), the graph verifier after each pass, and the deep copy of the
    freshly extracted subnet (nothing else holds it); a config above `PLAN_RESOLUTION` is sliced, calibrated
    and lowered at that resolution, and its shapes at its own resolution are propagated through the result.
    """
    import dataclasses

    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    from qcompile import api as qc
    from qcompile.ops.meta import ProgramMeta
    from qcompile.passes.slice_subnet import slice_subnet
    from qcompile.passes.to_integer import to_integer

    def lowered(res: int) -> Any:
        if res != cfg.resolution:  # the caller (`kernel_workloads`) validated cfg; `res` is not the space's
            sub = slice_subnet(_unbound(space), dataclasses.replace(cfg, resolution=res), space.in_channels)
        else:
            sub = qc.extract(_skeleton(space), cfg)
        g = torch.Generator().manual_seed(0)
        qc.calibrate(sub, [torch.randn(2, space.in_channels, res, res, generator=g)])
        return to_integer(sub, check_overflow=False, verify=False, copy_input=False)

    if cfg.resolution <= PLAN_RESOLUTION:
        return lowered(cfg.resolution)
    try:
        ig = lowered(PLAN_RESOLUTION)
    except Exception as e:  # noqa: BLE001 - whatever fails at the small size: the config's own size is exact
        log.debug("plan at %d px failed (%s): planning at %d px", PLAN_RESOLUTION, e, cfg.resolution)
        return lowered(cfg.resolution)
    shape = (1, space.in_channels, cfg.resolution, cfg.resolution)
    with torch.no_grad():
        ShapeProp(ig).propagate(torch.zeros(shape))
    ig.program_meta = dataclasses.replace(ProgramMeta.from_dict(ig.program_meta), input_shape=shape,
                                          config=cfg).to_dict()
    return ig


def _node_groups(names: list[str]) -> list[Any]:
    """The group (stem, (stage, block), head) of each supernet graph node name, in graph order (`_group_of` on
    one node: a node not named after a block, such as a residual `add` or a depth gate, joins the one before)."""
    out: list[Any] = []
    cur: Any = "stem"
    for n in names:
        cur = _group_of((n,), cur)
        out.append(cur)
    return out


def _entry_shape(space: Any, cfg: SubnetConfig, prev: Any) -> tuple[int, int, int, int]:
    """Shape of the activation that group `prev` (stem or a block) hands to the next group: the output of its last
    conv (`qcompile.search.cost.layers`, computed from the config alone)."""
    from qcompile.search.cost.layers import layers

    prefix = "stem" if prev == "stem" else f"stages.{prev[0]}.blocks.{prev[1]}."
    last = [d for d in layers(space, cfg) if d.name == prefix or d.name.startswith(prefix)][-1]
    return (1, last.out_ch, last.out_hw, last.out_hw)


def window_graph(space: Any, cfg: SubnetConfig, run: list[Any], order: list[Any], qnet: Any = None) -> Any:
    """The IntegerGraph of a window of `cfg`'s groups: the consecutive groups `run` (of `order`, the config's
    groups stem, blocks, head) with the context the emitter's decisions read, through the same passes as
    `plan_graph` (`slice_subnet`, calibration, `to_integer`).

    Context: in front, the 8-bit quantizer of the previous group's output (`block_out`; the codes every block
    reads), fed by a float input of its shape; behind, the whole next group (a float island that starts at the
    last block's output codes ends at the next block's `block_out` quantizer at the latest), or the head. The
    kernels of the context groups are planned and dropped (`window_workloads`). A window that starts at the
    first block takes the stem along: the stem's lookup-table output sets the largest input code (`x_max`) of
    the first block's convs.
    """
    import torch
    from torch import fx

    from qcompile.passes.slice_subnet import slice_subnet
    from qcompile.passes.to_integer import to_integer
    from qcompile.quant import ActQuantizer

    qnet = qnet if qnet is not None else _skeleton(space)
    i0, i1 = order.index(run[0]), order.index(run[-1])
    last = order[i1 + 1] if i1 + 1 < len(order) else "head"
    nodes = list(qnet.graph.nodes)
    groups = _node_groups([n.name for n in nodes])
    start = 0 if run[0] == "stem" else groups.index(run[0])
    end = len(nodes) - 1 if last == "head" else max(i for i, g in enumerate(groups) if g == last)
    graph = fx.Graph()
    env: dict[Any, Any] = {}
    entry = None
    shape = (1, space.in_channels, cfg.resolution, cfg.resolution)
    if start > 0:
        prev = order[i0 - 1]
        quants = [n for n, g in zip(nodes[:start], groups[:start]) if g == prev and n.op == "call_module"
                  and isinstance(qnet.get_submodule(n.target), ActQuantizer)]
        if not quants:
            raise ValueError(f"no output quantizer in group {prev}")
        shape = _entry_shape(space, cfg, prev)
        entry = graph.call_module(quants[-1].target, (graph.placeholder("x"),))
    for n in nodes[start:end + 1]:
        if n.op == "output":
            graph.output(fx.node.map_arg(n.args[0], lambda a: env[a]))
            break
        # everything a window node reads from before the window is the stream entering it (the residual skip is
        # the block's input)
        env[n] = graph.node_copy(n, lambda a: env.get(a, entry))
    else:
        graph.output(env[nodes[end]])
    gm = fx.GraphModule(qnet, graph)
    sub = slice_subnet(gm, cfg, space.in_channels, input_shape=shape)
    del sub.subnet_config  # a window, not the subnet: calibration must not expect the subnet's input size
    g = torch.Generator().manual_seed(0)
    from qcompile import api as qc

    qc.calibrate(sub, [torch.randn(2, *shape[1:], generator=g)])
    return to_integer(sub, check_overflow=False, verify=False, copy_input=False)


def window_workloads(space: Any, cfg: SubnetConfig, run: list[Any], order: list[Any], target: Any = "x86",
                     num_threads: int | None = None) -> dict[Any, list[dict]]:
    """Workloads of each group of `run` (consecutive groups of `order`), planned by the emitter's dry walk
    (`plan_kernels`) on `window_graph`; the kernels of the context groups are dropped (`_split` owns each kernel
    to one group). Raises ValueError when the window does not give every group of `run` contiguous kernels."""
    from qcompile.backends.tvm.emitter import plan_kernels

    spec = _resolve(target, num_threads)
    if run[0] != "stem" and order.index(run[0]) == 1:
        run = ["stem", *run]
    i0 = order.index(run[0])
    records = plan_kernels(window_graph(space, cfg, run, order), spec.target())
    split = _split(records, start=order[i0 - 1] if i0 > 0 else "stem")
    if not all(g in split for g in run):
        raise ValueError(f"window {run[0]}..{run[-1]}: groups {sorted(map(str, split))}")
    return {g: split[g] for g in run}


_TARGETS: dict[tuple[str, int | None], tuple[Any, str]] = {}


def _target(target: Any, num_threads: int | None) -> tuple[Any, str]:
    """(TargetSpec, its canonical JSON) of `target`, cached per process: resolving the host target reads
    /proc/cpuinfo, most of a memo hit's time otherwise, and the host does not change under a running process."""
    k = (json.dumps(target, sort_keys=True, default=repr) if isinstance(target, dict) else repr(target), num_threads)
    hit = _TARGETS.get(k)
    if hit is None:
        from qcompile.backends.tvm.targets import resolve_target

        spec = resolve_target(target, num_threads)
        hit = _TARGETS[k] = (spec, json.dumps(spec.tvm_target, sort_keys=True))
    return hit


def _resolve(target: Any, num_threads: int | None) -> Any:
    return _target(target, num_threads)[0]


def plan_config(space: Any, cfg: SubnetConfig, target: Any = "x86", num_threads: int | None = None) -> list[Any]:
    """Slow path: the emitter's dry walk over the skeleton IntegerGraph of `cfg` -> `KernelRecord`s."""
    from qcompile.backends.tvm.emitter import plan_kernels

    spec = _resolve(target, num_threads)
    return plan_kernels(plan_graph(space, cfg), spec.target())


def _group_of(nodes: tuple[str, ...], current: Any) -> Any:
    """The group (stem, (stage, block), head) that owns a kernel of fx nodes `nodes`: the block of its *last*
    node named after a block (`current`, the previous kernel's group, for nodes such as `input_add`).

    The last node, because the emitter emits a fused kernel at its last node and a kernel that crosses a block
    boundary is a float island that starts with the `dequantize` of the previous block's 8-bit output codes
    (`block_out` quantizer) and runs through the next block's float layers: everything that sizes it but the
    codes' shape (fixed by the next block's position and the stage widths) is the next block's choice."""
    for n in reversed(nodes):
        m = _BLOCK_RE.match(n)
        if m:
            return (int(m.group(1)), int(m.group(2)))
    if current == "head" or any(n.startswith(_HEAD_PREFIXES) for n in nodes):
        return "head"
    return current


def _bit_class(bits: tuple[int, int] | None) -> str:
    """What of a layer's (weight, activation) bits changes a kernel: "f" float island (both float), "wf"/"wf8"
    float weights on quantized activations, "af" quantized weights on float activations, "i"/"i8" integer (8-bit
    activations change the AVX2 GEMM mode; on VNNI 2/3/4/8-bit layers run the same kernels). A float weight or
    a float activation alone already places quantize/dequantize kernels differently from a float island."""
    if bits is None:
        return "f"
    w, a = bits
    if w == FLOAT_BITS and a == FLOAT_BITS:
        return "f"
    suffix = "8" if a != FLOAT_BITS and a >= 8 else ""
    if w == FLOAT_BITS:
        return "wf" + suffix
    if a == FLOAT_BITS:
        return "af"
    return "i8" if suffix else "i"


#: a neighbouring layer's bit class as an edge of a block key (`block_keys`)
_EDGE = {"i8": "i", "wf8": "wf"}


def block_keys(space: Any, cfg: SubnetConfig) -> dict[Any, tuple]:
    """Group -> memo key: "stem", (stage, block) and "head".

    A block's kernels are fixed by its position (stage, index: stride, input size at a resolution), the
    resolution, its own kernel/expand/channel choices, the stage widths (input and output channels), the bit
    classes of its layer slots (`_bit_class`) and its *edges*: whether the layer before it (the last slot of the
    previous block) and the layer after it (the first slot of the next block) have float weights or
    activations. The edges matter because a float island's boundary kernels belong to the group whose node
    starts them: a block followed by a float layer ends with that layer's `dequantize`, a block after one
    starts without its `rescale`.
    Stem and head by resolution and widths, the stem with the class of the layer after it, the head with the
    class of the layer before it (the last block's last slot). Computed from the config alone in tens of
    microseconds (no `qcompile.search.cost.layers` walk), for `LatencyTable.predict`.
    """
    pol = cfg.policy
    widths = cfg.widths
    slot_of = getattr(space, "_slot_of", {})
    blocks: list[tuple[tuple[int, int], Any, tuple[str, ...]]] = []
    for si in range(len(space.stages)):
        for b in range(space.stage_depth(cfg, si)):
            bs = space.block_slot(si, b)
            if bs is None:
                arch = None
            else:
                arch = (cfg.kernels[bs], cfg.expands[bs], cfg.channels[bs] if cfg.channels is not None else None)
            bits = tuple(_bit_class(pol[sl]) if (pol is not None and sl is not None) else "f"
                         for sl in slot_of.get((si, b), ()))
            blocks.append(((si, b), arch, bits))
    # a neighbour's class as far as it moves kernels into this group: where float begins or ends. Integer
    # neighbours of any bit width (and the stem, the head and fixed blocks, integer under the quantize()
    # defaults and the same in every config) change only their own kernels.
    first = [_EDGE.get(bits[0], bits[0]) if bits else "i" for _, _, bits in blocks]
    last = [_EDGE.get(bits[-1], bits[-1]) if bits else "i" for _, _, bits in blocks]
    keys: dict[Any, tuple] = {"stem": ("stem", cfg.resolution, widths, pol is None, first[0] if blocks else "i")}
    for i, (pos, arch, bits) in enumerate(blocks):
        edges = (last[i - 1] if i > 0 else "i", first[i + 1] if i + 1 < len(blocks) else "i")
        keys[pos] = (pos, cfg.resolution, arch, widths, bits, edges)
    keys["head"] = ("head", cfg.resolution, widths, pol is None, last[-1] if blocks else "i")
    return keys


def _split(records: list[Any], start: Any = "stem") -> dict[Any, list[dict]]:
    """Workloads per group (stem, (stage, block), head) of `KernelRecord`s or `meta["kernels"]` entries, each
    kernel in the group of `_group_of`; empty (nothing to memoise) when a group's kernels are not contiguous in
    program order (concatenating the groups would then reorder the kernels)."""
    out: dict[Any, list[dict]] = {}
    cur: Any = start
    for r in records:
        nodes, w = (r["nodes"], r["workload"]) if isinstance(r, dict) else (r.nodes, r.workload)
        g = _group_of(tuple(nodes), cur)
        if g != cur and g in out:
            return {}
        cur = g
        out.setdefault(cur, []).append(dict(w))
    return out


def remember(space: Any, cfg: SubnetConfig, kernels: list[dict], target: Any = "x86",
             num_threads: int | None = None) -> bool:
    """Fill the per-block memo from the `meta["kernels"]` of a real lowering of `cfg` (what `kernel_workloads`
    computes for it: the exactness tests assert the two are equal), so that configs made of these blocks are
    answered without the slow path. False (nothing memoised) when the kernels do not split by block."""
    tkey = (space_key(space), _target(target, num_threads)[1])
    keys = block_keys(space, cfg)
    split = _split(kernels)
    if set(split) != set(keys):
        return False
    table = _MEMO.setdefault(tkey, {})
    for g, ws in split.items():
        table.setdefault(keys[g], [dict(w) for w in ws])
    return True


def group_workloads(space: Any, cfg: SubnetConfig, target: Any = "x86",
                    num_threads: int | None = None) -> dict[str, list[dict]] | None:
    """Memo key (`repr` of the block key) -> workloads of each group (stem, blocks, head) of `cfg`, in program order;
    None for a space whose kernels do not split by block names (then use `kernel_workloads`)."""
    tkey = (space_key(space), _target(target, num_threads)[1])
    keys = block_keys(space, cfg)
    table = _MEMO.get(tkey, {})
    if not all(k in table for k in keys.values()):
        kernel_workloads(space, cfg, target, num_threads)
        table = _MEMO.get(tkey, {})
        if not all(k in table for k in keys.values()):
            return None
    return {repr(k): table[k] for k in keys.values()}


def kernel_workloads(space: Any, cfg: SubnetConfig, target: Any = "x86", num_threads: int | None = None,
                     *, memo: bool = True) -> list[dict]:
    """The kernels `qc.lower(subnet_of(cfg), target)` emits, in order, one workload dict each.

    Each entry names its `op`, `strategy` (kernel provider), `kind`/`mode` where the strategy distinguishes
    them (x86 GEMM intrinsic: vnni512, vnni, u8s8 or i16; gemv), operand `shapes`, `out_shape`, `stride`,
    `padding`, `dilation` and `groups` (1 for non-conv ops). Blocks seen before come from the per-block memo,
    runs of unseen blocks from windows (`window_workloads`) when some blocks were seen, the whole config
    (`plan_config`) otherwise or when a window fails. `memo=False` forces the whole-config plan.
    Raises `ConfigError` for a config outside the space.
    """
    space.validate(cfg)
    tkey = (space_key(space), _target(target, num_threads)[1])
    keys = block_keys(space, cfg)
    table = _MEMO.setdefault(tkey, {})
    order = list(keys)
    missing = [g for g in order if keys[g] not in table]
    if memo and missing and len(missing) < len(order):
        try:
            for run in _runs(order, missing):
                for g, ws in window_workloads(space, cfg, run, order, target, num_threads).items():
                    table.setdefault(keys[g], ws)
            missing = []
        except Exception as e:  # noqa: BLE001 - any failure of a window: the whole-config plan is exact
            log.debug("window plan of %s failed (%s): planning the whole config", missing, e)
    if memo and not missing:
        out: list[dict] = []
        for k in keys.values():
            out.extend(dict(w) for w in table[k])
        return out
    records = plan_config(space, cfg, target, num_threads)
    split = _split(records)
    if set(split) == set(keys):
        for g, ws in split.items():
            table[keys[g]] = [dict(w) for w in ws]
    else:  # a space whose node names do not follow stages_i_blocks_j: no memo, always exact
        log.debug("kernel groups %s differ from layer groups %s: not memoised", sorted(map(str, split)),
                  sorted(map(str, keys)))
    return [dict(r.workload) for r in records]


def _runs(order: list[Any], missing: list[Any]) -> list[list[Any]]:
    """`missing` (a subset of `order`) as runs of consecutive groups; runs one seen group apart are joined (one
    window of one more group costs less than a second window)."""
    idx = [order.index(g) for g in missing]
    runs: list[list[int]] = []
    for i in idx:
        if runs and i - runs[-1][-1] <= 2:
            runs[-1].extend(range(runs[-1][-1] + 1, i + 1))
        else:
            runs.append([i])
    return [[order[i] for i in r] for r in runs]
