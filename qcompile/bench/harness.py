"""Interleaved latency harness: every runner, one process, the same input, fixed threads (issue 8).

Rounds interleave the runners (the order rotates every round) so slow drifts of a shared machine
(frequency, other jobs) hit every runner alike; per runner we keep every sample and report the
median and the 10th-90th percentile spread.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qcompile.bench import peers
from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]
#: called after every timed call: (runner name, round index, seconds)
Hook = Callable[[str, int, float], None]

PEERS = ("torch_fp32", "torch_ao_int8", "ort_fp32", "ort_int8_qdq", "ort_ours_qdq", "ort_ours_qoperator")


@dataclass(frozen=True)
class BenchOptions:
    """threads: intra-op threads for torch and onnxruntime; repeats: timed rounds; warmup: untimed calls
    per runner; peers: which built-in peers to build (subset of PEERS); calibration_batches: random
    batches for the int8 peers when no calibration data is given."""

    threads: int = 2
    repeats: int = 30
    warmup: int = 3
    peers: tuple[str, ...] = PEERS
    calibration_batches: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("threads", self.threads, ">= 1")
        if self.repeats < 1:
            raise ConfigError("repeats", self.repeats, ">= 1")
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown:
            raise ConfigError("peers", unknown, PEERS)


@dataclass(frozen=True)
class RunnerStats:
    """Latency of one runner in milliseconds (None when the runner could not be built or failed)."""

    name: str
    status: str  # "ok" or "unavailable: <reason>"
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    mean_ms: float | None = None
    n: int = 0
    top1_agrees_with_fp32: float | None = None
    samples_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class BenchResult:
    runners: tuple[RunnerStats, ...]
    meta: dict = field(default_factory=dict)

    def by_name(self) -> dict[str, RunnerStats]:
        return {r.name: r for r in self.runners}

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "runners": [asdict(r) for r in self.runners]}


def time_runners(runners: Mapping[str, Runner], x: np.ndarray, repeats: int, warmup: int,
                 hook: Hook | None = None) -> dict[str, list[float] | str]:
    """Interleaved timing; returns seconds per call per runner, or the error text of a runner that failed."""
    names = list(runners)
    samples: dict[str, list[float] | str] = {n: [] for n in names}
    for n in names:
        try:
            for _ in range(warmup):
                runners[n](x)
        except Exception as e:  # a broken peer is recorded, the others still run
            samples[n] = f"failed: {type(e).__name__}: {e}"
            log.warning("runner %s failed: %s", n, e)
    live = [n for n in names if isinstance(samples[n], list)]
    for r in range(repeats):
        k = r % max(1, len(live))
        for n in live[k:] + live[:k]:
            t0 = time.perf_counter()
            runners[n](x)
            dt = time.perf_counter() - t0
            samples[n].append(dt)  # type: ignore[union-attr]
            if hook is not None:
                hook(n, r, dt)
    return samples


def _stats(name: str, s: list[float] | str, agree: float | None) -> RunnerStats:
    if isinstance(s, str):
        return RunnerStats(name, s)
    ms = np.asarray(s) * 1e3
    return RunnerStats(name, "ok", float(np.median(ms)), float(np.percentile(ms, 10)), float(np.percentile(ms, 90)),
                       float(ms.min()), float(ms.mean()), len(ms), agree, tuple(float(v) for v in ms))


def build_peers(model: nn.Module, x: np.ndarray, options: BenchOptions, workdir: Path,
                integer_graph: object | None = None,
                calibration: Sequence[np.ndarray] | None = None) -> tuple[dict[str, Runner], dict[str, str]]:
    """The built-in peer runners named in `options.peers`, and the reason for each one that is unavailable."""
    rng = np.random.default_rng(options.seed)
    calib = list(calibration) if calibration is not None else [
        rng.standard_normal(x.shape).astype(np.float32) for _ in range(options.calibration_batches)]
    runners: dict[str, Runner] = {}
    missing: dict[str, str] = {}
    float_onnx = workdir / "float.onnx"

    def attempt(name: str, make: Callable[[], Runner]) -> None:
        if name not in options.peers:
            return
        try:
            runners[name] = make()
        except Exception as e:
            missing[name] = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("peer %s unavailable: %s", name, e)

    attempt("torch_fp32", lambda: peers.torch_fp32(model))
    attempt("torch_ao_int8", lambda: peers.torch_ao_int8(model, calib))
    if {"ort_fp32", "ort_int8_qdq"} & set(options.peers):
        try:
            peers.export_float_onnx(model, x, float_onnx)
        except Exception as e:
            for n in ("ort_fp32", "ort_int8_qdq"):
                missing[n] = f"unavailable: float ONNX export failed: {type(e).__name__}: {e}"
    if float_onnx.exists():
        attempt("ort_fp32", lambda: peers.ort_runner(float_onnx, options.threads))
        attempt("ort_int8_qdq", lambda: peers.ort_int8_static(float_onnx, calib, workdir / "int8_qdq.onnx",
                                                              options.threads))
    for fmt in ("qdq", "qoperator"):
        name = f"ort_ours_{fmt}"
        if name in options.peers and integer_graph is None:
            missing[name] = "unavailable: no IntegerGraph given"
        elif integer_graph is not None:
            attempt(name, lambda fmt=fmt: peers.ort_ours(integer_graph, workdir / f"ours_{fmt}.onnx", fmt,
                                                         options.threads, x.shape))
    return runners, missing


def run_bench(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    *,
    integer_graph: object | None = None,
    runners: Mapping[str, Runner] | None = None,
    hook: Hook | None = None,
    options: BenchOptions | None = None,
    calibration: Sequence[np.ndarray] | None = None,
    out_dir: str | os.PathLike | None = None,
    title: str = "qcompile peer comparison",
) -> BenchResult:
    """Time the peers and the given runners (e.g. qcompile TVM lowerings) on one subnet.

    model: the float subnet (nn.Module, eval); x: one input batch (NCHW float32);
    integer_graph: its IntegerGraph for our ONNX export (optional); runners: extra named
    numpy callables timed with the peers; hook: called after every timed call.
    Writes `bench.json`, `bench.md`, `bench.png` into `out_dir` when given.
    """
    opts = options or BenchOptions()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="qcompile-bench-") as tmp:
            built, missing = build_peers(model, x, opts, Path(tmp), integer_graph, calibration)
            for name, fn in (runners or {}).items():
                if name in built:
                    raise ConfigError("runners", name, "names not used by the built-in peers", f"peers: {PEERS}")
                built[name] = fn
            samples = time_runners(built, x, opts.repeats, opts.warmup, hook)
            ref = built["torch_fp32"](x) if "torch_fp32" in built else None
            stats = []
            for name in [*opts.peers, *(runners or {})]:
                if name in missing:
                    stats.append(RunnerStats(name, missing[name]))
                    continue
                agree = None
                if ref is not None and isinstance(samples[name], list):
                    y = np.asarray(built[name](x)).reshape(len(x), -1)
                    if y.shape == ref.reshape(len(x), -1).shape:
                        agree = float(np.mean(y.argmax(1) == ref.reshape(len(x), -1).argmax(1)))
                stats.append(_stats(name, samples[name], agree))
    finally:
        torch.set_num_threads(prev_threads)
    meta = _environment(opts, x, title)
    result = BenchResult(tuple(stats), meta)
    if out_dir is not None:
        from qcompile.bench.report import write_report

        write_report(result, out_dir)
    return result


def _environment(opts: BenchOptions, x: np.ndarray, title: str) -> dict[str, Any]:
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "title": title,
        "threads": opts.threads,
        "repeats": opts.repeats,
        "warmup": opts.warmup,
        "input_shape": list(x.shape),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "torch_quantized_engine": torch.backends.quantized.engine,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "note": "median and 10th-90th percentile of per-call wall time; rounds interleave all runners",
    }
