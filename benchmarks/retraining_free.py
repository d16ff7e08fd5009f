"""The retraining-free promise, measured: subnets extracted from the supernet vs the same subnet trained alone.

QFA (Sec. 1, Table 2) and OQA (Sec. 4.2) claim that a subnet sliced out of the quantized-for-all supernet
(plus BN / BatchQuant calibration) is as accurate as the same architecture and bit policy trained on its own
with QAT. For three architectures of a Pareto set (the smallest, median and largest by float MACs), each at
uniform bits (4/4, 3/3, optionally 2/2), this script measures

- **supernet**: `evaluate_subnets` on the trained supernet run (slice + calibrate on 8 training batches +
  test split), as `qcompile train` and the demo evaluate; also with two more calibration seeds (the noise of
  calibration alone);
- **standalone**: `qcompile.train.train_standalone`: the same supernet module, recipe (`TrainConfig` and phases
  of the run's run.json) and epochs, but one fixed subnet per step. `--init float`: the run's float phase on
  the fixed architecture, then its quantized phases at the fixed policy (what the supernet had);
  `--init scratch`: only the quantized phases, from the random init. The float phase of an (architecture,
  seed) is trained once and shared by every bit policy (checkpoint at the phase boundary: the continuation is
  the same computation as one uninterrupted run).

`--run` takes several supernet runs of the same recipe (comma-separated, e.g. three training seeds): each is
evaluated on the same architectures, and the summary compares the mean over supernets with the mean over
standalone seeds (difference with a Welch t 95 % interval). The standalone recipe is the first run's; the others
must match it but for the seed.

Every finished unit is one JSON file under `OUT/units/` (written atomically); a rerun skips finished units, so
a killed run resumes with at most one unit lost. `--summary` writes `OUT/table.md`.

    R=runs/retraining_free
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.retraining_free \
        --run $R/supernet-seed0,$R/supernet-seed1,$R/supernet-seed2 --pareto $R/demo-search/pareto \
        --seeds 0,1,2 --bits 4,3 --init float --out $R/out
    .venv/bin/python -m benchmarks.retraining_free --summary --out $R/out
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompile.config import SubnetConfig
from qcompile.errors import ConfigError
from qcompile.utils.io import atomic_write_text

log = logging.getLogger("benchmarks.retraining_free")

SIZES = ("small", "middle", "large")
INITS = ("float", "scratch")
CALIB_SEEDS = (1, 2, 3)  # 1 is evaluate_subnets' default: the standard evaluation
# TrainConfig fields that do not change the trained weights: checkpoints and progress bars, and the per-epoch
# validation, which runs on a deep copy of the model.
BOOKKEEPING = frozenset({"seed", "checkpoint_every", "keep_checkpoints", "progress", "evaluate"})
GOAL_POINTS = 1.0  # the retraining-free goal: the supernet's subnet within 1 point of standalone QAT


def pick_subnets(space: Any, configs: Sequence[SubnetConfig]) -> dict[str, SubnetConfig]:
    """Smallest, median and largest distinct architecture (float MACs) of `configs`, policy dropped."""
    from qcompile.search.cost.layers import count_macs

    if not configs:
        raise ConfigError("pareto", [], "a non-empty set of SubnetConfig files")
    archs: dict[str, tuple[int, SubnetConfig]] = {}
    for c in configs:
        a = c.with_policy(None)
        if hasattr(space, "canonical"):
            a = space.canonical(a)
        archs[a.to_json()] = (count_macs(space, a), a)
    ranked = sorted(archs.values(), key=lambda t: (t[0], t[1].to_json()))
    picks = [ranked[0], ranked[(len(ranked) - 1) // 2], ranked[-1]]
    return {name: a for name, (_, a) in zip(SIZES, picks)}


def uniform(space: Any, arch: SubnetConfig, bits: int) -> SubnetConfig:
    return arch.with_policy(space.uniform_policy(bits))


@dataclass(frozen=True)
class Recipe:
    """What the standalone runs copy from the supernet run: phases, TrainConfig (seed replaced), quantizers."""

    phases: tuple
    train: dict
    quantize: dict | None

    @classmethod
    def from_run(cls, doc: dict) -> Recipe:
        from qcompile.train import Phase

        return cls(tuple(Phase.from_dict(p) for p in doc["phases"]), dict(doc["train"]), doc.get("quantize"))

    def check_same(self, other: Recipe, where: str) -> None:
        """Raise `ConfigError` unless `other` has the same phases, quantizers and TrainConfig but for the seed and
        the fields that do not change the trained weights (`BOOKKEEPING`)."""

        def parts(r: Recipe) -> dict[str, str]:
            train = {k: v for k, v in r.train.items() if k not in BOOKKEEPING}
            return {
                "phases": json.dumps([p.to_dict() for p in r.phases], sort_keys=True, default=str),
                **{f"train.{k}": json.dumps(v, sort_keys=True) for k, v in sorted(train.items())},
                "quantize": json.dumps(r.quantize, sort_keys=True),
            }

        a, b = parts(self), parts(other)
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if diff:
            raise ConfigError(
                "--run", where, f"supernet runs of one recipe (this one differs from the first in {', '.join(diff)})"
            )

    def train_config(self, seed: int, progress: bool):
        from qcompile.train import TrainConfig

        # Per-epoch validation runs on a deep copy (it cannot change training) and is skipped for time.
        d = {**self.train, "seed": seed, "evaluate": False, "progress": progress, "checkpoint_every": 0}
        return TrainConfig.from_dict(d)

    def split(self, init: str) -> tuple[list, int]:
        """(phases of the standalone run, number of leading float phases shared across policies)."""
        n_float = 0
        for p in self.phases:
            if p.bits is not None:
                break
            n_float += 1
        if init == "float":
            return list(self.phases), n_float
        return list(self.phases[n_float:]), 0


def _load_units(out: Path) -> dict[str, dict]:
    units = {}
    for f in sorted((out / "units").glob("*.json")):
        units[f.stem] = json.loads(f.read_text())
    return units


def _write_unit(out: Path, key: str, rec: dict) -> None:
    atomic_write_text(out / "units" / f"{key}.json", json.dumps(rec, indent=1, sort_keys=True))


def _env() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    import torch

    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "load": load}


def _check_inits(inits: Sequence[str]) -> None:
    bad = [i for i in inits if i not in INITS]
    if bad:
        raise ConfigError("--init", bad[0], INITS)


def run(space: Any, qnet: Any, data: Any, recipe: Recipe, subnets: dict[str, SubnetConfig], *, bits: Sequence[int],
        out: Path, calib_batches: int = 8, supernet_label: str = "seed0", **standalone: Any) -> dict[str, dict]:
    """Measure every unit not yet in `out/units/`: the supernet's (`run_supernet`), then the standalone ones
    (`run_standalone`, which takes the other keywords: `seeds`, `inits`, `progress`); returns all units by key."""
    _check_inits(standalone.get("inits", ()))
    run_supernet(space, qnet, data, subnets, bits=bits, out=out, calib_batches=calib_batches, label=supernet_label)
    return run_standalone(space, data, recipe, subnets, bits=bits, out=out, calib_batches=calib_batches, **standalone)


def _prepare(out: Path, subnets: dict[str, SubnetConfig]) -> dict[str, dict]:
    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    text = json.dumps({k: v.to_dict() for k, v in subnets.items()}, indent=1)
    old = out / "subnets.json"
    # Units of different supernets are compared per architecture: one OUT holds one set of architectures.
    if old.is_file() and json.loads(old.read_text()) != json.loads(text):
        raise ConfigError("--pareto", str(old), "the architectures this OUT was started with (another --out)")
    atomic_write_text(old, text)
    return _load_units(out)


def run_supernet(
    space: Any,
    qnet: Any,
    data: Any,
    subnets: dict[str, SubnetConfig],
    *,
    bits: Sequence[int],
    out: Path,
    calib_batches: int = 8,
    label: str = "seed0",
) -> dict[str, dict]:
    """Evaluate each subnet x bits on the trained supernet `qnet` (calibration seeds `CALIB_SEEDS`) into
    `out/units/supernet-LABEL-*.json`, skipping finished units; returns all units by key."""
    from qcompile.search.cost.layers import count_macs
    from qcompile.train import evaluate_subnets

    out = Path(out)
    done = _prepare(out, subnets)
    # Cheap: one calibration + test pass per config and calibration seed.
    for name, arch in subnets.items():
        for b in bits:
            key = f"supernet-{label}-{name}-w{b}"
            if key in done:
                continue
            cfg = uniform(space, arch, b)
            t0, c0 = time.perf_counter(), time.process_time()
            accs = [
                evaluate_subnets(qnet, space, data, [cfg], calib_batches=calib_batches, seed=s)[0] for s in CALIB_SEEDS
            ]
            done[key] = {
                "kind": "supernet",
                "supernet": label,
                "subnet": name,
                "bits": b,
                "config": cfg.to_dict(),
                "macs": count_macs(space, arch),
                "accuracy": accs[0],
                "calib_seeds": list(CALIB_SEEDS),
                "accuracy_by_calib_seed": accs,
                "wall_s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
                **_env(),
            }
            _write_unit(out, key, done[key])
            log.info("%s: %.2f %%", key, 100 * accs[0])
    return done


def run_standalone(
    space: Any,
    data: Any,
    recipe: Recipe,
    subnets: dict[str, SubnetConfig],
    *,
    bits: Sequence[int],
    seeds: Sequence[int],
    inits: Sequence[str],
    out: Path,
    calib_batches: int = 8,
    progress: bool = True,
) -> dict[str, dict]:
    """Train and evaluate every standalone unit (seed x init x subnet x bits) not yet in `out/units/`."""
    from tqdm import tqdm

    from qcompile.train import evaluate_subnets, train_standalone

    _check_inits(inits)
    out = Path(out)
    done = _prepare(out, subnets)

    # Standalone side: seed-major, so the first seeds are complete if the run is stopped early.
    todo = [
        (s, init, name, b)
        for s in seeds
        for init in inits
        for name in subnets
        for b in bits
        if f"standalone-{name}-w{b}-{init}-s{s}" not in done
    ]
    for s, init, name, b in tqdm(todo, desc="standalone units", disable=not progress):
        key = f"standalone-{name}-w{b}-{init}-s{s}"
        arch = subnets[name]
        cfg = uniform(space, arch, b)
        phases, n_float = recipe.split(init)
        tcfg = recipe.train_config(s, False)
        t0, c0 = time.perf_counter(), time.process_time()
        start, shared_cpu, trained_float = None, 0.0, False
        if n_float:
            ckpt_dir = out / "float" / f"{name}-s{s}"
            meta_file = ckpt_dir / "unit.json"
            if not meta_file.is_file():
                tr = train_standalone(
                    space, cfg, data, phases, tcfg, quantize_options=recipe.quantize, stop_after=n_float
                )
                path = tr.save(ckpt_dir)
                trained_float = True
                atomic_write_text(
                    meta_file,
                    json.dumps(
                        {
                            "checkpoint": str(path.relative_to(out)),
                            "cpu_s": time.process_time() - c0,
                            "wall_s": time.perf_counter() - t0,
                        }
                    ),
                )
            shared = json.loads(meta_file.read_text())
            start, shared_cpu = out / shared["checkpoint"], shared["cpu_s"]
        tr = train_standalone(space, cfg, data, phases, tcfg, quantize_options=recipe.quantize, start=start)
        acc = evaluate_subnets(tr.model, space, data, [cfg], calib_batches=calib_batches)[0]
        done[key] = {
            "kind": "standalone",
            "subnet": name,
            "bits": b,
            "init": init,
            "seed": s,
            "config": cfg.to_dict(),
            "accuracy": acc,
            "steps": tr.global_step,
            "final_loss": tr.history[-1]["loss"] if tr.history else None,
            "phases": [p.to_dict() for p in phases],
            "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "float_phase_cpu_s": shared_cpu,
            "trained_float": trained_float,
            **_env(),
        }
        _write_unit(out, key, done[key])
        log.info("%s: %.2f %%", key, 100 * acc)
    return done


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's t interval for a difference of means with unequal variances
    (Welch-Satterthwaite degrees of freedom). NaN bounds when a side has fewer than two values."""
    from scipy import stats

    d = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, d, d
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    h = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return d, d - h, d + h


def verdict(low: float, high: float, goal: float = GOAL_POINTS) -> str:
    """Whether "the supernet's subnet is within `goal` points of standalone QAT (or better)" holds for a
    difference interval [low, high] in points: yes (the whole interval is above -goal), no (the whole interval
    is below -goal), or undecided (the interval contains -goal, or there is none)."""
    if math.isnan(low):
        return "undecided (no interval)"
    if low >= -goal:
        return "yes"
    if high < -goal:
        return "no"
    return "undecided"


def summarize(units: dict[str, dict]) -> str:
    """Markdown table: per subnet, bits and init, the supernet mean +- sd over supernet runs (calibration seed 1)
    vs the standalone mean +- sd over seeds, their difference with a Welch t 95 % interval, and the verdict on
    the goal (within `GOAL_POINTS` at these bits)."""
    rows = []
    sup: dict[tuple[str, int], list[dict]] = {}
    for u in units.values():
        if u["kind"] == "supernet":
            sup.setdefault((u["subnet"], u["bits"]), []).append(u)
    std = [u for u in units.values() if u["kind"] == "standalone"]
    head = (
        "| subnet | MACs | bits | supernet mean ± sd (n) | per supernet: calib seed 1 (seeds 1-3 mean) | init "
        "| standalone mean ± sd (n) | per seed | supernet − standalone [95 % CI] | within 1 point? |\n"
        "|---|---:|---:|---|---|---|---|---|---|---|"
    )

    def order(k):
        return (SIZES.index(k[0]) if k[0] in SIZES else 9, -k[1])

    def mean_sd(xs: list[float]) -> str:
        if len(xs) < 2:
            return f"{statistics.fmean(xs):.1f} ({len(xs)})"
        return f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs):.1f} ({len(xs)})"

    for name, b in sorted(sup, key=order):
        sups = sorted(sup[(name, b)], key=lambda u: str(u.get("supernet")))
        s_acc = [100 * u["accuracy"] for u in sups]
        per_sup = ", ".join(
            f"{u.get('supernet')} {100 * u['accuracy']:.1f} ({100 * statistics.fmean(u['accuracy_by_calib_seed']):.1f})"
            for u in sups
        )
        for init in INITS:
            runs = sorted(
                (u for u in std if u["subnet"] == name and u["bits"] == b and u["init"] == init),
                key=lambda u: u["seed"],
            )
            if not runs:
                continue
            accs = [100 * u["accuracy"] for u in runs]
            per = ", ".join(f"s{u['seed']} {a:.1f}" for u, a in zip(runs, accs))
            d, lo, hi = welch_interval(s_acc, accs)
            ci = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" if not math.isnan(lo) else f"{d:+.1f}"
            rows.append(
                f"| {name} | {sups[0].get('macs', '')} | {b}/{b} | {mean_sd(s_acc)} | {per_sup} | {init} "
                f"| {mean_sd(accs)} | {per} | {ci} | {verdict(lo, hi)} |"
            )
    # A unit's cpu_s includes the float phase only if that unit trained it; a float phase whose unit was
    # stopped before it finished is added from the other units' record of it, so each counts once.
    cpu = sum(u.get("cpu_s", 0.0) for u in units.values())
    floats = {(u["subnet"], u["seed"]): u.get("float_phase_cpu_s", 0.0) for u in std if u["init"] == "float"}
    cpu += sum(floats.values()) - sum(u.get("float_phase_cpu_s", 0.0) for u in std if u.get("trained_float"))
    loads = [u["load"][0] for u in units.values() if "load" in u]
    tail = (
        f"\n\n{len(std)} standalone runs, CPU time {cpu:.0f} s in all (float phases counted once); "
        f"1-min load average at unit ends {min(loads):.1f}-{max(loads):.1f}."
        if loads
        else ""
    )
    return head + "\n" + "\n".join(rows) + tail + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run",
        default="runs/retraining_free/supernet-seed0",
        help="trained supernet run directories, comma-separated (runs of one recipe, e.g. three training seeds)",
    )
    ap.add_argument(
        "--supernet-label", default=None, help="names of the supernets in unit keys, comma-separated (default: seed<S>)"
    )
    ap.add_argument(
        "--pareto",
        default="runs/retraining_free/demo-search/pareto",
        help="directory of Pareto SubnetConfig JSON files (a SearchResult's pareto/)",
    )
    ap.add_argument("--seeds", default="0,1,2", help="standalone seeds, comma-separated")
    ap.add_argument("--bits", default="4,3", help="uniform bit-widths, comma-separated")
    ap.add_argument("--init", default="float", help="comma-separated: float (float phase first), scratch")
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/retraining_free/out")
    ap.add_argument("--summary", action="store_true", help="only write OUT/table.md from the finished units")
    ap.add_argument("--supernet-only", action="store_true", help="evaluate the supernets, train no standalone run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    if args.summary:
        text = summarize(_load_units(out))
        atomic_write_text(out / "table.md", text)
        print(text)
        return 0

    import torch

    from qcompile.artifacts import load_run
    from qcompile.data import load_dataset
    from qcompile.search.cost.layers import count_macs

    torch.set_num_threads(args.threads)
    run_dirs = [r for r in args.run.split(",") if r]
    labels = args.supernet_label.split(",") if args.supernet_label else [None] * len(run_dirs)
    if len(labels) != len(run_dirs):
        raise ConfigError("--supernet-label", args.supernet_label, f"one label per --run ({len(run_dirs)})")
    bits = [int(b) for b in args.bits.split(",")]
    first = None  # (space, data, recipe, subnets) of the first run: the standalone recipe and the architectures
    seen: set[str] = set()
    for run_dir, label in zip(run_dirs, labels):
        space, qnet, doc = load_run(run_dir)
        recipe = Recipe.from_run(doc)
        label = label or f"seed{doc['train']['seed']}"
        if label in seen:
            raise ConfigError("--run", run_dir, f"runs with distinct labels ({label!r} twice; see --supernet-label)")
        seen.add(label)
        if first is None:
            files = sorted(Path(args.pareto).glob("*.json"))
            subnets = pick_subnets(space, [SubnetConfig.from_json(f.read_text()) for f in files])
            for name, a in subnets.items():
                log.info("%s: %s MACs, %s", name, count_macs(space, a), a.to_json())
            data = load_dataset(doc["data"], resolution=max(space.resolutions), in_channels=space.in_channels)
            first = (space, data, recipe, subnets)
        else:
            if json.dumps(space.to_dict(), sort_keys=True) != json.dumps(first[0].to_dict(), sort_keys=True):
                raise ConfigError("--run", run_dir, "supernet runs of one space (the first run's)")
            first[2].check_same(recipe, run_dir)
        run_supernet(
            space, qnet, first[1], first[3], bits=bits, out=out, calib_batches=args.calib_batches, label=label
        )
    if not args.supernet_only and first is not None:
        space, data, recipe, subnets = first
        run_standalone(
            space,
            data,
            recipe,
            subnets,
            bits=bits,
            seeds=[int(s) for s in args.seeds.split(",")],
            inits=args.init.split(","),
            out=out,
            calib_batches=args.calib_batches,
        )
    text = summarize(_load_units(out))
    atomic_write_text(out / "table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
