"""The peer harness: every runner on the same input, fixed threads, each in its own process.

Isolation (`qcompile.bench.workers`, the default `isolation="process"`): each runner is built and timed in
its own spawned worker process, because runtimes sharing one process share allocator, caches, affinity and
thread pools (measured: onnxruntime INT8 median 7.8 ms interleaved in one process vs 2.06 ms alone).
`isolation="none"` keeps every runner in this process (`timing.time_runners`).

Timing: interleaved rounds with a rotating order, and before each timed call a settle step (wait until no
thread of any worker or of this process spins, then `lead_in` untimed calls), because the spinning thread
pools of the previous runtime otherwise steal the cores of the next one. Per runner we keep every sample
and report the median and the 10th-90th percentile spread.

Host memory probe (`qcompile.bench.hostprobe`): at the start of every round, with no runner running, a timed
random-line gather and streaming read of a buffer larger than L2 in this process; its ns per line and GB/s per
round go into the result, and each runner's median over the rounds whose gather was within `quiet_pct` % of the
best is reported beside its median over all rounds, because the host under this VM can slow every runtime's
memory side 1.5-1.8x for minutes unseen by the CPU-load figures.

Fidelity (`qcompile.bench.fidelity`): relative L2 error and cosine similarity vs torch fp32 on the same
input, and for runners of our IntegerGraph the max |code difference| vs the reference executor.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qcompile.bench import peers
from qcompile.bench.fidelity import Fidelity, fidelity, output_scale
from qcompile.bench.hostprobe import HostProbe, ProbeReading, quiet_rounds, summary
from qcompile.bench.result import BenchResult, RunnerStats
from qcompile.bench.timing import Hook, Runner, time_runners
from qcompile.bench.workers import RunnerSpec, time_isolated
from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["PEERS", "INTEGER_PEERS", "ISOLATION", "BenchOptions", "BenchResult", "Hook", "Runner", "RunnerSpec",
           "RunnerStats", "peer_specs", "run_bench", "time_runners"]

PEERS = ("torch_fp32", "torch_ao_int8", "ort_fp32", "ort_int8_qdq", "ort_ours_qdq", "ort_ours_qoperator",
         "executorch_xnnpack_fp32", "executorch_xnnpack_int8", "openvino_fp32", "openvino_int8_qdq")
#: values of BenchOptions.isolation
ISOLATION = ("process", "none")
#: built-in peers that run our IntegerGraph (compared with the reference executor in codes)
INTEGER_PEERS = ("ort_ours_qdq", "ort_ours_qoperator")


@dataclass(frozen=True)
class BenchOptions:
    """Harness settings.

    threads: intra-op threads of every runtime; repeats: timed rounds (one timed call per runner per
    round); warmup: untimed calls per runner before the rounds; peers: built-in peers to build (subset
    of PEERS); calibration_batches: random batches for the int8 peers when no calibration data is given;
    settle_ms: at most this long before each timed call, wait until no thread of the process is
    spinning (the previous runtime's pool), 0 = no wait; lead_in: untimed calls of the runner right
    before its timed call, so it is timed with its own pool hot as in a user's loop; lead_in_ms: and untimed
    calls go on until this long has passed (`timing.lead_in_calls` says why); isolation: "process"
    (default: one spawned worker process per runner, `qcompile.bench.workers`) or "none" (every runner in
    this process, `timing.time_runners`); worker_timeout_s: longest a worker may take to build its runner
    or answer one request before its row is marked failed; host_probe_mb: MiB of the host memory probe's buffer
    (`qcompile.bench.hostprobe`, run at the start of every round; 0 = no probe); quiet_pct: a round is quiet
    when its probe's line rate is within this many % of the run's best (`hostprobe.quiet_rounds`).
    """

    threads: int = 2
    repeats: int = 30
    warmup: int = 3
    peers: tuple[str, ...] = PEERS
    calibration_batches: int = 4
    seed: int = 0
    settle_ms: float = 200.0
    lead_in: int = 1
    lead_in_ms: float = 50.0
    isolation: str = "process"
    worker_timeout_s: float = 600.0
    host_probe_mb: float = 16.0
    quiet_pct: float = 40.0

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("threads", self.threads, ">= 1")
        if self.repeats < 1:
            raise ConfigError("repeats", self.repeats, ">= 1")
        if self.warmup < 0:
            raise ConfigError("warmup", self.warmup, ">= 0")
        if not self.settle_ms >= 0:
            raise ConfigError("settle_ms", self.settle_ms, ">= 0 (milliseconds; 0 disables the settle wait)")
        if self.lead_in < 0:
            raise ConfigError("lead_in", self.lead_in, ">= 0")
        if not self.lead_in_ms >= 0:
            raise ConfigError("lead_in_ms", self.lead_in_ms,
                              ">= 0 (milliseconds of untimed calls before each timed call)")
        if self.isolation not in ISOLATION:
            raise ConfigError("isolation", self.isolation, ISOLATION,
                              "'process': one worker process per runner; 'none': every runner in this process")
        if not self.worker_timeout_s > 0:
            raise ConfigError("worker_timeout_s", self.worker_timeout_s, "> 0 (seconds a worker may take per request)")
        if not 0 <= self.host_probe_mb <= 1024:
            raise ConfigError("host_probe_mb", self.host_probe_mb,
                              "0..1024 (MiB read by the host memory probe each round; 0 turns it off)")
        if not 0 <= self.quiet_pct < 100:
            raise ConfigError("quiet_pct", self.quiet_pct,
                              "0 <= quiet_pct < 100 (% below the run's best probe that still counts as quiet)")
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown:
            raise ConfigError("peers", unknown, PEERS)


def _stats(name: str, s: list[float] | str, fid: Fidelity, isolation: str = "",
           quiet: Sequence[bool] | None = None) -> RunnerStats:
    """A row's statistics; `quiet` (one flag per round, as many as samples) adds the median over quiet rounds."""
    if isinstance(s, str):
        return RunnerStats(name, s, isolation=isolation)
    ms = np.asarray(s) * 1e3
    median_quiet, n_quiet = None, 0
    if quiet is not None and len(quiet) == len(ms) and any(quiet):
        q = ms[np.asarray(quiet, dtype=bool)]
        median_quiet, n_quiet = float(np.median(q)), len(q)
    return RunnerStats(name, "ok", float(np.median(ms)), float(np.percentile(ms, 10)), float(np.percentile(ms, 90)),
                       float(ms.min()), float(ms.mean()), len(ms), fid.rel_l2, fid.cosine, fid.max_code_diff,
                       tuple(float(v) for v in ms), isolation, median_quiet_ms=median_quiet, n_quiet=n_quiet)


def peer_specs(model: nn.Module, x: np.ndarray, options: BenchOptions, workdir: Path,
               integer_graph: object | None = None,
               calibration: Sequence[np.ndarray] | None = None) -> tuple[dict[str, RunnerSpec], dict[str, str]]:
    """Recipes (`RunnerSpec`) of the built-in peers named in `options.peers`, and the reason for each one
    that cannot even be set up. The ONNX files (float export, our IntegerGraph exports) are written here into
    `workdir`; everything else (torch.ao conversion, onnxruntime quantization, ExecuTorch export, sessions)
    happens in the spec's factory, i.e. in the process that will run the peer."""
    rng = np.random.default_rng(options.seed)
    calib = list(calibration) if calibration is not None else [
        rng.standard_normal(x.shape).astype(np.float32) for _ in range(options.calibration_batches)]
    specs: dict[str, RunnerSpec] = {}
    missing: dict[str, str] = {}
    want = set(options.peers)
    t = options.threads
    if "torch_fp32" in want:
        specs["torch_fp32"] = RunnerSpec("torch_fp32", peers.torch_fp32, (model,))
    if "torch_ao_int8" in want:
        specs["torch_ao_int8"] = RunnerSpec("torch_ao_int8", peers.torch_ao_int8, (model, calib))
    onnx_peers = ("ort_fp32", "ort_int8_qdq", "openvino_fp32", "openvino_int8_qdq")
    if want.intersection(onnx_peers):
        float_onnx = workdir / "float.onnx"
        try:
            peers.export_float_onnx(model, x, float_onnx)
            if "ort_fp32" in want:
                specs["ort_fp32"] = RunnerSpec("ort_fp32", peers.ort_runner, (float_onnx, t))
            if "ort_int8_qdq" in want:
                specs["ort_int8_qdq"] = RunnerSpec("ort_int8_qdq", peers.ort_int8_static,
                                                   (float_onnx, calib, workdir / "int8_qdq.onnx", t))
            if "openvino_fp32" in want:
                specs["openvino_fp32"] = RunnerSpec("openvino_fp32", peers.openvino_runner, (float_onnx, t))
            if "openvino_int8_qdq" in want:
                # its own file (workers run concurrently), quantized by the same deterministic recipe
                specs["openvino_int8_qdq"] = RunnerSpec("openvino_int8_qdq", peers.openvino_int8_qdq,
                                                        (float_onnx, calib, workdir / "ov_int8_qdq.onnx", t))
        except Exception as e:
            for n in onnx_peers:
                if n in want:
                    missing[n] = f"unavailable: float ONNX export failed: {type(e).__name__}: {e}"
    for fmt in ("qdq", "qoperator"):
        name = f"ort_ours_{fmt}"
        if name not in want:
            continue
        if integer_graph is None:
            missing[name] = "unavailable: no IntegerGraph given"
            continue
        try:
            path = peers.export_ours(integer_graph, workdir / f"ours_{fmt}.onnx", fmt, x.shape)
            specs[name] = RunnerSpec(name, peers.ort_float32, (path, t))
        except Exception as e:
            missing[name] = f"unavailable: {_first_line(e)}"
    if "executorch_xnnpack_fp32" in want:
        specs["executorch_xnnpack_fp32"] = RunnerSpec("executorch_xnnpack_fp32", peers.executorch_xnnpack,
                                                      (model, x, t))
    if "executorch_xnnpack_int8" in want:
        specs["executorch_xnnpack_int8"] = RunnerSpec("executorch_xnnpack_int8", peers.executorch_xnnpack,
                                                      (model, x, t, calib))
    for name, why in missing.items():
        log.warning("peer %s %s", name, why)
    # rows (and the rounds' rotation) follow PEERS' order, whatever order the recipes were made in
    return {n: specs[n] for n in PEERS if n in specs}, missing


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _build_in_process(specs: Mapping[str, RunnerSpec | Runner], builtin: Collection[str]
                      ) -> tuple[dict[str, Runner], dict[str, str]]:
    """Build every spec in this process (isolation "none"); a failed build becomes the row's status
    ("unavailable: ..." for a missing package or a built-in peer, "failed: ..." for a user spec)."""
    runners: dict[str, Runner] = {}
    missing: dict[str, str] = {}
    for name, r in specs.items():
        if not isinstance(r, RunnerSpec):
            runners[name] = r
            continue
        try:
            runners[name] = r.build()
        except peers.MissingPeer as e:
            missing[name] = f"unavailable: {e}"
        except Exception as e:
            missing[name] = f"{'unavailable' if name in builtin else 'failed'}: {_first_line(e)}"
        if name in missing:
            log.warning("runner %s %s", name, missing[name])
    return runners, missing


def run_bench(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    *,
    integer_graph: object | None = None,
    runners: Mapping[str, RunnerSpec | Runner] | None = None,
    graph_runners: Collection[str] = (),
    hook: Hook | None = None,
    options: BenchOptions | None = None,
    calibration: Sequence[np.ndarray] | None = None,
    out_dir: str | os.PathLike | None = None,
    title: str = "qcompile peer comparison",
    extra_meta: Mapping[str, Any] | None = None,
    eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    fake_quant: nn.Module | None = None,
) -> BenchResult:
    """Time the peers and the given runners (e.g. qcompile TVM lowerings) on one subnet.

    model: the float subnet (nn.Module, eval); x: one input batch (NCHW float32);
    integer_graph: its IntegerGraph, for our ONNX export and the code-difference column (optional);
    runners: extra rows: `RunnerSpec`s (with `options.isolation="process"` each runs in its own worker
    process, e.g. `peers.tvm_spec(lowered, name)`) or plain numpy callables (timed in this process, flagged
    "in-process"); graph_runners: which of `runners` execute `integer_graph` (their output is compared
    with the reference executor in codes); hook: called after every timed call; extra_meta: merged into
    the result's meta. Writes `bench.json`, `bench.md`, `bench.png` into `out_dir` when given.
    eval_set: `(images, labels)` (e.g. the real test split, at the input's resolution): after timing, every
    runner classifies all of them (in batches shaped like `x`), giving its top-1 accuracy; with `fake_quant`
    (the fake-quant subnet the integer runners were made from) also its top-1 agreement with that model.
    """
    opts = options or BenchOptions()
    runners = dict(runners or {})
    unknown = [n for n in graph_runners if n not in runners]
    if unknown:
        raise ConfigError("graph_runners", unknown, f"names of the given runners {list(runners)}")
    if graph_runners and integer_graph is None:
        raise ConfigError("graph_runners", list(graph_runners), "empty without an integer_graph",
                          "pass the IntegerGraph the runners execute")
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    eval_inputs, eval_labels = _eval_batches(eval_set, x.shape)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    waits: list[float] = []
    readings: list[ProbeReading] = []
    before_round: Callable[[int], object] | None = None
    if opts.host_probe_mb > 0:
        probe = HostProbe(opts.host_probe_mb)

        def probe_round(r: int) -> None:
            readings.append(probe())

        before_round = probe_round
    cpu0 = _cpu_snapshot()
    try:
        with tempfile.TemporaryDirectory(prefix="qcompile-bench-") as tmp:
            specs, missing = peer_specs(model, x, opts, Path(tmp), integer_graph, calibration)
            rows: dict[str, RunnerSpec | Runner] = dict(specs)
            for name, fn in runners.items():
                if name in PEERS:
                    raise ConfigError("runners", name, "names not used by the built-in peers", f"peers: {PEERS}")
                rows[name] = fn
            if opts.isolation == "none":
                built, failed = _build_in_process(rows, PEERS)
                missing.update(failed)
                samples = time_runners(built, x, opts.repeats, opts.warmup, hook, settle_s=opts.settle_ms / 1e3,
                                       lead_in=opts.lead_in, lead_in_s=opts.lead_in_ms / 1e3, settle_log=waits,
                                       before_round=before_round)
                outputs = {n: (lambda n=n: built[n](x)) for n in built}
                workers = {n: {"isolation": "none", "pid": os.getpid(), "threads": opts.threads} for n in built}
                predictions = _predict_in_process(built, eval_inputs)
            else:
                run = time_isolated(rows, x, opts.repeats, opts.warmup, hook, threads=opts.threads,
                                    settle_s=opts.settle_ms / 1e3, lead_in=opts.lead_in,
                                    lead_in_s=opts.lead_in_ms / 1e3,
                                    timeout_s=opts.worker_timeout_s, builtin=frozenset(PEERS),
                                    eval_inputs=eval_inputs, before_round=before_round)
                samples, waits, workers = run.samples, run.settle_waits, run.workers
                predictions = run.predictions
                outputs = {n: (lambda y=y: y) for n, y in run.outputs.items()}
            quiet = quiet_rounds([r.line_ns for r in readings], opts.quiet_pct) if readings else None
            stats = _fidelity_stats(model, x, integer_graph, outputs, missing, samples,
                                    [*opts.peers, *runners], {*INTEGER_PEERS, *graph_runners}, workers, quiet)
    finally:
        torch.set_num_threads(prev_threads)
    meta = _environment(opts, x, title, waits, integer_graph)
    if eval_inputs is not None:
        stats, meta["eval_set"] = _accuracy_stats(stats, predictions, eval_labels, eval_set[0], fake_quant)
    meta["workers"] = workers
    if readings:
        meta["host_probe"] = summary(readings, opts.quiet_pct, opts.host_probe_mb)
    meta.update(_other_load(cpu0, _cpu_snapshot()))
    meta.update(extra_meta or {})
    result = BenchResult(tuple(stats), meta)
    if out_dir is not None:
        from qcompile.bench.report import write_report

        write_report(result, out_dir)
    return result


def _fidelity_stats(model: nn.Module, x: np.ndarray, ig: Any, outputs: Mapping[str, Callable[[], np.ndarray]],
                    missing: Mapping[str, str], samples: Mapping[str, list[float] | str], order: Sequence[str],
                    integer_names: Collection[str], workers: Mapping[str, Mapping[str, Any]],
                    quiet: Sequence[bool] | None = None) -> list[RunnerStats]:
    """RunnerStats per runner in `order`, with fidelity vs torch fp32 and (integer runners) the reference;
    `outputs[name]()` gives the runner's output on `x` (fetched from its worker, or computed here); `quiet`:
    the host probe's quiet flag per round."""
    with torch.inference_mode():
        fp32 = model.eval()(torch.from_numpy(x)).numpy()
    ref = scale = None
    # a synthetic IntegerGraph (random weights of its own) computes another function than `model`
    comparable = not _is_synthetic(ig)
    if ig is not None:
        ref = ig(torch.from_numpy(x)).detach().numpy()
        scale = output_scale(ig)
    stats = []
    for name in order:
        isolation = str(workers.get(name, {}).get("isolation", ""))
        if name in missing:
            stats.append(RunnerStats(name, missing[name], isolation=isolation))
            continue
        fid = Fidelity()
        if isinstance(samples[name], list):
            y = outputs[name]()
            is_int = name in integer_names
            fid = fidelity(y, fp32 if (comparable or not is_int) else None, ref if is_int else None, scale)
        stats.append(_stats(name, samples[name], fid, isolation, quiet))
    return stats


def _eval_batches(eval_set: tuple[np.ndarray, np.ndarray] | None, shape: tuple[int, ...]):
    """The evaluation images as a stack of batches shaped like the timed input (last one zero-padded)."""
    if eval_set is None:
        return None, None
    images, labels = (np.asarray(a) for a in eval_set)
    if images.ndim != len(shape) or tuple(images.shape[1:]) != tuple(shape[1:]) or len(images) != len(labels):
        raise ConfigError("eval_set", f"images {images.shape}, labels {labels.shape}",
                          f"images (N, {', '.join(map(str, shape[1:]))}) like the input, and N labels")
    b = shape[0]
    n = len(images)
    padded = np.zeros(((n + b - 1) // b * b, *shape[1:]), np.float32)
    padded[:n] = images
    return padded.reshape(-1, *shape), labels.astype(np.int64)


def _predict_in_process(built: Mapping[str, Runner], eval_inputs: np.ndarray | None) -> dict[str, np.ndarray]:
    if eval_inputs is None:
        return {}
    out = {}
    for n, fn in built.items():
        try:
            out[n] = np.stack([np.asarray(fn(xb)) for xb in eval_inputs])
        except Exception as e:  # a row that cannot classify keeps its timings
            log.warning("runner %s: no predictions on the evaluation set: %s", n, e)
    return out


def _accuracy_stats(stats: list[RunnerStats], predictions: Mapping[str, np.ndarray], labels: np.ndarray,
                    images: np.ndarray, fake_quant: nn.Module | None) -> tuple[list[RunnerStats], dict[str, Any]]:
    """Top-1 accuracy of every runner on the evaluation set and its top-1 agreement with the fake-quant model."""
    n = len(labels)
    fq_top = None
    meta: dict[str, Any] = {"n": n}
    if fake_quant is not None:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            fq_top = torch.cat([fake_quant.eval()(x[i : i + 256]) for i in range(0, n, 256)]).argmax(1).numpy()
        meta["fake_quant_top1"] = float((fq_top == labels).mean())
    out = []
    for s in stats:
        y = predictions.get(s.name)
        if y is None:
            out.append(s)
            continue
        top = np.asarray(y, dtype=np.float64).reshape(-1, y.shape[-1])[:n].argmax(1)
        agree = None if fq_top is None else float((top == fq_top).mean())
        out.append(replace(s, top1=float((top == labels).mean()), agree_fake_quant=agree))
    return out, meta


def _output_op(ig: Any) -> str | None:
    """Name of the reference op whose value the IntegerGraph returns (e.g. "dequantize_acc")."""
    if ig is None:
        return None
    out = next(n for n in ig.graph.nodes if n.op == "output").args[0]
    return getattr(getattr(out, "target", None), "__name__", None)


def _is_synthetic(ig: Any) -> bool:
    """Whether `ig` was written by `synthetic_integer_graph` (random weights of its own)."""
    return ig is not None and bool(getattr(ig, "program_meta", {}).get("synthetic", False))


def _cpu_snapshot() -> dict[str, float] | None:
    """Wall clock, the machine's busy and stolen CPU seconds (/proc/stat, all cores) and this process's own CPU
    seconds including its reaped children (the workers); None where /proc/stat is missing (not Linux)."""
    import resource

    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    v = [int(f) / hz for f in fields]
    own = sum(getattr(resource.getrusage(who), a) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for a in ("ru_utime", "ru_stime"))
    # user nice system idle iowait irq softirq steal ...
    return {"wall": time.monotonic(), "busy": v[0] + v[1] + v[2] + v[5] + v[6], "steal": v[7] if len(v) > 7 else 0.0,
            "own": own}


def _other_load(a: dict | None, b: dict | None) -> dict[str, float]:
    """Cores' worth of CPU that *other* processes used during the run (machine busy time minus the harness's and
    its workers' own), and the hypervisor's steal: what actually competed with the rows. The load average
    cannot tell: it counts the benchmark's own threads."""
    if a is None or b is None or b["wall"] <= a["wall"]:
        return {}
    wall = b["wall"] - a["wall"]
    others = max(0.0, (b["busy"] - a["busy"]) - (b["own"] - a["own"])) / wall
    return {"other_load_cores": round(others, 3), "steal_cores": round((b["steal"] - a["steal"]) / wall, 3)}


def _environment(opts: BenchOptions, x: np.ndarray, title: str, waits: Sequence[float],
                 ig: Any) -> dict[str, Any]:
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    try:
        from importlib.metadata import version

        et_version: str | None = version("executorch")
    except Exception:
        et_version = None
    try:
        ov_version: str | None = version("openvino")
    except Exception:
        ov_version = None
    w = np.asarray(waits, dtype=np.float64) * 1e3 if len(waits) else np.zeros(1)
    synthetic = _is_synthetic(ig)
    return {
        "title": title,
        "threads": opts.threads,
        "repeats": opts.repeats,
        "warmup": opts.warmup,
        "settle_ms": opts.settle_ms,
        "host_probe_mb": opts.host_probe_mb,
        "quiet_pct": opts.quiet_pct,
        "lead_in": opts.lead_in,
        "lead_in_ms": opts.lead_in_ms,
        "settle_waited_ms": {"median": float(np.median(w)), "max": float(w.max())},
        "input_shape": list(x.shape),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "executorch": et_version,
        "openvino": ov_version,
        "torch_quantized_engine": torch.backends.quantized.engine,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": _cpu_info("model name"),
        "cpu_flags": sorted(set((_cpu_info("flags") or "").split()) & _FLAGS_OF_INTEREST),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "synthetic_integer_graph": synthetic,
        "graph_output_op": _output_op(ig),
        "isolation": opts.isolation,
        "note": (("each runner in its own spawned worker process (plain callables: in the harness's process, "
                  "flagged in-process); " if opts.isolation == "process" else "every runner in one process; ")
                 + "median and 10th-90th percentile of per-call wall time, timed around the call alone; rounds "
                   "interleave all runners; before each timed call the harness waits (at most settle_ms) until "
                   "no thread of " + ("any worker or of the harness" if opts.isolation == "process"
                                      else "the process") + " spins, then makes lead_in untimed calls of that "
                   "runner"),
        "fidelity": ("rel_l2 = ||y - y_fp32|| / ||y_fp32||, cosine vs torch fp32 on the same input"
                     + ("; not given for IntegerGraph runners: the graph is synthetic (its own random weights)"
                        if synthetic else "")
                     + "; max_code_diff: max |y - reference executor| in output codes (float outputs divided "
                       "by their dequantize scale)"),
    }


#: the vector extensions that decide int8 / fp32 kernel speed (ARCHITECTURE.md's machine: avx2 and fma only)
_FLAGS_OF_INTEREST = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8"}


def _cpu_info(key: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
