"""Round-robin timing statistics: latency estimates that survive slow host noise.

On a shared VM the host's speed drifts by +-20 % over tens of seconds (the minima of the same networks moved
that much between two passes two minutes apart), longer than one network's burst of 100 calls (~40 ms). A burst
then measures the host at one moment, and no statistic of the burst (median, minimum, low quantile, median of
chunk minima) reproduces: they all agreed pass to pass within +-10 % for only ~30 % of demo networks in such a
window. So every item (kernel or network) is sampled in many short *rounds* spread over the whole window (each
round visits every item once, in a fresh random order, with a few calls), and its latency is a statistic over
rounds, which sees the same mixture of host states for every item:

    rmin = median over rounds r of (min over the calls of round r)

The per-round minimum drops the calls that a context switch or a cold cache hit within the round; the median
over rounds drops the rounds that fell into a slow phase of the host (a robust location estimate, Chen &
Revels 2016, "Robust benchmarking in noisy environments", use the minimum for the same reason). The
measurement's own reproducibility is the same statistic on the even and on the odd rounds, which are spread
over the same window.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = ["STATISTICS", "round_order", "run_rounds", "round_stat", "item_stats", "split_reproducibility"]

#: what `item_stats` computes: rmin (the round-robin statistic), and the burst-era statistics over all samples
STATISTICS = ("rmin", "median", "min")


def round_order(n_items: int, seed: int, round_index: int) -> list[int]:
    """The order in which round `round_index` visits `n_items` items: a fresh permutation per round, a pure
    function of (seed, round) so a resumed run repeats the orders it would have used."""
    order = list(range(int(n_items)))
    random.Random(f"{seed}:{round_index}").shuffle(order)
    return order


def run_rounds(fns: Sequence[Callable[[], Sequence[float]]], rounds: int, seed: int, start: int = 0,
               progress: bool = True, desc: str = "time") -> Iterator[tuple[int, list[list[float]]]]:
    """The round-robin protocol itself: for each round `r` in `start..rounds-1`, call every item's sampler
    (`fns[i]()`: a few calls or kernel windows, times in ms) once, in the order `round_order(len(fns), seed, r)`,
    and yield `(r, samples)` with `samples[i]` the item's samples of that round (rounded to ns). The caller keeps
    them (a JSON line per round in the benchmark, table entries in `LatencyTable.build`); resuming at `start`
    repeats the orders an uninterrupted run would have used."""
    from tqdm import tqdm

    for r in tqdm(range(int(start), int(rounds)), desc=desc, disable=not progress, unit="round"):
        samples: list = [None] * len(fns)
        for i in round_order(len(fns), seed, r):
            samples[i] = [round(float(x), 6) for x in fns[i]()]
        yield r, samples


def round_stat(rounds: Sequence[Sequence[float]], stat: str = "rmin") -> float:
    """One statistic of an item's samples, grouped by round (`rounds[r]` = the samples of round r, ms).

    `rmin`: median over rounds of the per-round minimum (module docstring); `median` / `min`: over all samples
    pooled (what a burst measurement reports)."""
    rounds = [list(r) for r in rounds if len(r)]
    if not rounds:
        raise ValueError("no samples")
    if stat == "rmin":
        return float(statistics.median(min(r) for r in rounds))
    flat = [x for r in rounds for x in r]
    if stat == "median":
        return float(statistics.median(flat))
    if stat == "min":
        return float(min(flat))
    raise ValueError(f"unknown statistic {stat!r}; one of {STATISTICS}")


def item_stats(rounds: Sequence[Sequence[float]]) -> dict:
    """Every statistic of `STATISTICS` over all rounds, and over the even and the odd rounds on their own
    (`even`/`odd`: None with fewer than two rounds)."""
    out: dict = {f"{s}_ms": round_stat(rounds, s) for s in STATISTICS}
    even, odd = list(rounds[0::2]), list(rounds[1::2])
    out["even"] = {f"{s}_ms": round_stat(even, s) for s in STATISTICS} if even and odd else None
    out["odd"] = {f"{s}_ms": round_stat(odd, s) for s in STATISTICS} if even and odd else None
    return out


def split_reproducibility(items: Sequence[dict], stat: str = "rmin") -> dict:
    """How far the statistic on the odd rounds is from the one on the even rounds, over `items` (`item_stats`
    dicts): the floor that any prediction scored against this measurement can reach."""
    pairs = [(i["even"][f"{stat}_ms"], i["odd"][f"{stat}_ms"]) for i in items if i.get("even") and i.get("odd")]
    if not pairs:
        return {"n": 0}
    a, b = np.array(pairs).T
    rel = np.abs(b - a) / a
    return {
        "n": len(pairs),
        "median_rel_diff": float(np.median(rel)),
        "within_10pct": float(np.mean(rel <= 0.10)),
        "within_5pct": float(np.mean(rel <= 0.05)),
    }
