"""Serial cost per unit of work of each kernel kind: the constants `schedules/parallel.py: UNIT_COST_NS` holds.

    OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.parallel_costs \\
        --out runs/parallel_costs.json

For every kind of `parallel.KINDS`, two kernels of that kind (a MobileNet-sized layer and one about 4x larger)
are built for this host with every parallel region off (`QCOMPILE_PARALLEL_MIN_US` = never), so they run on
one thread, and timed with `time_evaluator`: the minimum of `--repeats` single calls, because other jobs only
ever add time, and on a loaded machine a window of many calls is rarely free of them. The kernel's `work` is
what its schedule passed to `parallel_if_worth` (read from that module's debug log), and the cost per unit is
the pooled ratio `(t_small + t_large) / (work_small + work_large)`; the ratio of each size is reported beside
it, as a check that the cost is per unit (the two agree) and not per call. (A slope between the sizes would
drop the ~1 us call overhead, but on a loaded machine it amplifies noise; the kernels run 10 us to 2 ms, so the
overhead is small.)
Kernels of the "gemm_amx" kind are skipped where the host has no AMX-INT8.

The per-kind costs and the timings behind them are written to `--out` (JSON) and logged; copy them into
`UNIT_COST_NS` with the CPU they were measured on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NEVER_US = "1e30"


class _WorkLog(logging.Handler):
    """Collects the `work` of every `parallel_if_worth` decision (its debug record's second argument)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.work: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.args and len(record.args) >= 2:
            self.work.append(int(record.args[1]))


def _target(amx: bool) -> Any:
    import tvm

    from qcompile.backends.tvm.targets import host_x86_target

    tgt = host_x86_target(1)
    if not amx:  # the VNNI / AVX2 kernels, as on a host without AMX
        tgt = dict(tgt, mattr=[*tgt.get("mattr", []), "-amx-tile"])
    return tvm.target.Target(tgt)


def _from_strategy(op: str, params: dict, inputs: list[tuple[tuple[int, ...], str]], consts: list[np.ndarray],
                   target: Any) -> Any:
    """The PrimFunc the x86 strategy emits for one OpCall."""
    import tvm
    from tvm import relax

    import qcompile.backends.tvm.schedules.x86  # noqa: F401  (registers the x86 strategies)
    from qcompile.backends.tvm.strategy import OpCall, select_strategy

    call = OpCall(op, dict(params, node="calib"), target)
    strat = select_strategy(call)
    bb = relax.BlockBuilder()
    vs = [relax.Var(f"a{i}", relax.TensorType(s, d)) for i, (s, d) in enumerate(inputs)]
    with bb.function("main", vs):
        with bb.dataflow():
            out = bb.emit_output(strat.emit(bb, call, [*vs, *(relax.const(c) for c in consts)]))
        bb.emit_func_output(out)
    funcs = [f for _, f in bb.get().functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    if len(funcs) != 1:
        raise RuntimeError(f"{op}: expected one kernel, got {len(funcs)}")
    return funcs[0]


def _gemm(mode: str, k: int, p: int, o: int) -> Callable[[Any], Any]:
    def make(target: Any) -> Any:
        from qcompile.backends.tvm.schedules.conv import GemmConv
        from qcompile.backends.tvm.schedules.x86.gemm import pointwise_conv_x86

        return pointwise_conv_x86(GemmConv(k, p, o), mode)

    return make


def _amx(k: int, p: int, o: int) -> Callable[[Any], Any]:
    def make(target: Any) -> Any:
        from qcompile.backends.tvm.schedules.conv import GemmConv
        from qcompile.backends.tvm.schedules.x86.amx import amx_plan, conv_amx

        return conv_amx(GemmConv(k, p, o), amx_plan(o, k, p, 1))

    return make


def _depthwise(c: int, h: int, k: int = 3) -> Callable[[Any], Any]:
    def make(target: Any) -> Any:
        from qcompile.backends.tvm.schedules.conv import DwConv
        from qcompile.backends.tvm.schedules.x86.depthwise import depthwise_kernel, target_dw_knobs

        p = (k - 1) // 2
        dw = DwConv(c, h, h, k, k, (1, 1), (p, p), (1, 1), 0, lo=0, hi=255, shift_min=34)
        return depthwise_kernel(dw, target_dw_knobs(h, target), target=target)

    return make


def _add(shape: tuple[int, ...]) -> Callable[[Any], Any]:
    def make(target: Any) -> Any:
        kw = dict(multiplier_a=1 << 29, multiplier_b=3 << 27, offset=1 << 29, shift=30, lo=0, hi=255)
        return _from_strategy("add", dict(kw, shapes=(shape, shape)), [(shape, "uint8")] * 2, [], target)

    return make


def _mean(shape: tuple[int, ...]) -> Callable[[Any], Any]:
    def make(target: Any) -> Any:
        kw = dict(multiplier=1 << 24, offset=1 << 29, shift=30, lo=0, hi=255)
        return _from_strategy("mean", dict(kw, shapes=(shape,)), [(shape, "uint8")], [], target)

    return make


def _linear(k: int, o: int) -> Callable[[Any], Any]:
    def make(target: Any) -> Any:
        rng = np.random.default_rng(0)
        w = rng.integers(-128, 128, (o, k)).astype(np.int8)
        consts = [w, np.zeros(o, np.int32), np.full(o, 1 << 26, np.int32), np.full(o, 36, np.int32)]
        params = {"x_shape": (1, k), "w_shape": (o, k), "out_shape": (1, o), "lo": 0, "hi": 255}
        return _from_strategy("linear_requant", params, [((1, k), "uint8")], consts, target)

    return make


def _naive_elementwise(n: int) -> Callable[[Any], Any]:
    """A float island's boundary as the default schedule builds it: dequantize, a hard-swish, quantize."""

    def make(target: Any) -> Any:
        from tvm import te, tirx

        from qcompile.backends.tvm.pipeline import schedule_primfunc

        x = te.placeholder((1, 16, n // 16), "uint8", name="x")

        def f(*i: Any) -> Any:
            v = (x[i].astype("float32") - 3.0) * 0.05
            v = v * tirx.max(tirx.min(v + 3.0, 6.0), 0.0) / 6.0
            return tirx.max(tirx.min(tirx.round(v / 0.05) + 3.0, 255.0), 0.0).astype("uint8")

        y = te.compute(x.shape, f, name="q")
        return schedule_primfunc(te.create_prim_func([x, y]))

    return make


def _naive_reduce(c: int, h: int, o: int = 16) -> Callable[[Any], Any]:
    """A float 3x3 conv (a float stem) as the default schedule builds it: a reduction block."""

    def make(target: Any) -> Any:
        from tvm import te

        from qcompile.backends.tvm.pipeline import schedule_primfunc

        x = te.placeholder((1, c, h + 2, h + 2), "float32", name="x")
        w = te.placeholder((o, c, 3, 3), "float32", name="w")
        rc, ry, rx = te.reduce_axis((0, c)), te.reduce_axis((0, 3)), te.reduce_axis((0, 3))
        y = te.compute((1, o, h, h), lambda n, f, i, j: te.sum(x[n, rc, i + ry, j + rx] * w[f, rc, ry, rx],
                                                                axis=[rc, ry, rx]), name="conv")
        return schedule_primfunc(te.create_prim_func([x, w, y]))

    return make


#: kind -> (small, large) kernel makers and whether they need AMX
CASES: dict[str, tuple[tuple[Callable[[Any], Any], Callable[[Any], Any]], bool]] = {
    "gemm_dot": ((_gemm("vnni512", 96, 196, 192), _gemm("vnni512", 96, 784, 192)), False),
    # MobileNetV2's 1x1 convs near the threshold (28x28 192->32, 14x14 576->96): large-K tiles cost less per MAC
    "gemm_amx": ((_amx(192, 784, 32), _amx(576, 196, 96)), True),
    "gemm_int16": ((_gemm("i16", 96, 196, 192), _gemm("i16", 96, 784, 192)), False),
    "gemv": ((_linear(640, 504), _linear(1280, 1000)), False),
    "depthwise": ((_depthwise(144, 14), _depthwise(144, 28)), False),
    "elementwise": (((_add((1, 24, 28, 28))), _add((1, 24, 56, 56))), False),
    "reduce": ((_mean((1, 320, 7, 7)), _mean((1, 1280, 7, 7))), False),
    "naive": ((_naive_elementwise(16 * 28 * 28), _naive_elementwise(16 * 56 * 56)), False),
    "naive_reduce": ((_naive_reduce(3, 28), _naive_reduce(3, 56)), False),
}


def _random_args(func: Any, rng: np.random.Generator) -> list[Any]:
    """Arguments of the PrimFunc's buffer shapes and dtypes: small non-negative integers (valid shifts, table
    indices and codes) or floats in [0, 1)."""
    import tvm

    out = []
    for buf in func.params:  # the parameters are the kernel's buffers
        shape = tuple(int(s) for s in buf.shape)
        dt = str(buf.dtype)
        a = rng.random(shape).astype(dt) if dt.startswith("float") else rng.integers(0, 8, shape).astype(dt)
        out.append(tvm.runtime.tensor(a))
    return out


def time_kernel(make: Callable[[Any], Any], target: Any, repeats: int) -> dict[str, float]:
    """Build `make(target)` serially, time it on one thread; its `work` and minimum time (us)."""
    import tvm

    from qcompile.backends.tvm.schedules import parallel as par

    handler = _WorkLog()
    plog = logging.getLogger(par.__name__)
    saved = (plog.level, os.environ.get(par.ENV_MIN_US), os.environ.get(par.ENV_MIN_WORK))
    plog.addHandler(handler)
    plog.setLevel(logging.DEBUG)
    plog.propagate = False  # collected, not printed
    os.environ[par.ENV_MIN_US] = NEVER_US
    os.environ.pop(par.ENV_MIN_WORK, None)
    try:
        func = make(target)
    finally:
        plog.removeHandler(handler)
        plog.setLevel(saved[0])
        plog.propagate = True
        for name, value in zip((par.ENV_MIN_US, par.ENV_MIN_WORK), saved[1:]):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if not handler.work:
        raise RuntimeError("the kernel's schedule made no parallel_if_worth decision")
    lib = tvm.compile(func.with_attr("global_symbol", "main"), target=target)
    args = _random_args(func, np.random.default_rng(0))
    mod = lib.mod if hasattr(lib, "mod") else lib  # tvm.compile returns an Executable wrapping the module
    ev = mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeats)
    return {"work": max(handler.work), "us": float(min(ev(*args).results)) * 1e6}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=list(CASES), help="kinds to measure (default: all)")
    ap.add_argument("--repeats", type=int, default=300, help="single calls per kernel (their minimum is kept)")
    ap.add_argument("--out", default="runs/parallel_costs.json")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from qcompile.backends.tvm.intrin.amx import enable_amx, has_amx
    from qcompile.backends.tvm.threads import ensure_thread_default
    from qcompile.bench.harness import _cpu_info
    from qcompile.errors import ConfigError
    from qcompile.utils.io import atomic_write_text

    unknown = sorted(set(a.kinds) - set(CASES))
    if unknown:
        raise ConfigError(f"--kinds: {unknown} not among {sorted(CASES)}")
    ensure_thread_default(1)
    amx_target = _target(amx=True)
    amx_ok = has_amx(amx_target) and enable_amx()
    rows: dict[str, Any] = {}
    load_before = "/".join(f"{v:.1f}" for v in os.getloadavg())
    for kind in a.kinds:
        (small, large), needs_amx = CASES[kind]
        if needs_amx and not amx_ok:
            log.info("%s: skipped, this host has no usable AMX-INT8", kind)
            continue
        target = amx_target if needs_amx else _target(amx=False)
        s, big = (time_kernel(m, target, a.repeats) for m in (small, large))
        ns = (big["us"] + s["us"]) * 1e3 / (big["work"] + s["work"])
        for r in (s, big):
            r["ns_per_unit"] = r["us"] * 1e3 / r["work"]
        rows[kind] = {"ns_per_unit": ns, "small": s, "large": big}
        log.info("%-12s %.4f ns/unit (small: %d units %.1f us = %.4f; large: %d units %.1f us = %.4f)",
                 kind, ns, s["work"], s["us"], s["ns_per_unit"], big["work"], big["us"], big["ns_per_unit"])
    res = {
        "unit_cost_ns": {k: r["ns_per_unit"] for k, r in rows.items()},
        "rows": rows,
        "meta": {
            "cpu": _cpu_info("model name") or platform.processor(),
            "mcpu": str(_target(amx=True).mcpu),
            "threads": 1,
            "load_before": load_before,
            "load_after": "/".join(f"{v:.1f}" for v in os.getloadavg()),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "repeats": a.repeats,
        },
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, json.dumps(res, indent=1))
    log.info("wrote %s (load %s / %s)", a.out, load_before, res["meta"]["load_after"])


if __name__ == "__main__":
    main()
