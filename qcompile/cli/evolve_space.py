"""`qcompile evolve-space`: SpaceEvo space search (block-wise lookup table, Q-T score, aging evolution vs random).

Writes into `--out`: `table.json` (the block-wise NSR lookup table, reused when its key matches),
`space.json` (the best space: `qcompile train --space-json OUT/space.json`), `history.json`
(every evaluated space of evolution and of random search with the same number of spaces),
`evolution_state.json` (resumable state) and `best_score.png`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("qcompile")


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(t) for t in text.replace(",", " ").split())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected latencies in ms like 0.2,0.3,0.5, got {text!r}") from e
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one latency constraint")
    return vals


def add_parser(sub) -> None:
    s = sub.add_parser("evolve-space", help="SpaceEvo: search a quantization-friendly search space (Q-T score)")
    s.add_argument("--data", default="digits", help="dataset of the block-wise distillation (digits)")
    s.add_argument("--target", default="x86", help="latency target (x86 | arm_cpu)")
    s.add_argument("--latency", default="kernels",
                   help="Q-T latency: kernels = our INT8 kernels timed on this host (built once into --latency-dir, "
                        "minutes), mac = MAC-count stand-in")
    s.add_argument("--input-widths", default="all",
                   help="stage latency at every input width (all) or at the smallest and largest, interpolated "
                        "between (ends: ~4x fewer dry lowerings for --latency kernels)")
    s.add_argument("--latency-dir", default=None, help="kernel timing cache (default: latency/ next to the table)")
    s.add_argument("--constraints", type=_floats, default=(0.2, 0.3, 0.5), help="latency constraints in ms")
    s.add_argument("--cycles", type=int, required=True, help="Algorithm 1 cycles (2 new spaces each)")
    s.add_argument("--population", type=int, default=None, help="P (default max(4, cycles/4))")
    s.add_argument("--sample", type=int, default=None, help="S (default max(2, P/4))")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--table", default=None, help="lookup table JSON (default OUT/table.json; built once)")
    s.add_argument("--bkd-archs", type=int, default=None, help="stage-architectures per table stage (default 24)")
    s.add_argument("--bkd-epochs", type=_floats, default=None, help="teacher,float,int8 epochs (default 10,1,1)")
    s.add_argument("--resume", action="store_true", help="continue OUT/evolution_state.json")
    s.add_argument("--threads", type=int, default=1, help="torch threads for distillation")
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(fn=cmd_evolve_space)


def cmd_evolve_space(args) -> int:
    import torch

    from qcompile.errors import ConfigError
    from qcompile.search.space_evolution import (
        INPUT_WIDTHS,
        LATENCY_KINDS,
        EvolutionSettings,
        QTScorer,
        aging_evolution,
        latency_model,
        plot_best_scores,
        random_search_spaces,
    )
    from qcompile.spaces.hyperspace import digits_hyperspace
    from qcompile.train.blockwise import BKDSettings, build_or_load_table
    from qcompile.utils.io import atomic_write_text

    if args.cycles < 1:
        raise ConfigError("--cycles", args.cycles, ">= 1")
    if args.data != "digits":
        raise ConfigError("--data", args.data, "digits (the hyperspace is scaled for it)")
    if args.threads < 1:
        raise ConfigError("--threads", args.threads, ">= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bkd = {}
    if args.bkd_archs is not None:
        bkd["archs_per_stage"] = args.bkd_archs
    if args.bkd_epochs is not None:
        if len(args.bkd_epochs) != 3:
            raise ConfigError("--bkd-epochs", args.bkd_epochs, "three numbers: teacher, float, int8 epochs")
        bkd.update(teacher_epochs=int(args.bkd_epochs[0]), float_epochs=int(args.bkd_epochs[1]),
                   int8_epochs=int(args.bkd_epochs[2]))
    hyper = digits_hyperspace()
    table_path = Path(args.table) if args.table else out / "table.json"
    # checked before minutes of distillation and kernel timing
    if args.target not in ("x86", "arm_cpu"):
        raise ConfigError("target", args.target, ("x86", "arm_cpu"))
    if args.latency not in LATENCY_KINDS:
        raise ConfigError("--latency", args.latency, LATENCY_KINDS)
    if args.input_widths not in INPUT_WIDTHS:
        raise ConfigError("--input-widths", args.input_widths, INPUT_WIDTHS)
    if any(not t > 0 for t in args.constraints):
        raise ConfigError("constraints", args.constraints, "positive latencies in ms")
    table = build_or_load_table(table_path, hyper, args.data, seed=0, settings=BKDSettings(**bkd), progress=True)
    latency_dir = Path(args.latency_dir or table_path.parent / "latency")
    latency = latency_model(args.target, args.latency, cache_dir=latency_dir, hyper=hyper, progress=True)
    log.info("Q-T latency: %s", latency.describe())
    scorer = QTScorer(table, args.constraints, latency, seed=args.seed, input_widths=args.input_widths)
    pop = args.population or max(4, args.cycles // 4)
    n_spaces = pop + 2 * args.cycles
    settings = EvolutionSettings(n_spaces=n_spaces, population=pop, sample=args.sample or max(2, pop // 4),
                                 seed=args.seed)
    evo = aging_evolution(scorer, settings, state_path=out / "evolution_state.json", resume=args.resume,
                          progress=True)
    getattr(latency, "flush", lambda: None)()
    rnd = random_search_spaces(scorer, len(evo.history), seed=args.seed)
    best = evo.best
    cand = hyper.from_encoding(best["encoding"])
    space = cand.build()
    atomic_write_text(out / "space.json", space.to_json())
    doc = {
        "constraints_ms": list(args.constraints),
        "target": args.target,
        "latency": args.latency,
        "input_widths": args.input_widths,
        "latency_model": latency.describe(),
        "score": "Q-T, SpaceEvo Eq. 2: sum over constraints of the mean 1/NSR-loss of the top-k subnets under it",
        "settings": {"n_spaces": n_spaces, "population": pop, "sample": settings.sample, "seed": args.seed,
                     "n_samples": scorer.n_samples, "top_k": scorer.top_k},
        "best": {"encoding": best["encoding"], "score": best["score"],
                 "per_constraint": scorer.per_constraint(cand)},
        "random_best": rnd.best,
        "evolution": evo.to_dict(),
        "random": rnd.to_dict(),
    }
    atomic_write_text(out / "history.json", json.dumps(doc, indent=1))
    plot_best_scores({"aging evolution": [evo], "random search": [rnd]}, out / "best_score.png",
                     title=f"SpaceEvo on digits, constraints {list(args.constraints)} ms, {latency.describe()[:22]}...")
    print(f"best space {best['encoding']} (Q-T {best['score']:.4f}; random search best {rnd.best['score']:.4f} "
          f"over {len(rnd.history)} spaces)")
    print(f"latency ({args.latency}): {latency.describe()}")
    print(f"written: {out / 'space.json'}, {out / 'history.json'}, {out / 'best_score.png'}")
    return 0


__all__ = ["add_parser", "cmd_evolve_space"]
