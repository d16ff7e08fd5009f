"""Write a `BenchResult` as JSON, a markdown table, a bar chart (matplotlib, Agg) and the peers section
of the docs (`peers_doc`: the peer table plus a comparison with ARCHITECTURE.md's figures).

Regenerate the docs section from a run's JSON: `python -m qcompile.bench --from-json bench.json --doc docs/peers.md`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from qcompile.bench.result import BenchResult, RunnerStats

#: ARCHITECTURE.md "Environment facts": MobileNetV2 224x224 batch 1, 2 threads, on an AVX2-only machine (ms)
ARCHITECTURE_MS: dict[str, float] = {
    "torch_fp32": 20.6,
    "torch_ao_int8": 7.9,
    "ort_fp32": 4.6,
    "ort_int8_qdq": 5.3,
    "executorch_xnnpack_fp32": 5.0,
    "executorch_xnnpack_int8": 5.4,
}


FLOAT_TWIN_NOTE = (
    "torch, onnxruntime (int8 from its own quantizer), OpenVINO (int8: onnxruntime's QDQ model) and ExecuTorch rows "
    "run the subnet's float twin: the same "
    "layers and weights with the quantizers removed, so the same work to time, but not the model the quantized "
    "supernet was trained to be; their top-1 says so. The qcompile and `ort_ours` rows run the subnet's own "
    "integer program."
)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _label(r: RunnerStats) -> str:
    """The row's name, flagged when it ran in the harness's process while the others were isolated."""
    return f"{r.name} (in-process)" if r.isolation == "in-process" else r.name


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _row(r: RunnerStats) -> str:
    if r.median_ms is None:
        return f"| {_label(r)} | - | - | - | 0 | - | - | - | {r.status} |"
    return (f"| {_label(r)} | {r.median_ms:.2f} | {r.p10_ms:.2f}-{r.p90_ms:.2f} | {r.min_ms:.2f} | {r.n} | "
            f"{_pct(r.top1)} | {_pct(r.agree_fake_quant)} | {_num(r.max_code_diff, '.3g')} | {r.status} |")


def _isolation_words(m: Mapping) -> str:
    iso = m.get("isolation")
    if iso == "process":
        return "one worker process per runner, "
    if iso == "none":
        return "all runners in one process, "
    return ""  # a result written before isolation existed: one process


def _header(m: Mapping) -> list[str]:
    et = f", executorch {m['executorch']}" if m.get("executorch") else ""
    et += f", openvino {m['openvino']}" if m.get("openvino") else ""
    return [
        f"input {tuple(m.get('input_shape', ()))}, {m.get('threads')} threads, {_isolation_words(m)}"
        f"{m.get('repeats')} interleaved rounds "
        f"(+{m.get('warmup')} warm-up; settle <= {m.get('settle_ms')} ms and {_lead_in_words(m)} "
        f"before each timed call), torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}{et}, "
        f"{m.get('cpu_model') or m.get('processor') or m.get('machine')} x{m.get('cpu_count')}, "
        f"load average {_load(m)}, {m.get('timestamp')}",
    ]


def _load(m: Mapping) -> str:
    la = m.get("load_average")
    return "/".join(f"{v:.1f}" for v in la) if la else "?"


def table(result: BenchResult) -> str:
    """The peer table: latency, spread, top-1 on the evaluation set, agreement with the fake-quant subnet, status.

    No column compares with the float twin's outputs: its BN statistics were calibrated without the quantizers,
    so its logits are another model's; accuracy on real labels is what a user compares.
    """
    lines = [
        "| runner | median ms | p10-p90 ms | min ms | n | top-1 (test) | top-1 = fake-quant | max code diff | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [_row(r) for r in result.runners]
    ev = result.meta.get("eval_set")
    if ev:
        fq = ev.get("fake_quant_top1")
        lines += ["", f"top-1 on {ev['n']} test images" + (f"; the fake-quant subnet itself: {100 * fq:.1f} %" if fq
                                                            is not None else "") + ".",
                  "", FLOAT_TWIN_NOTE]
    else:
        lines += ["", "top-1 columns: no evaluation set was given (`run_bench(eval_set=...)`)."]
    if any(r.isolation == "in-process" for r in result.runners):
        lines += ["", "(in-process): a plain callable, timed in the harness's own process rather than in a worker "
                      "of its own (pass a `RunnerSpec` to isolate it)."]
    return "\n".join(lines) + "\n"


def to_markdown(result: BenchResult) -> str:
    """Title, run description, the peer table and the host memory probe's lines."""
    m = result.meta
    return "\n".join([f"## {m.get('title', 'benchmark')}", "", *_header(m), "", table(result),
                      *host_probe_lines(result)])


def host_probe_lines(result: BenchResult) -> list[str]:
    """Markdown lines on the host memory probe (`qcompile.bench.hostprobe`): its median, minimum and best GB/s, how
    many rounds were quiet (within `quiet_pct` % of the best), and every row's median over all rounds beside
    its median over the quiet rounds. Empty when the run had no probe."""
    hp = result.meta.get("host_probe")
    if not hp or not hp.get("stream_gbs"):
        return []
    n, q, pct = len(hp["stream_gbs"]), hp["n_quiet"], hp["quiet_pct"]
    lines = [f"Host memory probe (`qcompile.bench.hostprobe`, in the harness's process at the start of every round, "
             f"no runner running, over {hp['mb']:g} MiB): random-line gather median {hp['median_line_ns']:.2f} ns per "
             f"line, best {hp['best_line_ns']:.2f}, worst {hp['worst_line_ns']:.2f}; streaming read median "
             f"{hp['median_gbs']:.1f} GB/s, minimum {hp['min_gbs']:.1f}, best {hp['best_gbs']:.1f}; **{q} of {n} "
             f"rounds quiet** (gather's line rate within {pct:g} % of the best).", ""]
    if q < n / 2:
        lines += ["**Fewer than half the rounds were quiet: the host's memory side (shared L3/DRAM, outside this "
                  "VM) was slow for much of this run, which the CPU-load figures cannot see; medians over all rounds "
                  "are inflated. Regenerate in a quiet window.**", ""]
    ok = [r for r in result.runners if r.median_ms is not None]
    if ok:
        lines += [f"| runner | median ms, all {n} rounds | median ms, quiet rounds | quiet rounds |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {_label(r)} | {r.median_ms:.2f} | {_num(r.median_quiet_ms, '.2f')} | {r.n_quiet} |" for r in ok]
        lines.append("")
    return lines


def _cpu_sentences(m: Mapping) -> str:
    flags = set(m.get("cpu_flags") or ())
    cpu = m.get("cpu_model") or "this CPU"
    vnni = [f for f in ("avx512_vnni", "avx_vnni") if f in flags]
    if vnni:
        return (f"ARCHITECTURE.md measured its figures on an AVX2-only machine (no AVX-512, no VNNI), while this run's "
                f"CPU ({cpu}) has {', '.join(sorted(flags))}: int8 kernels of MLAS, XNNPACK and oneDNN use the VNNI "
                f"dot-product instruction (`vpdpbusd`) here, so int8 rows are expected to beat those figures by far "
                f"more than fp32 rows do. The ratios therefore compare machines as much as the harness; only rows of "
                f"the same run compare runtimes.")
    return (f"This run's CPU ({cpu}, flags {', '.join(sorted(flags)) or 'unknown'}) has no VNNI, like the machine "
            f"of ARCHITECTURE.md's figures, so ratios near 1 are expected for fp32 and int8 rows alike. Rows of the "
            f"same run are the comparison that matters; ratios check that the harness reproduces the figures.")


def _load_note(m: Mapping) -> list[str]:
    cores = m.get("cpu_count") or 1
    other, steal = m.get("other_load_cores"), m.get("steal_cores") or 0.0
    if other is None:  # older results: only the load average, which counts the benchmark's own threads too
        la = m.get("load_average")
        if not la or la[0] <= 0.5 * cores:
            return []
        return [f"**Load average {la[0]:.1f} on {cores} cores during this run (the benchmark's own threads "
                f"included): other jobs may have competed for the cores. Regenerate on a quiet machine.**", ""]
    if other + steal <= 0.1 * cores:
        return [f"Other processes used {other:.2f} cores on average during this run and the hypervisor stole "
                f"{steal:.2f}: a quiet machine.", ""]
    return [f"**Other processes used {other:.2f} of {cores} cores on average during this run (hypervisor steal "
            f"{steal:.2f}): they competed with the rows, so latencies are inflated and noisy. Regenerate on a "
            f"quiet machine.**", ""]


def _timing_paragraph(m: Mapping) -> str:
    w = m.get("settle_waited_ms") or {}
    if m.get("isolation") == "process":
        where = ("Timing: each runner is built and run in its own worker process (multiprocessing spawn), with "
                 "its thread count set in that process, because runtimes sharing one process share allocator, "
                 "caches, thread affinity and thread pools (measured: onnxruntime INT8 median 7.8 ms interleaved "
                 "in one process vs 2.06 ms alone). The harness drives interleaved rounds, one timed call per "
                 "runner per round, the order rotating every round; each worker times its call with "
                 "`perf_counter` around the call alone and sends the seconds back, so the pipe is not in the "
                 "sample. The input is sent once at start; the output for the code-difference column comes from the "
                 "first call. ")
        idle = ("no thread of any worker (nor of the harness) uses CPU any more or is runnable (state R in "
                "/proc: another process's CPU clock is only brought up to date at a scheduler tick)")
    else:
        where = ("Timing: all runners live in one process and take turns, one timed call each per round, the "
                 "order rotating every round. ")
        idle = "no other thread of the process uses CPU any more or is runnable (state R in /proc)"
    return (where + f"CPU runtimes keep their worker threads spinning for a while after a call (onnxruntime's "
            f"intra-op pool, libgomp after a torch op, TVM's and XNNPACK's pools); the next runtime would then "
            f"lose its cores to them (measured: torch fp32 about 5x slower right after onnxruntime). So before "
            f"each timed call the harness waits until {idle} (probing every 2 ms, at most `settle_ms` = "
            f"{m.get('settle_ms')} ms; this run waited {w.get('median', 0):.1f} ms median, {w.get('max', 0):.1f} ms "
            f"max), then makes {_lead_in_words(m)} of the same runner, so each is timed as in a user's loop, with "
            f"its own pool as hot as it leaves it"
            + (" and its threads spread over the cores again (after sleeping through the other runners' turns, "
               "a runtime's pool threads were woken onto its main thread's vCPU and each parallel section waited "
               "a 4 ms scheduler tick: `timing.lead_in_calls`)" if m.get("lead_in_ms") else "")
            + ". No runtime's spinning is turned off.")


def _lead_in_words(m: Mapping) -> str:
    ms = m.get("lead_in_ms")
    calls = f"{m.get('lead_in')} untimed lead-in call(s)"
    return f"{calls}, continued for at least {ms:g} ms," if ms else calls


def _comparable_note(m: Mapping) -> list[str]:
    """A warning line when the run is not the workload of ARCHITECTURE.md's figures."""
    ok = list(m.get("input_shape", ())) == [1, 3, 224, 224] and m.get("threads") == 2 and "width 1.0" in str(
        m.get("title", ""))
    if ok:
        return []
    return ["The figures are for MobileNetV2 1.0 at 224x224, batch 1, 2 threads; this run is another workload, "
            "so its ratios are not a reproduction check.", ""]


def peers_doc(result: BenchResult, command: str | None = None) -> str:
    """The docs section: how to regenerate, the peer table, ARCHITECTURE.md figure vs this run, the CPU note."""
    m = result.meta
    cmd = command or m.get("command") or "python -m qcompile.bench"
    by = result.by_name()
    lines = [
        f"## Peers: {m.get('title', 'benchmark')}",
        "",
        "Generated by the harness's report code (`qcompile.bench.report.peers_doc`) from a run's JSON:",
        "",
        "```",
        f"{cmd}",
        "```",
        "",
        *_header(m),
        "",
        *_load_note(m),
        "Latency: median and 10th-90th percentile of single calls (ms). `top-1 (test)`: accuracy on the real "
        "test split, `top-1 = fake-quant`: how often the runner's class is the fake-quant subnet's (where the run "
        "had an evaluation set); `max code diff`: largest "
        "difference to qcompile's reference executor in output codes, for runners of our IntegerGraph "
        "(0 = bit-exact; below 1 = float32 rounding of the dequantized output)."
        + (" The output here is the classifier's int32 accumulator dequantized, so its code is one accumulator "
           "LSB: one activation code of difference at the classifier's input moves it by up to 127 (the largest "
           "int8 weight)." if m.get("graph_output_op") == "dequantize_acc" else "")
        + (" The IntegerGraph here is synthetic (MobileNetV2 layer shapes, its own random 8-bit weights), so its "
           "runners have no fp32 comparison." if m.get("synthetic_integer_graph") else ""),
        "",
        table(result),
        *host_probe_lines(result),
        _timing_paragraph(m),
        "",
        *target_table(result),
    ]
    if not m.get("synthetic_integer_graph"):  # ARCHITECTURE.md's figures are of the standard MobileNetV2 only
        lines += ["", _cpu_sentences(m), ""]
        return "\n".join(lines)
    lines += [
        "### ARCHITECTURE.md figure vs this run",
        "",
        *_comparable_note(m),
        "| runner | ARCHITECTURE.md ms (AVX2 machine) | this run median ms | ratio (this run / figure) "
        "| this run p10-p90 ms | figure within this run's p10-p90 |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, ref in ARCHITECTURE_MS.items():
        r = by.get(name)
        got = r.median_ms if r is not None else None
        ratio = "-" if got is None else f"{got / ref:.2f}"
        ok = r is not None and r.p10_ms is not None and r.p10_ms <= ref <= r.p90_ms
        band = "-" if r is None or r.p10_ms is None else f"{r.p10_ms:.2f}-{r.p90_ms:.2f}"
        lines.append(f"| {name} | {ref:.1f} | {_num(got, '.2f')} | {ratio} | {band} | "
                     f"{'-' if r is None or r.p10_ms is None else ('yes' if ok else 'no')} |")
    lines += ["", "\"Within noise\" here means the figure lies inside this run's own 10th-90th percentile band of "
              "single-call latencies.", "", _cpu_sentences(m), ""]
    return "\n".join(lines)


#: the INT8 peers qcompile's rows are held against (the fastest of them by median, per run)
INT8_PEERS = ("openvino_int8_qdq", "ort_int8_qdq", "executorch_xnnpack_int8")
#: qcompile row / fastest INT8 peer (medians) that a row must not exceed: tuned (warm tuning database), untuned
TARGET_RATIO = {"tuned": 0.8, "untuned": 1.0}


def target_table(result: BenchResult) -> list[str]:
    """Markdown lines: every qcompile TVM row's median over the fastest INT8 peer's (of `INT8_PEERS` that ran),
    against `TARGET_RATIO`; empty when no INT8 peer or no qcompile row has a median."""
    by = result.by_name()
    peers = [by[n] for n in INT8_PEERS if n in by and by[n].median_ms]
    ours = [r for r in result.runners if r.name.startswith("qcompile_tvm_") and r.median_ms]
    if not peers or not ours:
        return []
    best = min(peers, key=lambda r: r.median_ms)
    lines = [f"### qcompile against the fastest INT8 peer ({best.name}, median {best.median_ms:.2f} ms)", "",
             "| qcompile row | median ms | x fastest INT8 peer (median) | x that peer (min) | target (median) | met |",
             "|---|---:|---:|---:|---:|:-:|"]
    for r in ours:
        kind = "tuned" if r.name.endswith("_tuned") else "untuned"
        ratio = r.median_ms / best.median_ms
        mins = "-" if not (r.min_ms and best.min_ms) else f"{r.min_ms / best.min_ms:.2f}"
        goal = TARGET_RATIO[kind]
        lines.append(f"| {r.name} | {r.median_ms:.2f} | {ratio:.2f} | {mins} | <= {goal:.1f} | "
                     f"{'yes' if ratio <= goal else 'no'} |")
    return [*lines, ""]


def bar_chart(result: BenchResult, path: str | os.PathLike) -> Path:
    """Median latency per runner with p10-p90 error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result.runners if r.median_ms is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(ok) + 1.5), 3.6))
    med = [r.median_ms for r in ok]
    err = [[r.median_ms - r.p10_ms for r in ok], [r.p90_ms - r.median_ms for r in ok]]
    bars = ax.bar(range(len(ok)), med, yerr=err, capsize=3, color="tab:blue")
    for b, v in zip(bars, med):
        ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(ok)), [r.name for r in ok], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("latency, ms (median, p10-p90)")
    m = result.meta
    ax.set_title(f"{m.get('title', '')}: {tuple(m.get('input_shape', ()))}, {m.get('threads')} threads", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: BenchResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """`bench.json`, `bench.md`, `bench.png` in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "png": out / "bench.png"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1))
    paths["markdown"].write_text(to_markdown(result))
    bar_chart(result, paths["png"])
    return paths


def load_result(path: str | os.PathLike) -> BenchResult:
    """A `BenchResult` read back from `bench.json`."""
    return BenchResult.from_dict(json.loads(Path(path).read_text()))
