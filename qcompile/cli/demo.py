"""`make demo` / `qcompile demo`: the whole promise on the embedded digits data.

Train a small quantized supernet once; evaluate the largest, the smallest and random
mixed-precision subnets with no retraining (calibration only); lower the best one to x86 int8
kernels with TVM and check it bit-exact against the reference integer executor; cross-compile it
for arm_cpu (and run it under qemu when available); benchmark it against onnxruntime; write
`OUT/report.md` with the tables and a plot of accuracy against BitOPs. Every number in the report
is produced by this run.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    space: str = "mobilenet_v3"
    width_mult: float = 0.35
    resolutions: tuple[int, ...] = (24, 32)
    epochs: tuple[int, int, int] = (4, 3, 3)
    batch_size: int = 64
    random_subnets: int = 8
    calib_batches: int = 8
    bench_repeat: int = 30

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(width_mult=0.25, resolutions=(32,), epochs=(1, 0, 1), random_subnets=2, calib_batches=2,
                   bench_repeat=5)


def _accuracy(model, dataset, resolution: int) -> float:
    correct = seen = 0
    with torch.no_grad():
        for xb, yb in dataset.loader(256, resolution=resolution):
            correct += int((model(xb).argmax(1) == yb).sum())
            seen += len(yb)
    return correct / max(seen, 1)


def evaluate_config(qnet, cfg, data, calib_batches: int):
    """(accuracy on the test split, calibrated static subnet) of one config, no retraining."""
    import qcompile as qc

    sub = qc.extract(qnet, cfg)
    calib = data.train.loader(64, shuffle=True, seed=1, resolution=cfg.resolution)
    qc.calibrate(sub, calib, max_batches=calib_batches)
    return _accuracy(sub, data.test, cfg.resolution), sub


def run_demo(out: Path, quick: bool = False, seed: int = 0, settings: DemoSettings | None = None) -> Path:
    """Run the demo into a fresh directory beside `out` and swap it in at the end: a failure or Ctrl-C leaves
    the previous `out` as it was. `out` must be new, empty or an earlier demo directory (it has summary.json)."""
    from qcompile.artifacts import check_out
    from qcompile.utils.io import staged_dir

    out = check_out(Path(out), "demo")
    with staged_dir(out) as work:
        _run_demo(work, quick, seed, settings)
    return out / "report.md"


def _run_demo(out: Path, quick: bool, seed: int, settings: DemoSettings | None) -> Path:
    import qcompile as qc
    from qcompile.cli.train_run import train_run
    from qcompile.data import load_dataset
    from qcompile.search.cost import cost_report

    s = settings or (DemoSettings.quick() if quick else DemoSettings())
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    space = qc.spaces.get_space(s.space, num_classes=10, width_mult=s.width_mult, resolutions=s.resolutions)

    # 1. train once
    t0 = time.perf_counter()
    log.info("[1/6] training a quantized %s supernet on digits (phases %s epochs)", s.space, s.epochs)
    # one torch thread: on a machine shared with other work two OpenMP threads spin and run many
    # times slower (docs/training.md); TVM and onnxruntime are benchmarked with 2 threads below
    trainer = train_run(space, "digits", out / "run", epochs=s.epochs, batch_size=s.batch_size, seed=seed,
                        threads=1)
    timings["train"] = time.perf_counter() - t0
    qnet = trainer.model
    qnet.eval()
    data = load_dataset("digits", resolution=max(space.resolutions), in_channels=space.in_channels)

    # 2. evaluate subnets with no retraining
    t0 = time.perf_counter()
    log.info("[2/6] evaluating subnets without retraining (calibration only)")
    res_hi = max(space.resolutions)
    named = [("largest 4/4", _at(space.largest(bits=4), res_hi)), ("smallest 2/2", space.smallest(bits=2))]
    named += [(f"random mixed #{i}", space.sample(seed=1000 + seed * 100 + i, bits=(2, 3, 4)))
              for i in range(s.random_subnets)]
    rows, subs = [], {}
    for name, cfg in named:
        acc, sub = evaluate_config(qnet, cfg, data, s.calib_batches)
        cost = cost_report(space, cfg)
        rows.append({"name": name, "config": cfg, "accuracy": acc, "bitops": cost.bitops, "macs": cost.macs,
                     "model_kbit": cost.model_bits / 1000, "resolution": cfg.resolution})
        subs[name] = sub
        log.info("  %-16s acc %.2f %%  BitOPs %.3e", name, 100 * acc, cost.bitops)
    timings["evaluate"] = time.perf_counter() - t0
    # 2b. pick the subnet by search under a budget (qcompile/cli/demo_search.py)
    best, best_sub, pick = _search_step(space, qnet, data, rows, out, s, seed, quick)
    timings["search"] = pick.seconds
    best["config"].save(out / "best_subnet.json")

    # 3. integer program and x86 lowering, checked bit-exact
    t0 = time.perf_counter()
    log.info("[3/6] lowering %r to x86 int8 with TVM", best["name"])
    ig = qc.to_integer(best_sub)
    (out / "integer_program.txt").write_text(ig.program_text() + "\n")
    x_test = data.test.images
    if best["resolution"] != x_test.shape[-1]:
        from qcompile.data.base import resize

        x_test = resize(x_test, best["resolution"])
    x_np = x_test.numpy().astype(np.float32)
    low = qc.lower(ig, target="x86")
    low.export(out / "lowered_x86")
    n_check = min(len(x_np), 64 if not quick else 16)
    ref = np.stack([np.asarray(ig(torch.from_numpy(x_np[i : i + 1]))) for i in range(n_check)])
    got = np.stack([np.asarray(low(x_np[i : i + 1])) for i in range(n_check)])
    x86_exact = bool(np.array_equal(ref.astype(np.float64), got.astype(np.float64)))
    x86_acc = float((got.reshape(n_check, -1).argmax(1) == data.test.labels[:n_check].numpy()).mean())
    fq_acc = best["accuracy"]
    timings["lower_x86"] = time.perf_counter() - t0

    # 4. arm_cpu cross-compilation (+ qemu run)
    t0 = time.perf_counter()
    log.info("[4/6] cross-compiling for arm_cpu (aarch64)")
    arm = {"built": False, "elf": None, "qemu_exact": None, "note": ""}
    try:
        low_arm = qc.lower(ig, target="arm_cpu")
        low_arm.export(out / "lowered_arm")
        lib = next((out / "lowered_arm").glob("*.so"))
        arm["built"], arm["elf"] = True, _elf_machine(lib)
        if shutil.which("qemu-aarch64"):
            k = min(n_check, 4)
            got_arm = np.stack([np.asarray(low_arm(x_np[i : i + 1])) for i in range(k)])
            arm["qemu_exact"] = bool(np.array_equal(ref[:k].astype(np.float64), got_arm.astype(np.float64)))
        else:
            arm["note"] = "qemu-aarch64 not installed: library built, not executed"
    except qc.LoweringError as e:
        arm["note"] = str(e).splitlines()[0]
    timings["lower_arm"] = time.perf_counter() - t0

    # 5. benchmark against onnxruntime (interleaved rounds, one worker process per runtime)
    t0 = time.perf_counter()
    log.info("[5/6] benchmarking against onnxruntime")
    from qcompile.data.base import resize

    res = best["config"].resolution
    twin_batches = data.train.loader(64, shuffle=True, seed=1, resolution=res)
    calib = [a[None] for a in resize(data.train.images[:32], res).numpy().astype(np.float32)]
    bench_md = _bench(best_sub, ig, low, x_np[:1], s.bench_repeat, out / "bench", (x_np, data.test.labels.numpy()),
                      twin_batches, calib)
    bench_low = low.benchmark(repeat=s.bench_repeat)
    kernel_table = bench_low.table()
    timings["bench"] = time.perf_counter() - t0

    # 6. report
    log.info("[6/6] writing the report")
    _plot(rows, out / "accuracy_vs_bitops.png")
    timings["total"] = time.perf_counter() - t_start
    report = _report(s, space, trainer, rows, best, x86_exact, x86_acc, fq_acc, n_check, arm, bench_md,
                     kernel_table, timings)
    report += "\n" + _search_section(pick, bench_low.median_ms)
    (out / "report.md").write_text(report)
    (out / "summary.json").write_text(json.dumps({
        "accuracies": {r["name"]: r["accuracy"] for r in rows}, "best": best["name"], "x86_bit_exact": x86_exact,
        "arm": arm, "timings_s": timings}, indent=2))
    return out / "report.md"


def _search_step(space, qnet, data, rows, out: Path, s: DemoSettings, seed: int, quick: bool):
    """(best row, its calibrated subnet, the SearchPick): the searched subnet joins `rows`."""
    from qcompile.cli.demo_search import DemoSearchSettings, pick_subnet

    t0 = time.perf_counter()
    log.info("[2b/6] picking the subnet by search under a budget")
    settings = DemoSearchSettings.quick() if quick else DemoSearchSettings()
    pick = pick_subnet(space, qnet, data, rows, out / "search", s.calib_batches, evaluate_config, seed=seed,
                       settings=settings)
    rows.append(pick.row)
    pick.seconds = time.perf_counter() - t0
    return pick.row, pick.sub, pick


def _search_section(pick, measured_ms: float) -> str:
    from qcompile.cli.demo_search import report_section

    return report_section(pick, measured_ms)


def _at(cfg, resolution):
    from dataclasses import replace

    return replace(cfg, resolution=resolution)


def _elf_machine(path: Path) -> str:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return "not ELF"
    machine = int.from_bytes(head[18:20], "little")
    return {0xB7: "aarch64", 0x3E: "x86-64"}.get(machine, hex(machine))


def _bench(sub, ig, low, x, repeat, out_dir, eval_set, twin_batches, calibration) -> str:
    from qcompile.bench import BenchOptions, run_bench
    from qcompile.bench.peers import tvm_spec
    from qcompile.bench.report import to_markdown
    from qcompile.cli.bench_run import float_twin

    try:  # every row in its own worker process: the lowering travels as its exported library
        runners = {"qcompile_tvm_x86": tvm_spec(low, "qcompile_tvm_x86")}
        # the float rows run the float twin (BN statistics recomputed without quantizers); the int8 peers
        # quantize it with real training images (random batches otherwise)
        res = run_bench(float_twin(sub, twin_batches), x, integer_graph=ig, runners=runners, calibration=calibration,
                        options=BenchOptions(threads=2, repeats=repeat,
                                             peers=("torch_fp32", "ort_fp32", "ort_int8_qdq", "ort_ours_qdq")),
                        out_dir=out_dir, title="best subnet, batch 1, 2 threads", eval_set=eval_set, fake_quant=sub)
        return to_markdown(res)
    except Exception as e:  # the benchmark is informative; never lose the rest of the report over it
        log.warning("benchmark failed: %s", e)
        return f"benchmark failed: {type(e).__name__}: {e}"


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        color = "tab:red" if r["name"].startswith("largest") else "tab:blue" if r["name"].startswith("smallest") \
            else "tab:gray"
        ax.scatter(r["bitops"] / 1e6, 100 * r["accuracy"], color=color)
        ax.annotate(r["name"].replace("random mixed ", ""), (r["bitops"] / 1e6, 100 * r["accuracy"]), fontsize=7)
    ax.set_xlabel("BitOPs (millions)")
    ax.set_ylabel("digits test accuracy (%)")
    ax.set_title("subnets of one supernet, no retraining")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _report(s, space, trainer, rows, best, x86_exact, x86_acc, fq_acc, n_check, arm, bench_md, kernel_table,
            timings) -> str:
    import qcompile

    lines = [
        "# qcompile demo report",
        "",
        f"Produced by `make demo` (`qcompile demo`) on {platform.machine()} with {torch.get_num_threads()} threads, "
        f"qcompile {qcompile.__version__}. Every number below was computed by this run.",
        "",
        "## Supernet",
        "",
        f"- space: `{space!r}`",
        f"- training phases (epochs): {s.epochs}; steps: {trainer.global_step}; wall time {timings['train']:.0f} s",
        "",
        "| epoch | loss | largest acc (val) | smallest acc (val) | lr |",
        "|---:|---:|---:|---:|---:|",
    ]
    for rec in trainer.epoch_log:
        lines.append(f"| {rec['epoch']} | {rec['loss']:.3f} | {100 * rec.get('acc_largest', float('nan')):.1f} % | "
                     f"{100 * rec.get('acc_smallest', float('nan')):.1f} % | {rec['lr']:.4f} |")
    lines += [
        "",
        "## Subnets without retraining (calibration only), digits test split",
        "",
        "| subnet | resolution | accuracy | MACs | BitOPs | weights (kbit) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['resolution']} | {100 * r['accuracy']:.2f} % | {r['macs']:,} | "
                     f"{r['bitops']:.3e} | {r['model_kbit']:.1f} |")
    accs = [r["accuracy"] for r in rows if r["name"].startswith("random")]
    if accs:
        lines.append(f"\nMedian accuracy of the random mixed-precision subnets: {100 * float(np.median(accs)):.2f} %.")
    lines += [
        "",
        "![accuracy vs BitOPs](accuracy_vs_bitops.png)",
        "",
        f"## Best subnet: {best['name']}",
        "",
        f"- config: `best_subnet.json` (hash {best['config'].stable_hash()}); integer program: `integer_program.txt`",
        f"- fake-quant accuracy {100 * fq_acc:.2f} %; TVM x86 int8 accuracy on the first {n_check} test images "
        f"{100 * x86_acc:.2f} %",
        f"- TVM x86 output bit-exact with the reference integer executor on {n_check} images: **{x86_exact}**",
        f"- arm_cpu: library built: {arm['built']} (ELF machine: {arm['elf']}); "
        f"bit-exact under qemu: {arm['qemu_exact']} {arm['note']}",
        "",
        "## Latency (interleaved rounds, one worker process per runtime)",
        "",
        bench_md,
        "",
        "### Per-kernel time of the TVM x86 lowering",
        "",
        "```",
        kernel_table,
        "```",
        "",
        "## Wall time",
        "",
        "| step | seconds |",
        "|---|---:|",
    ]
    for k, v in timings.items():
        lines.append(f"| {k} | {v:.1f} |")
    return "\n".join(lines) + "\n"
