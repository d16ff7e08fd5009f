"""Peer runners for the harness: each turns a float subnet (or our IntegerGraph) into a numpy callable.

torch fp32 eager; torch.ao int8 (FX graph mode, x86 backend, per-channel weights: the 8-bit
policy only); onnxruntime fp32 on the TorchScript ONNX export; onnxruntime int8 from
`quantize_static` (QDQ, uint8 activations, int8 weights, MinMax calibration) on that float
model; onnxruntime on our own export of the IntegerGraph (`qcompile.backends.onnx`); ExecuTorch
with the XNNPACK delegate, fp32 and int8 (PT2E `XNNPACKQuantizer`, per-channel symmetric weights);
OpenVINO's CPU plugin (oneDNN) on the same float ONNX file (fp32) and on onnxruntime's QDQ model of it (int8:
OpenVINO's low-precision transformations turn the QDQ pairs into int8 convolutions, AMX-INT8 / VNNI where the
host has them).
A factory that cannot build its runner raises; the harness records the reason and goes on
(`MissingPeer`: the package is not installed, its message is the install hint).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qcompile.bench.workers import RunnerSpec
from qcompile.errors import ConfigError, QcompileError

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]

#: what to install for the ExecuTorch peers (ARCHITECTURE.md, "Environment facts"): --no-deps because
#: executorch's full requirement list (coremltools, pandas, hydra, ...) is not needed to export and run
EXECUTORCH_HINT = ("pip install -c constraints.txt --no-deps executorch==1.5.1 torchao==0.18.0 ruamel.yaml pyyaml "
                   "tabulate (or: pip install -c constraints.txt -e .[bench])")

OPENVINO_HINT = "pip install -c constraints.txt openvino==2026.4.1 (or: pip install -c constraints.txt -e .[bench])"


class MissingPeer(QcompileError, ImportError):
    """A peer's package is not installed; the message says what to install."""


def torch_fp32(model: nn.Module) -> Runner:
    """Eager float32 forward under inference mode."""
    model = model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def torch_ao_int8(model: nn.Module, calibration: Sequence[np.ndarray]) -> Runner:
    """torch.ao FX post-training static quantization with the x86 backend (8-bit policy only)."""
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    example = (torch.from_numpy(calibration[0]),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates torch.ao.quantization in favour of torchao
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), example)
        with torch.inference_mode():
            for batch in calibration:
                prepared(torch.from_numpy(batch))
        qmodel = convert_fx(prepared)
    return torch_fp32(qmodel)


def export_float_onnx(model: nn.Module, example: np.ndarray, path: str | Path) -> Path:
    """The float subnet as ONNX (TorchScript exporter: the dynamo one needs onnxscript), opset 17, IR 8."""
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.from_numpy(example),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = min(m.ir_version, 8)
    path = Path(path)
    onnx.save(m, path)
    return path


def ort_runner(path: str | Path, threads: int) -> Runner:
    from qcompile.backends.onnx import OnnxRunner

    return OnnxRunner(path, threads=threads)


def ort_int8_static(float_onnx: str | Path, calibration: Sequence[np.ndarray], path: str | Path, threads: int,
                    per_channel: bool = False) -> Runner:
    """onnxruntime on its own QDQ model of `float_onnx` (`ort_qdq_model`), a session."""
    return ort_runner(ort_qdq_model(float_onnx, calibration, path, per_channel), threads)


def ort_qdq_model(float_onnx: str | Path, calibration: Sequence[np.ndarray], path: str | Path,
                  per_channel: bool = False) -> Path:
    """onnxruntime `quant_pre_process` + `quantize_static` (QDQ, U8 activations, S8 weights, MinMax) into `path`.

    Deterministic: the same float model and calibration batches give the same QDQ model."""
    from qcompile.backends.onnx import require_onnxruntime

    require_onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": b} for b in calibration])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    src = Path(path).with_name(Path(path).stem + "_pre.onnx")
    try:  # onnxruntime's recommended pre-processing (shape inference, BN folding) before quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(float_onnx), str(src))
    except Exception as e:
        log.warning("quant_pre_process failed (%s); quantizing the raw export", e)
        src = Path(float_onnx)
    quantize_static(str(src), str(path), _Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel)
    return Path(path)


def ort_float32(path: str | Path, threads: int) -> Runner:
    """onnxruntime on an ONNX file, output cast to float32 like the peers (our IntegerGraph exports)."""
    runner = ort_runner(path, threads)
    return lambda x: np.asarray(runner(x), dtype=np.float32)


def export_ours(integer_graph: object, path: str | Path, fmt: str, batch_shape: Sequence[int]) -> Path:
    """`export_onnx(integer_graph, format=fmt)` at the batch's shape (`qcompile.backends.onnx`).

    The file runs here, so its weight storage is chosen for this host: int8 where onnxruntime's u8 x s8 GEMM
    is exact (VNNI x86, ARM: the fast kernels), else "auto" (uint8 for layers whose int8 codes could saturate
    `vpmaddubsw`'s int16 pairs; docs/qdq.md)."""
    from qcompile.backends.onnx import export_onnx
    from qcompile.backends.onnx.session import u8s8_exact_host

    weights = "int8" if u8s8_exact_host() else "auto"
    return Path(export_onnx(integer_graph, path, format=fmt, input_shape=tuple(batch_shape), weights=weights))


def _require_openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise MissingPeer(f"{e.name or e} is not installed: {OPENVINO_HINT}") from e
    return openvino


def openvino_compile(path: str | Path, threads: int, precision: str | None = "f32",
                     extra_config: dict[str, Any] | None = None) -> Any:
    """OpenVINO's compiled model of an ONNX file as `openvino_runner` runs it (latency hint, one stream, `threads`
    inference threads, `precision` as there); `extra_config` is merged in (e.g. `{"PERF_COUNT": "YES"}` for the
    per-node profile that `benchmarks.mbv2_vs_openvino` reads)."""
    ov = _require_openvino()
    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": int(threads)}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    config.update(extra_config or {})
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def openvino_runner(path: str | Path, threads: int, precision: str | None = "f32") -> Runner:
    """OpenVINO's CPU plugin on an ONNX file: latency hint, one stream, `threads` inference threads.

    precision: `INFERENCE_PRECISION_HINT` for the parts that stay in floating point ("f32": the fp32 row
    really runs fp32; on AMX hosts OpenVINO's default is bf16); None keeps OpenVINO's default (the int8 row:
    how an OpenVINO user runs a quantized model). One infer request, reused per call, as in a serving loop.
    """
    request = openvino_compile(path, threads, precision).create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer([np.ascontiguousarray(x, dtype=np.float32)])
        # copy: the output tensor is the request's buffer, overwritten by the next call
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    return run


def openvino_int8_qdq(float_onnx: str | Path, calibration: Sequence[np.ndarray], path: str | Path,
                      threads: int) -> Runner:
    """OpenVINO on onnxruntime's QDQ model of `float_onnx` (`ort_int8_static`'s recipe: the same calibration
    batches and MinMax ranges, so the same quantized model the `ort_int8_qdq` row runs)."""
    _require_openvino()
    return openvino_runner(ort_qdq_model(float_onnx, calibration, path), threads, precision=None)


def _require_executorch() -> None:
    try:
        import executorch.backends.xnnpack.partition.xnnpack_partitioner  # noqa: F401
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
    except ImportError as e:
        raise MissingPeer(f"{e.name or e} is not installed: {EXECUTORCH_HINT}") from e


def executorch_xnnpack(model: nn.Module, example: np.ndarray, threads: int,
                       calibration: Sequence[np.ndarray] | None = None) -> Runner:
    """ExecuTorch 1.5 program lowered with the XNNPACK partitioner, run by ExecuTorch's Python runtime.

    fp32 when `calibration` is None; else int8: `torch.export` -> PT2E `prepare_pt2e` with
    `XNNPACKQuantizer` (per-channel symmetric int8 weights, int8 activations) -> calibration batches ->
    `convert_pt2e` -> export again -> XNNPACK delegate. The program is static-shaped: `example`'s shape.
    `threads` sizes ExecuTorch's process-wide XNNPACK thread pool (reset only when its size differs: a
    reset frees the pool that methods loaded before still use).
    """
    _require_executorch()
    import copy

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    ex = (torch.from_numpy(np.ascontiguousarray(example)),)
    m = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if calibration is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(torch.export.export(m, ex).module(), quantizer)
            with torch.no_grad():
                for batch in calibration:
                    prepared(torch.from_numpy(np.ascontiguousarray(batch)))
            m = convert_pt2e(prepared)
        program = to_edge_transform_and_lower(torch.export.export(m, ex),
                                              partitioner=[XnnpackPartitioner()]).to_executorch()
    if _threadpool_get_thread_count() != int(threads):
        # process-wide pool; methods loaded earlier keep pointers into it, so reset only when it must change
        _unsafe_reset_threadpool(int(threads))
    buffer = program.buffer  # the loaded program points into these bytes: the closure keeps them alive
    loaded = Runtime.get().load_program(buffer)
    method = loaded.load_method("forward")

    def run(x: np.ndarray) -> np.ndarray:
        _ = buffer, loaded
        # copy: the output may live in the program's planned memory, overwritten by the next call
        return method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy().copy()

    return run


def tvm_runners(ig: Any, mcpus: Sequence[str], threads: int,
                input_shape: tuple[int, ...] | None = None, *, tuned: bool = False, trials: int | None = None,
                lowered_dir: str | Path | None = None,
                batch_modes: Sequence[str] = ("static",)) -> tuple[dict[str, RunnerSpec], dict[str, Any]]:
    """qcompile TVM lowerings of `ig`, named `qcompile_tvm_<mcpu>_untuned` (and with `tuned`, also
    `qcompile_tvm_<mcpu>_tuned`), as `RunnerSpec`s (`tvm_spec`: each runs in its own worker process), and their
    targets.

    Untuned rows are lowered with an empty tuning database, so they show the default schedules even where the
    persistent database (`$QCOMPILE_CACHE/tuning`) holds records, which every lowering reads. Tuned rows lower
    with `tune=True, trials=trials` against that database: with a warm one a lookup, with a cold one every
    kernel is timed first (minutes to hours: build the database beforehand). `lowered_dir`: each lowering is
    exported to `lowered_dir/<row>` and reused by later calls while the integer program, target, threads, input
    shape and tuning settings match (`lowering_key`); remove the folder after changing kernels or the database.
    `batch_modes`: "static" (a library for `input_shape`'s batch N, `batch=N`: the batch-1 kernels in a loop of
    N) and/or "dynamic" (one library for any batch, `batch="dynamic"`, called with N images; rows
    `qcompile_tvm_<mcpu>_dynbatch_<kind>`).

    mcpu "host" lowers for target "x86" (LLVM's host CPU and cpuinfo features); a kernel family of
    `targets.KERNEL_FAMILIES` ("avx2", "avx512-vnni", ...) for this CPU's mcpu limited to that family (row
    `qcompile_tvm_<family>_untuned`); any other mcpu for the target dict {"kind": "llvm", "mtriple":
    "x86_64-linux-gnu", "mcpu": mcpu, "num-cores": threads}. A target this CPU cannot execute (code for another
    CPU can die with SIGILL) or a lowering that fails becomes a spec whose build raises, so its row says why.
    """
    from qcompile.backends.tvm.targets import KERNEL_FAMILIES, family_target, runs_on_host

    runners: dict[str, RunnerSpec] = {}
    targets: dict[str, Any] = {}
    bad = [m for m in batch_modes if m not in ("static", "dynamic")]
    if bad or not batch_modes:
        raise ConfigError("batch_modes", bad or list(batch_modes), "'static' and/or 'dynamic'")
    kinds = ("untuned", "tuned") if tuned else ("untuned",)
    for mcpu, mode in [(m, b) for m in mcpus for b in batch_modes]:
        tag = "_dynbatch" if mode == "dynamic" else ""
        batch: int | str | None = ("dynamic" if mode == "dynamic" else int(input_shape[0])) if input_shape else None
        if mcpu == "host":
            target: str | dict = "x86"
        elif mcpu in KERNEL_FAMILIES:
            target = family_target(mcpu, threads)
        else:
            target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu, "num-cores": threads}
        if target != "x86" and not runs_on_host(target):
            for kind in kinds:
                name = f"qcompile_tvm_{mcpu}{tag}_{kind}"
                runners[name] = RunnerSpec(name, lowering_failed, (f"not run: this CPU cannot execute {mcpu} code",))
                targets[name] = target
            continue
        for kind in kinds:
            try:
                low, label = _lowering(ig, target, threads, input_shape, kind == "tuned", trials, mcpu,
                                       lowered_dir, batch)
            except Exception as e:  # recorded in the row, the other runners still run
                log.warning("TVM lowering (%s) for mcpu %s failed: %s", kind, mcpu, e)
                name = f"qcompile_tvm_{mcpu}{tag}_{kind}"
                runners[name] = RunnerSpec(name, lowering_failed, (f"lowering failed: {type(e).__name__}: {e}",))
                targets[name] = target
                continue
            name = f"qcompile_tvm_{label}{tag}_{kind}"
            runners[name] = tvm_spec(low, name)
            targets[name] = low.spec.tvm_target
    return runners, targets


def lowering_key(ig: Any, target: Any, threads: int, input_shape: tuple[int, ...] | None, tune: bool,
                 trials: int | None, batch: int | str | None = None) -> str:
    """sha256 of what a lowering depends on: the integer program (every node's op, operands and parameters, every
    constant's bytes; not `node.meta`, which lowering annotates), the target, thread count, input shape and tuning
    settings, and the batch mode where it is not the default single image (the tuning database's contents are not
    in it)."""
    import hashlib
    import json

    from qcompile.ops.graph import op_name

    h = hashlib.sha256()
    for n in ig.graph.nodes:
        if n.op == "get_attr":
            h.update(n.target.encode())
            h.update(_attr(ig, n.target).detach().contiguous().cpu().numpy().tobytes())
        elif n.op == "call_function":
            h.update(f"{n.name}={op_name(n.target)}{ig._describe_arg(n.args)}{ig._describe_arg(n.kwargs)}".encode())
        else:
            h.update(f"{n.op}:{n.name}:{ig._describe_arg(n.args)}".encode())
    settings = [target, threads, list(input_shape or ()), tune, trials]
    if batch not in (None, 1):
        settings.append(batch)
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _attr(mod: Any, target: str) -> torch.Tensor:
    for part in target.split("."):
        mod = getattr(mod, part)
    return mod


def _lowering(ig: Any, target: Any, threads: int, input_shape: tuple[int, ...] | None, tune: bool,
              trials: int | None, mcpu: str, lowered_dir: str | Path | None,
              batch: int | str | None = None) -> tuple[Any, str]:
    """(Lowered, row label) of one qcompile row, from `lowered_dir` when a matching export is there. `batch`:
    `qc.lower`'s batch mode (None: its default)."""
    import json
    import os
    import tempfile
    import time

    from qcompile import api as qc
    from qcompile.backends.tvm.targets import KERNEL_FAMILIES

    kind = "tuned" if tune else "untuned"
    key = cached = None
    if lowered_dir is not None:
        key = lowering_key(ig, target, threads, input_shape, tune, trials, batch)
        cached = Path(lowered_dir) / f"{mcpu}{'_dynbatch' if batch == 'dynamic' else ''}_{kind}"
        stamp = cached / "lowering_key.json"
        if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
            low = qc.load(cached)
            log.info("reusing the %s lowering for %s from %s", kind, mcpu, cached)
            return low, json.loads(stamp.read_text())["label"]
    t0 = time.perf_counter()
    kw: dict[str, Any] = {} if batch is None else {"batch": batch}
    if tune:
        low = qc.lower(ig, target=target, num_threads=threads, input_shape=input_shape, tune=True, trials=trials,
                       **kw)
    else:
        saved = os.environ.get("QCOMPILE_CACHE")
        with tempfile.TemporaryDirectory(prefix="qcompile-empty-db-") as empty:
            os.environ["QCOMPILE_CACHE"] = empty  # default schedules: no record of the persistent database
            try:
                low = qc.lower(ig, target=target, num_threads=threads, input_shape=input_shape, **kw)
            finally:
                if saved is None:
                    os.environ.pop("QCOMPILE_CACHE", None)
                else:
                    os.environ["QCOMPILE_CACHE"] = saved
    log.info("%s lowering for %s took %.1f s", kind, mcpu, time.perf_counter() - t0)
    label = mcpu if mcpu in KERNEL_FAMILIES else low.spec.tvm_target.get("mcpu", mcpu)
    if cached is not None:
        from qcompile.utils.io import atomic_write_text

        low.export(cached)
        atomic_write_text(cached / "lowering_key.json", json.dumps({"key": key, "label": label}))
    return low, label


#: the files of an exported `Lowered` a worker needs to run it (`Lowered.export`, `qcompile.backends.tvm.load`)
_TVM_FILES = ("lib.so", "metadata.json")


def tvm_spec(low: Any, name: str) -> RunnerSpec:
    """A `RunnerSpec` for a qcompile TVM lowering: `low.export` into a temporary directory, the library and
    its metadata carried as bytes (no directory has to outlive this call), `tvm_library` rebuilds it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qcompile-bench-tvm-") as tmp:
        path = low.export(Path(tmp) / "lib")
        files = {f: (path / f).read_bytes() for f in _TVM_FILES}
    return RunnerSpec(name, tvm_library, (files,))


def tvm_library(files: dict[str, bytes]) -> Runner:
    """Load an exported qcompile TVM library from its files' bytes (`tvm_spec`) in this process.

    The thread count is the lowering's `num_threads` (its metadata); where that is None, TVM's pool takes
    `TVM_NUM_THREADS`, which the harness sets in each worker before TVM's pool exists.
    """
    import tempfile

    from qcompile.backends.tvm import load

    tmp = tempfile.TemporaryDirectory(prefix="qcompile-bench-tvm-")
    for f, data in files.items():
        (Path(tmp.name) / f).write_bytes(data)
    low = load(tmp.name)

    def run(x: np.ndarray) -> np.ndarray:
        _ = tmp  # the library file lives as long as the runner (qemu-run targets reopen it per call)
        return low(x)

    return run


def lowering_failed(msg: str) -> Runner:
    """Factory of a row whose lowering failed in the parent: raises, so the row's status says why."""
    raise RuntimeError(msg)
