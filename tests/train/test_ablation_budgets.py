"""Ablation budgets follow the papers' splits; arm records merge and pair up (benchmarks/ablations.py)."""

import pytest

from benchmarks.ablations import oqa_split, qfa_split


@pytest.mark.parametrize(("total", "split"), [(190, (65, 125)), (4, (1, 3)), (8, (3, 5)), (2, (1, 1))])
def test_qfa_two_stage_split(total, split):
    # QFA Sec. 4 / Table 3: 65 epochs {2,3,4,32} + 125 epochs {2,3,4} = the single stage's 190
    assert qfa_split(total) == split and sum(split) == total


@pytest.mark.parametrize(("total", "split"), [(145, (25, 120)), (6, (1, 5)), (12, (2, 10)), (2, (1, 1))])
def test_oqa_inheritance_split(total, split):
    # OQA A.2: 25 epochs at 3 bits + 120 at 2 bits after the 4-bit supernet, against 150 epochs of QAT
    assert oqa_split(total) == split and sum(split) == total


def _result(largest, low, smallest, median, minimum):
    return {
        "largest": largest,
        "largest_3_2": low,
        "largest_bits": 4,
        "smallest_2bit": smallest,
        "median_random": median,
        "min_random": minimum,
        "random_bits": [2, 3, 4],
        "train_s": 1.0,
    }


def test_parallel_arm_records_merge_and_summary_pairs_them_per_seed(tmp_path):
    """Two processes' results land in one arms.json (none dropped); the summary subtracts the
    second arm from the first per seed and averages per budget."""
    import argparse

    from benchmarks.ablations import _record_arm, summary

    path = tmp_path / "arms.json"
    settings = "mobilenet_v3 w0.35 r32 float3 e{e} idm0.1 n10 seed{s}"
    a, b = "two-stage-qfa", "single-stage"
    _record_arm(path, f"{a} | {settings.format(e=2, s=0)}", _result(0.98, [0.97, 0.95], 0.90, 0.96, 0.94))
    _record_arm(path, f"{b} | {settings.format(e=2, s=0)}", _result(0.97, [0.98, 0.93], 0.91, 0.96, 0.95))
    _record_arm(path, f"{a} | {settings.format(e=2, s=1)}", _result(0.96, [0.96, 0.94], 0.92, 0.95, 0.93))
    _record_arm(path, f"{b} | {settings.format(e=2, s=1)}", _result(0.95, [0.96, 0.90], 0.90, 0.95, 0.92))
    _record_arm(path, f"{a} | {settings.format(e=4, s=0)}", _result(0.99, [0.99, 0.97], 0.95, 0.97, 0.96))
    text = summary(argparse.Namespace(out=str(tmp_path), ablation="two-stage"))
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in text.splitlines()}
    group = "mobilenet_v3 w0.35 r32 float3 e2 idm0.1 n10"
    assert "| +1.0 | -1.0 | +2.0 | -1.0 | +0.0 | -1.0 |" in rows[(group, "0")]
    assert "| +1.0 | +0.0 | +4.0 | +2.0 | +0.0 | +1.0 |" in rows[(group, "1")]
    assert "**+1.0** | **-0.5** | **+3.0** | **+0.5** | **+0.0** | **+0.0**" in rows[(group, "**mean**")]
    assert "| 2/2 | 0/2 | 2/2 | 1/2 | 0/2 | 1/2 |" in rows[(group, "ahead")]
    assert not any("e4" in k[0] for k in rows if k)  # e = 4 has one arm only: nothing to pair


def test_mean_ci_is_the_student_t_interval():
    from benchmarks.ablations import _mean_ci

    # mean 2, sample sd 1 (deviations +-sqrt(1.5), 0, 0), n = 4: half width t(0.975, 3) / 2 = 3.1824 / 2
    sd1 = (2 - 1.5**0.5, 2 + 1.5**0.5, 2.0, 2.0)
    assert _mean_ci(sd1) == "+0.4 .. +3.6"
    assert _mean_ci((1.0,)) == "-" and _mean_ci((1.0, None)) == "-"
