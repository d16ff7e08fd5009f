"""Supernet-training ablations of the seed papers on digits, one per invocation.

    .venv/bin/python benchmarks/ablations.py batchquant   # BatchQuant vs EMA min/max (QFA Table 4 / Sec. 5)
    .venv/bin/python benchmarks/ablations.py two-stage    # two-stage (65:125 split) vs single-stage (QFA Table 3)
    .venv/bin/python benchmarks/ablations.py inheritance  # bit inheritance 4->3->2 vs direct 2-bit QAT (OQA 3.4, A.2)
    .venv/bin/python benchmarks/ablations.py bitsched     # with vs without bit scheduler + IDM (retraining-free 3.3)
    .venv/bin/python benchmarks/ablations.py acceptance   # the default `qcompile train` run + its acceptance figures

Every arm starts from the same float supernet (trained once per seed and cached in OUT), trains
its quantized phases with the sandwich rule, and is evaluated retraining-free: `qc.extract` +
`qc.calibrate` (8 training batches) per subnet, top-1 on the digits test split. Arm results are
cached in OUT/arms.json (an arm shared by two ablations is trained once; several seeds may run in
parallel processes into one OUT). The table is printed and written to OUT/<ablation>-e<E>-seed<S>.md.
`--epochs e` scales every budget (see `train_arm`); `--recipe qfa` trains the quantized phases with
QFA's own recipe (`QFA_RECIPE`) instead of ours. `ABLATION --summary` prints the paired
differences between the two arms over every seed and budget found in OUT/arms.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fcntl
import json
import logging
import random
import statistics
import time
from pathlib import Path

import torch

import qcompile as qc
from qcompile.data import load_dataset
from qcompile.train import Phase, TrainConfig, Trainer, bit_inheritance
from qcompile.train.evaluate import evaluate_subnets
from qcompile.train.init import zero_init_residual_bn
from qcompile.utils.io import atomic_write_text

log = logging.getLogger("ablations")

ABLATIONS = {
    "batchquant": ("two-stage", "ema", "learned"),
    "two-stage": ("two-stage-qfa", "single-stage"),
    "inheritance": ("inherit-oqa", "direct-2"),
    "bitsched": ("two-stage+bitsched+idm", "two-stage"),
}
ARM_TITLES = {
    "two-stage": "BatchQuant, two-stage {2,3,4,32} -> {2,3,4}",
    "ema": "EMA min/max, two-stage {2,3,4,32} -> {2,3,4}",
    "learned": "learned scale + offset (LSQ+-style), two-stage {2,3,4,32} -> {2,3,4}",
    "two-stage-qfa": "BatchQuant, two-stage {2,3,4,32} -> {2,3,4}, QFA's 65:125 split",
    "single-stage": "BatchQuant, single-stage {2,3,4}",
    "inherit-4-3-2": "bit inheritance 4 -> 3 -> 2, equal split of the 2-bit arm's epochs (K-bit teacher)",
    "inherit-oqa": "bit inheritance 4 -> 3 -> 2, OQA's 25:120 split of the 2-bit arm's epochs (K-bit teacher)",
    "direct-2": "direct 2-bit QAT from float",
    "two-stage+bitsched+idm": "two-stage, stage 2 with bit scheduler + IDM",
}


def _space(args: argparse.Namespace):
    return qc.spaces.get_space(args.space, num_classes=10, width_mult=args.width, resolutions=(args.resolution,))


def _tc(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(seed=args.seed, evaluate=False, progress=False)


#: QFA's own QAT recipe (apple/ml-batchquant main.py, both stages): learning rate 2.5e-3 per 64
#: images, gradient clip 500, sandwich of largest + smallest + 4 random subnets, every member
#: distilled (KD weight 1) from a frozen teacher: the largest subnet of the full-precision supernet.
QFA_RECIPE = {"lr": 2.5e-3, "grad_clip": 500.0, "num_random": 4}


def _train_qat(qnet, args: argparse.Namespace, space, data, phases: list[Phase], fgraph) -> None:
    """Train the quantized `phases` with `--recipe`: ours (in-place KD from the largest subnet of
    the step, `TrainConfig()` defaults) or QFA's (`QFA_RECIPE`, frozen float teacher)."""
    if args.recipe == "default":
        Trainer(qnet, space, data, _tc(args), phases).fit()
        return
    tc = dataclasses.replace(_tc(args), lr=QFA_RECIPE["lr"], grad_clip=QFA_RECIPE["grad_clip"])
    phases = [dataclasses.replace(p, num_random=QFA_RECIPE["num_random"], teacher="external") for p in phases]
    teacher = copy.deepcopy(fgraph)
    Trainer(qnet, space, data, tc, phases, teacher=teacher, teacher_bits=None, teacher_config=space.largest()).fit()


def float_supernet(args: argparse.Namespace, space, data) -> torch.fx.GraphModule:
    """The traced float supernet after `--float-epochs` of sandwich training (cached per seed)."""
    torch.manual_seed(args.seed)
    net = space.build_supernet()
    zero_init_residual_bn(net)
    graph = qc.trace(net)
    key = f"float-{args.space}-w{args.width}-r{args.resolution}-e{args.float_epochs}-seed{args.seed}.pt"
    path = Path(args.out) / key
    if path.is_file():
        graph.load_state_dict(torch.load(path))
        return graph
    t = time.time()
    Trainer(graph, space, data, _tc(args), [Phase("float", args.float_epochs, bits=None)]).fit()
    log.info("float supernet: %.0f s", time.time() - t)
    torch.save(graph.state_dict(), path)
    return graph


def qfa_split(total: int) -> tuple[int, int]:
    """Stage lengths of QFA's two-stage elastic quantization for `total` quantized epochs.

    QFA Sec. 4 / Table 3: 65 epochs {2,3,4,32} then 125 epochs {2,3,4}, against 190 epochs of
    {2,3,4} for single-stage: the same total, the first stage 65/190 of it (at least one epoch).
    """
    first = min(max(1, round(total * 65 / 190)), total - 1)
    return first, total - first


def oqa_split(total: int) -> tuple[int, int]:
    """Epochs at 3 and at 2 bits of OQA's bit inheritance, for `total` epochs of direct 2-bit QAT.

    OQA A.2: QAT trains 150 epochs from the float model; bit inheritance starts from the 4-bit
    supernet (OQA Step 1, which exists before either arm: the 4-bit product) and spends 25 epochs at
    3 bits, then 120 at 2 bits: 145 epochs after the 4-bit supernet, the QAT budget. The epochs that
    count are those after the 4-bit supernet; the 3-bit share is 25/145 (at least one epoch).
    """
    three = min(max(1, round(total * 25 / 145)), total - 1)
    return three, total - three


def _inherit(qnet, args, space, data, tc, epochs_per_bits: dict[int, int]) -> None:
    """OQA Sec. 3.4: 4-bit supernet, then inherit 4 -> 3 -> 2 (steps doubled, BN re-estimated, K-bit
    supernet as the KD teacher of the K-1 bit one), `epochs_per_bits[k]` epochs at k bits."""
    Trainer(qnet, space, data, tc, [Phase("bits-4", epochs_per_bits[4], bits=(4,))]).fit()
    for k in (4, 3):
        batches = data.train.loader(64, shuffle=True, seed=args.seed + k)
        # OQA recalibrates BN on 4096 images; digits' training split has 1 259, so all of them.
        teacher = bit_inheritance(qnet, space, k, k - 1, batches, qc.set_active, num_images=4096)
        phase = Phase(f"bits-{k - 1}", epochs_per_bits[k - 1], bits=(k - 1,), teacher="external")
        Trainer(qnet, space, data, tc, [phase], teacher=teacher, teacher_bits=k).fit()


def train_arm(arm: str, args: argparse.Namespace, space, data, fgraph) -> torch.nn.Module:
    """Train arm `arm` from a copy of the float supernet; returns the quantized supernet.

    Budgets (e = `--epochs`): the BatchQuant/bit-scheduler arms run e + e epochs; the two-stage
    ablation compares 2e epochs split 65:125 (`qfa_split`) with 2e epochs of {2,3,4}; the
    inheritance ablation compares 3e epochs of direct 2-bit QAT from float with a 4-bit supernet
    (e epochs) followed by 3e epochs split 25:120 between 3 and 2 bits (`oqa_split`).
    """
    e = args.epochs
    tc = _tc(args)
    act_quant = {"ema": "ema", "learned": "learned"}.get(arm, "batchquant")
    qnet = qc.quantize(copy.deepcopy(fgraph), act_quant=act_quant)
    if arm in ("two-stage", "ema", "learned", "two-stage+bitsched+idm"):
        sched = arm == "two-stage+bitsched+idm"
        phases = [
            Phase("bits-2-3-4-32", e, bits=(2, 3, 4, 32)),
            Phase("bits-2-3-4", e, bits=(2, 3, 4), bit_schedule=sched, idm_weight=args.idm_weight if sched else 0.0),
        ]
        _train_qat(qnet, args, space, data, phases, fgraph)
    elif arm == "two-stage-qfa":
        first, second = qfa_split(2 * e)
        phases = [Phase("bits-2-3-4-32", first, bits=(2, 3, 4, 32)), Phase("bits-2-3-4", second, bits=(2, 3, 4))]
        _train_qat(qnet, args, space, data, phases, fgraph)
    elif arm == "single-stage":
        _train_qat(qnet, args, space, data, [Phase("bits-2-3-4", 2 * e, bits=(2, 3, 4))], fgraph)
    elif arm == "direct-2":
        Trainer(qnet, space, data, tc, [Phase("bits-2", 3 * e, bits=(2,))]).fit()  # pairs with _inherit
    elif arm == "inherit-oqa":
        three, two = oqa_split(3 * e)
        _inherit(qnet, args, space, data, tc, {4: e, 3: three, 2: two})
    elif arm == "inherit-4-3-2":
        _inherit(qnet, args, space, data, tc, {4: e, 3: e, 2: e})
    else:
        raise ValueError(arm)
    return qnet


def evaluate_arm(arm: str, args: argparse.Namespace, space, data, qnet) -> dict[str, float]:
    rng = random.Random(1000 + args.seed)
    two_bit = arm in ("inherit-4-3-2", "inherit-oqa", "direct-2")
    mixed = (2,) if two_bit else (2, 3, 4)
    top = 2 if two_bit else 4
    cfgs = [space.largest(bits=top), space.smallest(bits=2)]
    cfgs += [space.sample(seed=rng.randrange(2**31), bits=mixed) for _ in range(args.subnets)]
    acc = evaluate_subnets(qnet, space, data, cfgs, calib_batches=8)
    lower = [] if two_bit else evaluate_subnets(qnet, space, data, [space.largest(bits=b) for b in (3, 2)], 8)
    return {
        "largest_3_2": lower,
        "largest": acc[0],
        "largest_bits": top,
        "smallest_2bit": acc[1],
        "median_random": statistics.median(acc[2:]),
        "min_random": min(acc[2:]),
        "random_bits": list(mixed),
    }


def _record_arm(cache_path: Path, key: str, result: dict) -> None:
    """Add one arm's result to OUT/arms.json. Ablations of several seeds often run in parallel
    processes into one OUT: re-read under an exclusive lock and replace the file atomically, so one
    process never drops another's arms."""
    with open(cache_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
        cache[key] = result
        atomic_write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True))


def run(args: argparse.Namespace) -> str:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    space = _space(args)
    data = load_dataset("digits", resolution=args.resolution, in_channels=space.in_channels)
    cache_path = out / "arms.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    settings = (
        f"{args.space} w{args.width} r{args.resolution} float{args.float_epochs} e{args.epochs} "
        f"idm{args.idm_weight} n{args.subnets} seed{args.seed}"
    ) + ("" if args.recipe == "default" else f" recipe-{args.recipe}")
    fgraph = None
    rows = []
    for arm in ABLATIONS[args.ablation]:
        key = f"{arm} | {settings}"
        if key not in cache or args.force:
            fgraph = fgraph if fgraph is not None else float_supernet(args, space, data)
            t = time.time()
            qnet = train_arm(arm, args, space, data, fgraph)
            train_s = time.time() - t
            res = evaluate_arm(arm, args, space, data, qnet)
            res["train_s"] = round(train_s, 1)
            cache[key] = res
            _record_arm(cache_path, key, res)
        rows.append((arm, cache[key]))
    lines = [
        f"ablation `{args.ablation}` ({settings}; test accuracy %, retraining-free: extract + calibrate 8 batches)",
        "",
        "| arm | largest | largest @3, @2 | smallest @2 bits | median of random | min of random | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, r in rows:
        bits = "{" + ",".join(str(b) for b in r["random_bits"]) + "}"
        low = ", ".join(f"{100 * a:.1f}" for a in r.get("largest_3_2", [])) or "-"
        lines.append(
            f"| {ARM_TITLES[arm]} | {100 * r['largest']:.1f} (@{r['largest_bits']}) | {low} "
            f"| {100 * r['smallest_2bit']:.1f} "
            f"| {100 * r['median_random']:.1f} ({args.subnets} @{bits}) | {100 * r['min_random']:.1f} "
            f"| {r['train_s']:.0f} |"
        )
    table = "\n".join(lines)
    recipe = "" if args.recipe == "default" else f"-{args.recipe}"
    atomic_write_text(out / f"{args.ablation}{recipe}-e{args.epochs}-seed{args.seed}.md", table + "\n")
    return table


#: Columns of `summary`: label, and how to read the figure from an arm's result.
SUMMARY_COLUMNS = (
    ("largest @top", lambda r: r["largest"]),
    ("largest @3", lambda r: r["largest_3_2"][0] if r.get("largest_3_2") else None),
    ("largest @2", lambda r: r["largest_3_2"][1] if r.get("largest_3_2") else None),
    ("smallest @2", lambda r: r["smallest_2bit"]),
    ("median random", lambda r: r["median_random"]),
    ("min random", lambda r: r["min_random"]),
)


def _mean_ci(diffs: tuple[float | None, ...], level: float = 0.95) -> str:
    """Student-t confidence interval of the mean paired difference (seeds are the samples)."""
    from scipy import stats  # scikit-learn's dependency

    if None in diffs or len(diffs) < 2:
        return "-"
    mean, sem = statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
    half = float(stats.t.ppf(0.5 + level / 2, len(diffs) - 1)) * sem
    return f"{mean - half:+.1f} .. {mean + half:+.1f}"


def summary(args: argparse.Namespace) -> str:
    """Paired differences (first arm minus second, points) of `args.ablation` over every seed in
    OUT/arms.json, per setting (budget, recipe): one row per seed, then the mean, its 95 % confidence
    interval (Student t over seeds) and the number of seeds where the first arm is ahead."""
    cache_path = Path(args.out) / "arms.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    first, second = ABLATIONS[args.ablation][:2]
    groups: dict[str, dict[int, dict[str, dict]]] = {}
    for key, res in cache.items():
        arm, settings = key.split(" | ")
        if arm not in (first, second):
            continue
        parts = settings.split()
        seed = int(next(x for x in parts if x.startswith("seed"))[4:])
        group = " ".join(x for x in parts if not x.startswith("seed"))
        groups.setdefault(group, {}).setdefault(seed, {})[arm] = res
    labels = [c[0] for c in SUMMARY_COLUMNS]
    lines = [
        f"`{ARM_TITLES[first]}` minus `{ARM_TITLES[second]}` (test accuracy points; OUT = {args.out})",
        "",
        "| setting | seed | " + " | ".join(labels) + " |",
        "|---|---:|" + "---:|" * len(labels),
    ]

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:+.1f}"

    def order(group: str) -> tuple:
        epochs = next(int(x[1:]) for x in group.split() if x[:1] == "e" and x[1:].isdigit())
        return ("recipe" in group, group.split(" e")[0], epochs, group)

    for group in sorted(groups, key=order):
        seeds = {s: arms for s, arms in sorted(groups[group].items()) if first in arms and second in arms}
        diffs: dict[int, list[float | None]] = {}
        for seed, arms in seeds.items():
            row = []
            for _, get in SUMMARY_COLUMNS:
                a, b = get(arms[first]), get(arms[second])
                row.append(None if a is None or b is None else 100 * (a - b))
            diffs[seed] = row
            lines.append(f"| {group} | {seed} | " + " | ".join(fmt(x) for x in row) + " |")
        if len(diffs) > 1:
            cols = list(zip(*diffs.values()))
            mean = [statistics.mean(c) if None not in c else None for c in cols]
            ahead = [f"{sum(x > 0 for x in c)}/{len(c)}" if None not in c else "-" for c in cols]
            lines.append(f"| {group} | **mean** | " + " | ".join(f"**{fmt(x)}**" for x in mean) + " |")
            lines.append(f"| {group} | 95 % CI | " + " | ".join(_mean_ci(c) for c in cols) + " |")
            lines.append(f"| {group} | ahead | " + " | ".join(ahead) + " |")
    return "\n".join(lines)


def acceptance(args: argparse.Namespace) -> str:
    """The issue-4 acceptance figures of one seed: a default `qcompile train` run (CLI defaults:
    MobileNetV3 width 0.35, resolutions 24/32, epochs 4,3,3, batch 64), then retraining-free test
    accuracy of the largest at 4/4, the smallest at 2/2 and the median of 20 random {2,3,4} subnets."""
    from qcompile.cli.train_run import train_run

    space = qc.spaces.get_space("mobilenet_v3", num_classes=10, width_mult=0.35, resolutions=(24, 32))
    out = Path(args.out) / f"acceptance-seed{args.seed}"
    t = time.time()
    trainer = train_run(space, "digits", out, seed=args.seed, threads=args.threads, train_config={"progress": False})
    train_s = time.time() - t
    data = load_dataset("digits", resolution=32, in_channels=space.in_channels)
    rng = random.Random(123)
    cfgs = [space.largest(bits=4), space.smallest(bits=2)]
    cfgs += [space.sample(seed=rng.randrange(2**31), bits=(2, 3, 4)) for _ in range(20)]
    acc = evaluate_subnets(trainer.model, space, data, cfgs, calib_batches=8)
    return (
        f"| {args.seed} | {100 * acc[0]:.1f} | {100 * acc[1]:.1f} | {100 * statistics.median(acc[2:]):.1f} "
        f"| {100 * min(acc[2:]):.1f} | {train_s:.0f} | {trainer.global_step} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ablation", choices=sorted(ABLATIONS) + ["acceptance"])
    p.add_argument(
        "--summary", action="store_true", help="print the paired differences over all seeds in OUT/arms.json"
    )
    p.add_argument("--space", default="mobilenet_v3")
    p.add_argument("--width", type=float, default=0.35)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--float-epochs", type=int, default=3, help="shared float supernet epochs")
    p.add_argument("--epochs", type=int, default=2, help="epochs per quantized stage")
    p.add_argument("--idm-weight", type=float, default=0.1)
    p.add_argument(
        "--recipe",
        choices=("default", "qfa"),
        default="default",
        help="QAT recipe of the non-inheritance arms: ours (in-place KD, lr 0.05) or QFA's (QFA_RECIPE)",
    )
    p.add_argument("--subnets", type=int, default=10, help="random subnets evaluated per arm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--force", action="store_true", help="retrain arms found in the cache")
    args = p.parse_args(argv)
    if args.recipe != "default" and args.ablation in ("inheritance", "acceptance"):
        p.error(f"--recipe {args.recipe}: applies to batchquant, two-stage and bitsched, not {args.ablation}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("qcompile.quant.calibration").setLevel(logging.ERROR)
    if args.ablation == "acceptance":
        torch.set_num_threads(args.threads)
        print("| seed | largest @4/4 | smallest @2/2 | median of 20 mixed | min | train s | steps |")
        print(acceptance(args))
    elif args.summary:
        print(summary(args))
    else:
        print(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
