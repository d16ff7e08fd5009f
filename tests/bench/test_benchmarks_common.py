"""`benchmarks._common`, the timing helpers the kernel benchmarks share: the rotation of interleaved rounds, the
minima, the run-queue clock and the rounds parser."""

from __future__ import annotations

import itertools

import pytest

from benchmarks import _common as C


def test_rotating_rounds_visits_every_sampler_once_per_round_in_rotation():
    order: list[str] = []
    counter = itertools.count()

    def sampler(name):
        def f():
            order.append(name)
            return float(next(counter))
        return f

    seen = []
    got = C.rotating_rounds({n: sampler(n) for n in "abc"}, 4, on_round=lambda r, s: seen.append((r, len(s["a"]))))
    assert order == list("abc" "bca" "cab" "abc")
    assert got == {"a": [0.0, 5.0, 7.0, 9.0], "b": [1.0, 3.0, 8.0, 10.0], "c": [2.0, 4.0, 6.0, 11.0]}
    assert seen == [(0, 1), (1, 2), (2, 3), (3, 4)]
    order.clear()
    C.rotating_rounds({n: sampler(n) for n in "abc"}, 3, step=7)  # 7 mod 3 = 1: the same rotation
    assert order == list("abc" "bca" "cab")
    order.clear()
    C.rotating_rounds({n: sampler(n) for n in "abc"}, 2, step=0)
    assert order == list("abcabc")
    assert C.rotating_rounds({}, 3) == {}


def test_time_min_and_median_us_on_a_scripted_clock(monkeypatch):
    # each call of fn advances the clock by the next duration; perf_counter is read before and after it
    durations = iter([0.5, 0.003, 0.001, 0.002])  # the warmup call, then three timed ones
    now = [0.0]

    def fn():
        now[0] += next(durations)

    monkeypatch.setattr(C.time, "perf_counter", lambda: now[0])
    assert C.time_min(fn, number=3, warmup=1) == pytest.approx(0.001)
    durations = iter([1e-6, 5e-6, 3e-6])
    assert C.median_us(fn, 3) == pytest.approx(3.0)


def test_rounds_parser_types_and_description():
    ap = C.rounds_parser("First line.\nMore.", rounds=7, number=50, max_delay_us=20.0)
    a = ap.parse_args([])
    assert (a.rounds, a.number, a.max_delay_us) == (7, 50, 20.0)
    a = ap.parse_args(["--rounds", "3", "--max-delay-us", "2.5"])
    assert (a.rounds, a.max_delay_us) == (3, 2.5) and isinstance(a.number, int)
    assert ap.description == "First line." and C.rounds_parser("A.\nB.", 1, formatter=True).description == "A.\nB."
    with pytest.raises(SystemExit):
        ap.parse_args(["--number", "x"])


def test_run_delay_ns_is_a_monotone_counter():
    a = C.run_delay_ns()
    b = C.run_delay_ns()
    assert 0 <= a <= b
