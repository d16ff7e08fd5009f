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

Every finished unit is one JSON file under `OUT/units/` (written atomically); a rerun skips finished units, so
a killed run resumes with at most one unit lost. `--summary` writes `OUT/table.md`.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.retraining_free \
        --run runs/retraining_free/supernet-seed0 --pareto runs/retraining_free/demo-search/pareto \
        --seeds 0,1,2 --bits 4,3 --init float --out runs/retraining_free/out
    .venv/bin/python -m benchmarks.retraining_free --summary --out runs/retraining_free/out
"""

from __future__ import annotations

import argparse
import json
import logging
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


def run(
    space: Any,
    qnet: Any,
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
    supernet_label: str = "seed0",
) -> dict[str, dict]:
    """Measure every unit not yet in `out/units/`; returns all units (old and new) by key."""
    from tqdm import tqdm

    from qcompile.search.cost.layers import count_macs
    from qcompile.train import evaluate_subnets, train_standalone

    bad = [i for i in inits if i not in INITS]
    if bad:
        raise ConfigError("--init", bad[0], INITS)
    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "subnets.json", json.dumps({k: v.to_dict() for k, v in subnets.items()}, indent=1))
    done = _load_units(out)

    # Supernet side: cheap (one calibration + test pass per config and calibration seed).
    for name, arch in subnets.items():
        for b in bits:
            key = f"supernet-{supernet_label}-{name}-w{b}"
            if key in done:
                continue
            cfg = uniform(space, arch, b)
            t0, c0 = time.perf_counter(), time.process_time()
            accs = [
                evaluate_subnets(qnet, space, data, [cfg], calib_batches=calib_batches, seed=s)[0] for s in CALIB_SEEDS
            ]
            done[key] = {
                "kind": "supernet",
                "supernet": supernet_label,
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


def summarize(units: dict[str, dict]) -> str:
    """Markdown table: per subnet and bits, supernet accuracy vs standalone mean +- std over seeds."""
    rows = []
    labels = {u.get("supernet") for u in units.values() if u["kind"] == "supernet"}
    if len(labels) > 1:
        raise ConfigError("units of supernets", sorted(map(str, labels)), "one supernet per OUT directory")
    sup = {(u["subnet"], u["bits"]): u for u in units.values() if u["kind"] == "supernet"}
    std = [u for u in units.values() if u["kind"] == "standalone"]
    head = (
        "| subnet | MACs | bits | supernet (calib seeds 1 / 2 / 3) | init | standalone mean ± std (n) "
        "| per seed | supernet − standalone |\n|---|---:|---:|---|---|---|---|---:|"
    )

    def order(k):
        return (SIZES.index(k[0]) if k[0] in SIZES else 9, -k[1])

    for name, b in sorted(sup, key=order):
        s = sup[(name, b)]
        by = "/".join(f"{100 * a:.1f}" for a in s["accuracy_by_calib_seed"])
        for init in INITS:
            runs = sorted(
                (u for u in std if u["subnet"] == name and u["bits"] == b and u["init"] == init),
                key=lambda u: u["seed"],
            )
            if not runs:
                continue
            accs = [100 * u["accuracy"] for u in runs]
            mean = statistics.fmean(accs)
            sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
            per = ", ".join(f"s{u['seed']} {a:.1f}" for u, a in zip(runs, accs))
            rows.append(
                f"| {name} | {s.get('macs', '')} | {b}/{b} | {100 * s['accuracy']:.1f} ({by}) | {init} "
                f"| {mean:.1f} ± {sd:.1f} ({len(accs)}) | {per} | {100 * s['accuracy'] - mean:+.1f} |"
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
    ap.add_argument("--run", default="runs/retraining_free/supernet-seed0", help="trained supernet run directory")
    ap.add_argument("--supernet-label", default=None, help="name of the supernet in unit keys (default: seed<S>)")
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
    space, qnet, doc = load_run(args.run)
    files = sorted(Path(args.pareto).glob("*.json"))
    subnets = pick_subnets(space, [SubnetConfig.from_json(f.read_text()) for f in files])
    for name, a in subnets.items():
        log.info("%s: %s MACs, %s", name, count_macs(space, a), a.to_json())
    data = load_dataset(doc["data"], resolution=max(space.resolutions), in_channels=space.in_channels)
    label = args.supernet_label or f"seed{doc['train']['seed']}"
    run(
        space,
        qnet,
        data,
        Recipe.from_run(doc),
        subnets,
        bits=[int(b) for b in args.bits.split(",")],
        seeds=[int(s) for s in args.seeds.split(",")],
        inits=args.init.split(","),
        out=out,
        calib_batches=args.calib_batches,
        supernet_label=label,
    )
    text = summarize(_load_units(out))
    atomic_write_text(out / "table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
