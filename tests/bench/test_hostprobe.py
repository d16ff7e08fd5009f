"""The host memory probe (`qcompile.bench.hostprobe`) and its place in the harness: the probe's fields against
their formulas on a scripted clock, the quiet-round rule on synthetic values, the quiet medians, the bench.md
lines, and a harness run recording one probe per round outside every timed call."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcompile.bench import BenchOptions, run_bench
from qcompile.bench import hostprobe as hp
from qcompile.bench.fidelity import Fidelity
from qcompile.bench.harness import _stats
from qcompile.bench.report import host_probe_lines, to_markdown
from qcompile.bench.result import BenchResult, RunnerStats
from qcompile.bench.timing import time_runners
from qcompile.errors import ConfigError


def test_probe_fields_follow_their_formulas(monkeypatch):
    """Two passes on a scripted clock: stream takes 4 then 2 ms, the gather 3 then 5 ms -> best 2 and 3 ms."""
    probe = hp.HostProbe(mb=1, passes=2, lines=1000)
    ticks = iter([10.0,  # start
                  10.0, 10.004, 10.007,  # pass 1: stream 4 ms, gather 3 ms
                  11.0, 11.002, 11.007,  # pass 2: stream 2 ms, gather 5 ms
                  11.5])  # end
    monkeypatch.setattr(hp.time, "perf_counter", lambda: next(ticks))
    r = probe()
    assert probe.buf.nbytes == 2**20
    assert r.stream_gbs == pytest.approx(2**20 / 0.002 / 1e9)
    assert r.line_ns == pytest.approx(0.003 / 1000 * 1e9)
    assert r.probe_ms == pytest.approx(1500.0)


def test_probe_reads_distinct_random_lines_and_real_numbers():
    probe = hp.HostProbe(mb=1, passes=1, lines=2048, seed=3)
    lines = probe.idx // 8
    assert len(set(lines.tolist())) == 2048 and lines.max() < 2**20 // 64 and (probe.idx % 8 == 0).all()
    assert not np.array_equal(lines, np.sort(lines))  # random order, not a prefetchable stride
    r = probe()
    assert np.isfinite([r.stream_gbs, r.line_ns, r.probe_ms]).all() and min(r.stream_gbs, r.line_ns, r.probe_ms) > 0
    with pytest.raises(ConfigError, match="host_probe_mb"):
        hp.HostProbe(mb=0)
    with pytest.raises(ConfigError, match="lines"):
        hp.HostProbe(mb=1, lines=2**20 // 64 + 1)


def test_quiet_rounds_is_within_pct_of_the_best_line_rate():
    ns = [2.0, 2.5, 2.6, 5.0, 2.1]
    # pct 20: ceiling = 2.0 / 0.8 = 2.5 ns (line rate 0.4 /ns = 80 % of the best 0.5): 2.5 is in, 2.6 is out
    assert hp.quiet_rounds(ns, 20) == [True, True, False, False, True]
    assert hp.quiet_rounds(ns, 0) == [True, False, False, False, False]
    assert hp.quiet_rounds(ns, 60) == [True] * 5  # ceiling 5.0
    assert hp.quiet_rounds([], 10) == []
    for bad in (-1, 100, float("nan")):
        with pytest.raises(ConfigError, match="quiet_pct"):
            hp.quiet_rounds(ns, bad)


def test_summary_and_quiet_medians():
    readings = [hp.ProbeReading(g, ns, 3.0) for g, ns in ((40.0, 2.0), (38.0, 2.2), (20.0, 6.0), (39.0, 2.4))]
    s = hp.summary(readings, 20, 16)  # ceiling 2.5 ns
    assert s["quiet"] == [True, True, False, True] and s["n_quiet"] == 3 and s["quiet_by"] == "line_ns"
    assert (s["median_gbs"], s["min_gbs"], s["best_gbs"]) == (38.5, 20.0, 40.0)
    assert s["line_ns"] == [2.0, 2.2, 6.0, 2.4]
    assert (s["median_line_ns"], s["best_line_ns"], s["worst_line_ns"]) == (pytest.approx(2.3), 2.0, 6.0)
    st = _stats("r", [0.001, 0.002, 0.010, 0.003], Fidelity(), "process", s["quiet"])
    assert st.median_ms == pytest.approx(2.5) and st.median_quiet_ms == pytest.approx(2.0) and st.n_quiet == 3
    # no probe, or a flag list that does not match the samples: no quiet median
    assert _stats("r", [0.001, 0.002], Fidelity()).median_quiet_ms is None
    assert _stats("r", [0.001, 0.002], Fidelity(), quiet=[True]).n_quiet == 0


def _result(quiet):
    readings = [hp.ProbeReading(g, ns, 3.0) for g, ns in ((40.0, 2.0), (38.0, 2.2), (20.0, 6.0), (39.0, 2.4))]
    rows = (RunnerStats("a", "ok", 2.5, 1.0, 9.0, 1.0, 4.0, 4, median_quiet_ms=2.0, n_quiet=3),
            RunnerStats("b", "unavailable: no"))
    return BenchResult(rows, {"host_probe": hp.summary(readings, quiet, 16)})


def test_bench_md_lines():
    lines = "\n".join(host_probe_lines(_result(20)))
    assert "gather median 2.30 ns per line, best 2.00, worst 6.00" in lines
    assert "streaming read median 38.5 GB/s, minimum 20.0, best 40.0" in lines and "**3 of 4 rounds quiet**" in lines
    assert "within 20 % of the best" in lines and "16 MiB" in lines
    assert "| runner | median ms, all 4 rounds | median ms, quiet rounds | quiet rounds |" in lines
    assert "| a | 2.50 | 2.00 | 3 |" in lines and "| b |" not in lines
    assert "Fewer than half" not in lines
    assert "Fewer than half the rounds were quiet" in "\n".join(host_probe_lines(_result(0)))  # 1 of 4
    assert host_probe_lines(BenchResult(())) == []
    assert lines in to_markdown(_result(20))


def test_probe_runs_at_the_start_of_every_round_outside_timed_calls():
    events: list[str] = []
    runners = {n: (lambda x, n=n: events.append(n)) for n in ("a", "b")}
    samples = time_runners(runners, np.zeros(1), repeats=3, warmup=0, before_round=lambda r: events.append(f"p{r}"))
    assert events == ["p0", "a", "b", "p1", "b", "a", "p2", "a", "b"]
    assert all(len(v) == 3 for v in samples.values())


def test_harness_records_one_probe_per_round(tiny_model, tiny_input, tmp_path):
    opts = BenchOptions(threads=1, repeats=3, warmup=0, peers=("torch_fp32",), isolation="none", settle_ms=0,
                        lead_in_ms=0, host_probe_mb=2, quiet_pct=20)
    res = run_bench(tiny_model, tiny_input, options=opts, out_dir=tmp_path)
    m = json.loads((tmp_path / "bench.json").read_text())["meta"]
    p = m["host_probe"]
    assert len(p["stream_gbs"]) == len(p["line_ns"]) == len(p["quiet"]) == 3 and p["mb"] == 2
    assert p["quiet"] == hp.quiet_rounds(p["line_ns"], 20) and p["n_quiet"] == sum(p["quiet"]) >= 1
    row = res.by_name()["torch_fp32"]
    q = np.asarray(row.samples_ms)[np.asarray(p["quiet"])]
    assert row.n_quiet == len(q) and row.median_quiet_ms == pytest.approx(float(np.median(q)))
    assert "rounds quiet" in (tmp_path / "bench.md").read_text()
    off = run_bench(tiny_model, tiny_input, options=BenchOptions(
        threads=1, repeats=2, warmup=0, peers=("torch_fp32",), isolation="none", settle_ms=0, host_probe_mb=0))
    assert "host_probe" not in off.meta and off.by_name()["torch_fp32"].median_quiet_ms is None


@pytest.mark.parametrize("field,value", [("host_probe_mb", -1), ("host_probe_mb", 2048), ("quiet_pct", 100),
                                         ("quiet_pct", -5)])
def test_bad_probe_options(field, value):
    with pytest.raises(ConfigError, match=field):
        BenchOptions(**{field: value})


def test_cli_options(capsys):
    from qcompile.bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--host-probe-mb" in out and "--quiet-pct" in out
