"""`benchmarks.mbv2_threads.table`: kernels ranked by time lost at 2 threads, calls x (t2 - t1/2), and the totals."""

from __future__ import annotations

from benchmarks.mbv2_threads import FORK_JOIN, table


def _run(net: float, kernels: dict[str, tuple[float, int]], fork_join: float) -> dict:
    ks = {n: {"min_us": t, "calls": c} for n, (t, c) in kernels.items()}
    ks[FORK_JOIN] = {"min_us": fork_join, "calls": 0}
    return {"net_min_us": net, "net_median_round_min_us": net + 10, "rounds_quiet": 5, "kernels": ks}


def test_table_ranks_by_calls_times_lost_time_and_sums():
    gemm, dw = "qc_gemm_vnni512_rq_64x14x14_384x1x1_s1", "qc_dw_rq_384x14x14_384x3x3_s1"
    t1 = _run(300.0, {gemm: (34.0, 4), dw: (43.0, 4)}, 0.04)
    t2 = _run(180.0, {gemm: (21.0, 4), dw: (21.6, 4)}, 1.5)
    lines = table(t1, t2).splitlines()
    # gemm: 4 x (21 - 17) = 16 us lost; depthwise: 4 x (21.6 - 21.5) = 0.4 us
    assert lines[2].startswith(f"| `{gemm}` | expand 1x1 (14 px) | 4 | 34.0 | 21.0 | 1.62 | 16.0 |")
    assert lines[3].startswith(f"| `{dw}` | depthwise 3x3 s1 (14 px in) | 4 | 43.0 | 21.6 | 1.99 | 0.4 |")
    # sums x calls: 308 and 170.4 us; the network minus them: -8 and 10 us; the empty region is not a kernel row
    assert lines[4] == "| **sum x calls** | | | 308 | 170 | 1.81 | 16 |"
    assert "network - kernel sum: -8 us at 1 thread, 10 us at 2" in lines[6]
    assert lines[7] == "empty parallel region (fork/join): 0.04 us at 1 thread, 1.50 us at 2"
    assert FORK_JOIN not in "\n".join(lines[:5])


def test_timing_args_give_requantize_triples_shifts_of_the_int32_tail():
    import numpy as np

    from benchmarks.mbv2_threads import timing_args
    from qcompile.backends.tvm.lowered import TIMING_SHIFT

    sig = [[[1, 8, 4, 4], "uint8"], [[8, 3, 3], "int8"], [[8], "int64"], [[8], "int32"], [[8], "int32"],
           [[1, 8, 4, 4], "uint8"]]
    args = timing_args(sig, np.random.default_rng(0))
    assert [a.shape for a in args] == [tuple(s) for s, _ in sig]
    assert (args[3] == 1 << 30).all() and (args[4] == TIMING_SHIFT).all() and TIMING_SHIFT >= 32
    assert args[0].min() >= 1 and args[0].max() <= 7  # everything else: `_random_arg`'s small integers
    other = [[[16], "int32"], [[16], "int32"]]
    assert all(a.min() >= 1 and a.max() <= 7 for a in timing_args(other, np.random.default_rng(0)))
