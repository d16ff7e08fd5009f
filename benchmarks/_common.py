"""Timing helpers shared by the kernel and overhead benchmarks: interleaved rounds, minima, their CLI options.

Why interleaved rounds and minima: this 2-vCPU machine is shared, and its host is sometimes slowed from outside
the VM for minutes (`qcompile.bench.hostprobe`), so variants timed one after the other see different machines.
Visiting every variant once per round, in a rotating order, gives each the same mix of quiet and disturbed
moments; the fastest call is the kernel's own speed (a parallel kernel whose second core is taken waits for
it, which inflates means and medians by up to 10x)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

__all__ = ["clean_minima", "median_us", "rotating_rounds", "rounds_parser", "run_delay_ns", "time_min"]

K = TypeVar("K", bound=Hashable)


def rounds_parser(doc: str, rounds: int, formatter: bool = False, **options: int | float) -> argparse.ArgumentParser:
    """The argument parser of a benchmark timed in rounds: `--rounds` (default `rounds`), then one `--<name>` per
    keyword (underscores become dashes; its type is its default's). `formatter=False`: the description is the
    docstring's first line; True: the whole docstring, kept as written (`RawDescriptionHelpFormatter`)."""
    ap = (argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter) if formatter
          else argparse.ArgumentParser(description=doc.splitlines()[0]))
    ap.add_argument("--rounds", type=int, default=rounds)
    for name, default in options.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    return ap


def time_min(fn: Callable[[], object], number: int = 100, warmup: int = 5) -> float:
    """Fastest single call of `number` (seconds), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(number):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def median_us(fn: Callable[[], object], n: int) -> float:
    """Median wall time (us) of `n` back-to-back calls of `fn`."""
    ts = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        fn()
        ts[i] = time.perf_counter() - t
    return float(np.median(ts) * 1e6)


def rotating_rounds(samplers: Mapping[K, Callable[[], float]], rounds: int, step: int = 1,
                    on_round: Callable[[int, dict[K, list[float]]], object] | None = None) -> dict[K, list[float]]:
    """`rounds` interleaved rounds: round r calls every sampler once, starting at index (r * step) mod n of
    `samplers`' order and wrapping around, and keeps what each returns; `on_round(r, samples)` after each round.
    Returns every sampler's values in round order."""
    names = list(samplers)
    samples: dict[K, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        k = (r * step) % max(1, len(names))
        for name in names[k:] + names[:k]:
            samples[name].append(samplers[name]())
        if on_round is not None:
            on_round(r, samples)
    return samples


def run_delay_ns() -> int:
    """Nanoseconds the threads of this process have spent waiting on a run queue (Linux schedstat; 0 elsewhere)."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


def clean_minima(jobs: list[tuple[Any, str, Any, list]], rounds: int, max_delay_us: float) -> tuple[dict, dict]:
    """Minima (us) per (threads, shape, variant) of TVM `time_evaluator` jobs `(shape, variant, evaluator, args)`,
    timed in `rounds` rounds at 1 and 2 threads of TVM's pool, the job order and the thread counts reversed every
    other round; a sample counts ("clean") only when no thread of this process waited on a run queue more than
    `max_delay_us` during it (`run_delay_ns`). Returns the minima over clean samples (over all samples for a key
    without one clean sample) and the count of clean samples per key."""
    from qcompile.backends.tvm.threads import pool_threads

    best: dict = {(t, s, v): float("inf") for t in (1, 2) for s, v, *_ in jobs}
    every = dict(best)
    clean = dict.fromkeys(best, 0)
    for r in range(rounds):
        for t in ((1, 2) if r % 2 == 0 else (2, 1)):
            with pool_threads(t):
                for s, v, ev, args in (jobs if r % 2 == 0 else jobs[::-1]):
                    d0 = run_delay_ns()
                    val = min(ev(*args).results) * 1e6
                    every[(t, s, v)] = min(every[(t, s, v)], val)
                    if run_delay_ns() - d0 <= max_delay_us * 1e3:
                        clean[(t, s, v)] += 1
                        best[(t, s, v)] = min(best[(t, s, v)], val)
        time.sleep(0.02)
    # a variant without one clean sample keeps its minimum over all samples (the tables mark that with *)
    return {key: (val if clean[key] else every[key]) for key, val in best.items()}, clean


def _set_environment(values: Mapping[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """`os.environ` with `values` set (None: the variable removed) inside the block, every variable as it was after."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)
