"""Side-by-side benchmark run -> JSON + the markdown tables of docs/benchmarks.md.

    QCOMPILE_CACHE=/tmp/qc-bench .venv/bin/python -m benchmarks.report --out benchmarks/results.json \\
        --markdown docs/benchmarks.md

Runs, in one sitting (so every row saw the same machine load): the whole 8-bit MobileNetV2 (224, batch 1,
2 threads; each runtime in its own worker process, timed in interleaved rounds) with qcompile/TVM untuned
(default tiles, empty tuning database), tuned (after `benchmarks.tune_mbv2`), for the AVX2 target and the
host's VNNI target; onnxruntime INT8 QDQ (MLAS) and torch.ao INT8 (x86) on the same shapes; then per-kernel
rows for the distinct conv layers. Latencies are the fastest of N single calls (this machine is shared; see
`kernels.time_min`), medians are reported too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def cpu_int8_peak(cores: int = 2) -> dict:
    """This CPU's int8 multiply-accumulate peak from its clock and vector units (ops = 2 per MAC).

    Assumes 2 vector-multiply pipes per core (Zen 4/5, Intel since Skylake). AVX2: `vpmaddubsw` (32 u8 x s8
    products) plus `vpmaddwd` (pair sums) are 2 multiply uops per 32 MACs -> 32 MAC/cycle/core. VNNI ymm:
    one `vpdpbusd` per 32 MACs -> 64 MAC/cycle/core; zmm (AVX512-VNNI on a full 512-bit datapath) 128.
    """
    mhz = None
    flags: set[str] = set()
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":")[1])
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":")[1].split())
                elif line.startswith("model name"):
                    model = line.split(":")[1].strip()
    except OSError:
        pass
    ghz = (mhz or 0.0) / 1000.0

    def gops(mac_per_cycle: int) -> float:
        return 2 * mac_per_cycle * ghz * cores

    return {
        "model": model,
        "ghz": ghz,
        "cores": cores,
        "avx2_int8_peak_gops": gops(32),
        "vnni256_int8_peak_gops": gops(64) if {"avx_vnni", "avx512_vnni"} & flags else None,
        "vnni512_int8_peak_gops": gops(128) if "avx512_vnni" in flags else None,
        "flags": sorted(f for f in flags if f.startswith(("avx2", "avx512_vnni", "avx_vnni", "avx512f"))),
    }


def _tvm_network(target, resolution: int = 224) -> tuple[bytes, float]:
    """(exported library bytes, lowering seconds) of the whole network through qcompile's strategies."""
    import tempfile

    import tvm

    from benchmarks.mbv2 import build_relax_mbv2

    t0 = time.perf_counter()
    ex = tvm.compile(build_relax_mbv2(target, resolution), target=target)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.so"
        ex.export_library(str(path))
        return path.read_bytes(), build_s


# -- runner factories: module-level so that each runtime can be built in its own worker process ---------------

def tvm_network_runner(lib: bytes, shape: tuple[int, ...] = (1, 3, 224, 224)):
    """The exported Relax VM library `lib` on fixed random uint8 codes of `shape` (the input is ignored)."""
    import tempfile

    import tvm
    from tvm import relax

    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "net.so"
    path.write_bytes(lib)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    codes = tvm.runtime.tensor(np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8))
    f = vm["main"]

    def run(_x: np.ndarray):
        _ = tmp  # keep the library file as long as the runner
        return f(codes).numpy()

    return run


def ort_int8_runner(shape: tuple[int, ...], threads: int):
    """onnxruntime INT8 QDQ (MLAS) session of the float twin, run on the given input."""
    from benchmarks.mbv2 import float_twin, ort_int8

    return ort_int8(float_twin(), shape, threads=threads)


def torch_ao_runner(shape: tuple[int, ...], threads: int):
    """torch.ao INT8 (x86) of the float twin, run on the given input."""
    import torch

    from benchmarks.mbv2 import float_twin, torch_ao_int8

    torch.set_num_threads(threads)
    return torch_ao_int8(float_twin(), shape)


def network_rows(number: int = 100, resolution: int = 224, tune: bool = True) -> list[dict]:
    """Whole MobileNetV2 int8 batch 1, 2 threads: qcompile (untuned/tuned, AVX2/host) and the peers.

    Each runtime is built and run in its own worker process (`qcompile.bench.workers`; sharing one process
    inflated onnxruntime's median 4x), the TVM networks built here and shipped as exported libraries; then
    all are timed in interleaved rounds (one call of each in turn, with the harness's settle step: the
    previous runtime's spinning pool would otherwise steal a core), so that every row sees the same load.
    """
    import tempfile

    from qcompile.bench.workers import RunnerSpec, time_isolated

    threads = 2
    shape = (1, 3, resolution, resolution)
    xf = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    specs: dict[str, RunnerSpec] = {}
    info: dict[str, dict] = {}
    specs["onnxruntime INT8 QDQ (MLAS)"] = RunnerSpec("ort_int8", ort_int8_runner, (shape, threads))
    specs["torch.ao INT8 (x86)"] = RunnerSpec("torch_ao_int8", torch_ao_runner, (shape, threads))
    for mcpu, target in _tvm_targets(threads).items():
        warm = os.environ.get("QCOMPILE_CACHE")
        with tempfile.TemporaryDirectory() as empty:  # untuned: an empty database
            os.environ["QCOMPILE_CACHE"] = empty
            name = f"qcompile TVM {mcpu} untuned"
            lib, lower_s = _tvm_network(target, resolution)
            specs[name] = RunnerSpec(name, tvm_network_runner, (lib, shape))
            info[name] = {"lower_s": lower_s}
        if warm is None:
            os.environ.pop("QCOMPILE_CACHE")
        else:
            os.environ["QCOMPILE_CACHE"] = warm
        if not tune:
            continue
        from benchmarks.tune_mbv2 import tune_network

        t0 = time.perf_counter()
        tune_network(target)  # records already in the database are reused, not re-timed
        tune_s = time.perf_counter() - t0
        name = f"qcompile TVM {mcpu} tuned (warm DB)"
        lib, lower_s = _tvm_network(target, resolution)
        specs[name] = RunnerSpec(name, tvm_network_runner, (lib, shape))
        info[name] = {"lower_s": lower_s, "tune_s": tune_s}
    run = time_isolated(specs, xf, number, 3, threads=threads, settle_s=0.2, lead_in=1)
    for k, v in run.samples.items():
        if isinstance(v, str):
            log.warning("%s: %s", k, v)
    return [
        {"name": k, "min_ms": min(v) * 1e3, "median_ms": float(np.median(v)) * 1e3, "n": number,
         "pid": run.workers[k].get("pid"), **info.get(k, {})}
        for k, v in run.samples.items() if isinstance(v, list)
    ]


def _host_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())  # LLVM aborts on mcpu="native"


def _host_has_vnni() -> bool:
    from qcompile.backends.tvm.targets import host_kernel_families

    return bool({"avx-vnni", "avx512-vnni"} & set(host_kernel_families()))


def _tvm_targets(threads: int) -> dict:
    """label -> target: this CPU limited to AVX2 ("avx2"), plus the whole host CPU when it has VNNI. Both are
    derived from the host, so nothing built here for another CPU runs (and SIGILLs) on this one."""
    import tvm

    from qcompile.backends.tvm.targets import family_target, host_x86_target

    out = {"avx2": tvm.target.Target(family_target("avx2", threads))}
    if _host_has_vnni():
        out[_host_cpu()] = tvm.target.Target(host_x86_target(threads))
    return out


def kernel_rows(number: int = 60) -> list[dict]:
    """Distinct conv layers of MobileNetV2: qcompile kernel vs onnxruntime / torch.ao single conv+ReLU6."""

    from benchmarks.kernels import ort_layer, qc_layer_kernel, time_min, torch_ao_layer
    from benchmarks.mbv2 import mbv2_layers

    peak = cpu_int8_peak()
    rows, seen = [], set()
    targets = _tvm_targets(2)
    if len(targets) > 1:
        targets["vnni"] = targets.pop(_host_cpu())
    for name, ly, _r, _s in mbv2_layers(224):
        if ly in seen:
            continue
        seen.add(ly)
        row = {
            "layer": name,
            "kind": ly.kind,
            "c": ly.c,
            "h": ly.h,
            "o": ly.o,
            "k": ly.k,
            "stride": ly.stride,
            "macs": ly.macs,
        }
        for tag, target in targets.items():
            run, mode = qc_layer_kernel(ly, target)
            t = time_min(run, number)
            row[f"qc_{tag}_us"], row[f"qc_{tag}_mode"] = t * 1e6, mode
            row[f"qc_{tag}_gops"] = 2 * ly.macs / t / 1e9
        row["ort_us"] = time_min(ort_layer(ly), number) * 1e6
        row["torch_ao_us"] = time_min(torch_ao_layer(ly), number) * 1e6
        row["avx2_peak_frac"] = row["qc_avx2_gops"] / peak["avx2_int8_peak_gops"] if peak["ghz"] else None
        if "qc_vnni_gops" in row and peak.get("vnni512_int8_peak_gops"):
            row["vnni512_peak_frac"] = row["qc_vnni_gops"] / peak["vnni512_int8_peak_gops"]
        rows.append(row)
        log.info("%s", row)
    return rows


NOTES = [
    "## How to read these numbers",
    "",
    "- The network is built from the same strategies `qc.lower` uses (`benchmarks/mbv2.py`), with random",
    "  8-bit weights and codes; onnxruntime and torch.ao run the float twin quantized post-training.",
    "- When this CPU has AVX-512 VNNI or AVX-VNNI, MLAS uses them at run time, so the honest peer of",
    "  onnxruntime is the host-target row; the `avx2` rows (this CPU's mcpu with AVX-512 and VNNI turned",
    "  off) show what a strictly AVX2 target gets. With 8-bit weights and 8-bit codes AVX2 must",
    "  use the exact int16 path (`vpmaddubsw` would saturate: MLAS accepts that risk, or asks for",
    "  `reduce_range`), which halves its throughput; sub-8-bit layers take the `u8s8` path.",
    "- Whole-network rows: each runtime in its own worker process (`qcompile.bench.workers`; sharing one",
    "  process inflated onnxruntime's median about 4x), timed in interleaved rounds so that all see the same",
    "  load, with the harness's settle step before each timed call (the previous runtime's spinning thread",
    "  pool would otherwise steal a core). Per-kernel rows are single kernels, minimum of N calls.",
    "- Depthwise layers (`schedules.x86.depthwise.default_dw_knobs`; the tuner decides): with AVX-512 VNNI and",
    "  VBMI the sliding tap quads (`vpdpbusd` on four adjacent codes shuffled out of one row load by `vpermb`);",
    "  with VNNI alone u8 tap quads, vertical quads or rows by shape; without VNNI the tap-pair kernel",
    "  (`vpmaddwd`/`vpdpwssd` on int16 tap pairs) on rows of >= 28 outputs and the row kernel otherwise.",
    "- Requantization is exact fixed point (int64 `acc*M + b >> s`, integer_semantics.md), about 1 instruction",
    "  per output; MLAS requantizes in float32. On layers with few input channels (K = 16..40) this epilogue,",
    "  not the dot products, bounds the kernel.",
    "- The clock is /proc/cpuinfo's nominal value under KVM; the core may boost above it, so '% of peak'",
    "  can overstate efficiency (the int16 path cannot really exceed 50 % of the u8 peak).",
    "- Per-kernel peers are one-conv models: their time includes quantize/dequantize of float input and",
    "  output (QDQ) for onnxruntime, and torch.ao's quantized conv dispatch; qcompile kernels take codes.",
    "",
    "Reproduce: `QCOMPILE_CACHE=/tmp/qc-bench .venv/bin/python -m benchmarks.report` (about 4 minutes with a",
    "warm tuning database, 12 with an empty one); tuning alone: `python -m benchmarks.tune_mbv2 --family avx2`.",
    "pytest-benchmark suites: `.venv/bin/python -m pytest benchmarks --benchmark-enable -p no:xdist",
    "--benchmark-json=benchmarks/bench.json`.",
    "",
]


def markdown(res: dict, command: str) -> str:
    """Render the JSON result as docs/benchmarks.md."""
    p = res["peak"]
    lines = [
        "# Benchmarks: qcompile int8 kernels vs onnxruntime and torch.ao",
        "",
        f"Generated by `{command}` on {res['date']} ({p['model']}, {p['cores']} threads).",
        "Latencies are the fastest of N single calls, medians beside them (load average during the run: "
        + res["load"] + "; other jobs on this 2-core machine inflate medians more than minima).",
        "",
        "## CPU int8 peak (from clock and vector units)",
        "",
        f"- clock {p['ghz']:.2f} GHz (/proc/cpuinfo), {p['cores']} cores, flags {', '.join(p['flags'])}",
        "- assumption: 2 vector-multiply pipes per core (Zen 4/5, Intel since Skylake); ops = 2 per MAC",
        "- AVX2 (`vpmaddubsw` + `vpmaddwd`, 2 vector-multiply uops/cycle = 32 MAC/cycle/core): "
        f"**{p['avx2_int8_peak_gops']:.0f} GOP/s**",
    ]
    if p.get("vnni256_int8_peak_gops"):
        lines.append(f"- VNNI ymm (`vpdpbusd`, 64 MAC/cycle/core): **{p['vnni256_int8_peak_gops']:.0f} GOP/s**")
    if p.get("vnni512_int8_peak_gops"):
        lines.append(f"- VNNI zmm (AVX512-VNNI, 128 MAC/cycle/core): **{p['vnni512_int8_peak_gops']:.0f} GOP/s**")
    lines += [
        "",
        "## MobileNetV2 1.0, 224x224, 8-bit, batch 1, 2 threads",
        "",
        "| runtime | min ms | median ms | x onnxruntime (min) | lowering s | tuning s |",
        "|---|---|---|---|---|---|",
    ]
    ort = next(r for r in res["network"] if r["name"].startswith("onnxruntime"))["min_ms"]
    for r in res["network"]:
        lines.append(
            f"| {r['name']} | {r['min_ms']:.2f} | {r['median_ms']:.2f} | {r['min_ms'] / ort:.2f} | "
            f"{r.get('lower_s', float('nan')):.1f} | {r.get('tune_s', float('nan')):.0f} |"
        )
    has_vnni = any("qc_vnni_us" in r for r in res["kernels"])
    lines += [
        "",
        "## Per-kernel (conv + fused requantize; peers: one conv + ReLU6 model each)",
        "",
        "| layer | kind | C | HxW | O | k/s | MMAC | qc AVX2 us (mode) | GOP/s | % AVX2 peak |"
        + (" qc host us (mode) | GOP/s | % zmm VNNI peak |" if has_vnni else "")
        + " onnxruntime us | torch.ao us |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if has_vnni else "") + "---|---|",
    ]
    for r in res["kernels"]:
        line = (
            f"| {r['layer']} | {r['kind']} | {r['c']} | {r['h']} | {r['o']} | {r['k']}/{r['stride']} | "
            f"{r['macs'] / 1e6:.1f} | {r['qc_avx2_us']:.0f} ({r['qc_avx2_mode']}) | {r['qc_avx2_gops']:.0f} | "
            f"{100 * (r['avx2_peak_frac'] or 0):.0f} % |"
        )
        if "qc_vnni_us" in r:
            line += (
                f" {r['qc_vnni_us']:.0f} ({r['qc_vnni_mode']}) | {r['qc_vnni_gops']:.0f} |"
                f" {100 * r.get('vnni512_peak_frac', 0):.0f} % |"
            )
        line += f" {r['ort_us']:.0f} | {r['torch_ao_us']:.0f} |"
        lines.append(line)
    lines += [
        "",
        "Modes: `i16` = exact int16 `vpmaddwd` path (8-bit weights x 8-bit codes can saturate",
        "`vpmaddubsw`), `u8s8` = `vpmaddubsw` (chosen when the layer's weights provably cannot saturate),",
        "`vnni`/`vnni512` = `vpdpbusd` ymm/zmm, `dw-rowsN` / `dw-pairsN` / `dw-quadsN` / `dw-vquadsN` / `dw-slideN` =",
        "depthwise row kernel / tap pairs / tap quads / vertical quads / sliding quads at N int32 lanes (the schedule",
        "the strategy picks: a tuning record, else `default_dw_knobs`).",
        "",
    ]
    lines += NOTES
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results.json")
    ap.add_argument("--markdown", default="docs/benchmarks.md")
    ap.add_argument("--number", type=int, default=100)
    ap.add_argument("--skip-kernels", action="store_true")
    ap.add_argument("--from-json", help="only re-render the markdown of an earlier run's JSON")
    ap.add_argument("--include", nargs="*",
                    default=["docs/benchmarks_space.md", "docs/peers.md", "docs/benchmarks_demo.md",
                             "docs/benchmarks_amx.md"],
                    help="generated sections appended to the markdown when they exist (space subnet, peers, demo "
                         "subnet, AMX against VNNI)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cmd = "QCOMPILE_CACHE=/tmp/qc-bench .venv/bin/python -m benchmarks.report"
    if args.from_json:
        Path(args.markdown).write_text(_with_includes(markdown(json.loads(Path(args.from_json).read_text()), cmd),
                                                      args.include))
        return
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "peak": cpu_int8_peak()}
    res["network"] = network_rows(args.number)
    res["kernels"] = [] if args.skip_kernels else kernel_rows(max(20, args.number // 2))
    res["load"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    Path(args.out).write_text(json.dumps(res, indent=1))
    Path(args.markdown).write_text(_with_includes(markdown(res, cmd), args.include))
    log.info("wrote %s and %s", args.out, args.markdown)


def _with_includes(md: str, includes: list[str]) -> str:
    """`md` followed by each existing generated section file (headings shifted one level down)."""
    parts = [md]
    for f in includes:
        path = Path(f)
        if path.exists():
            text = path.read_text().strip()
            parts.append("\n".join(("#" + line) if line.startswith("#") else line for line in text.splitlines()))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
