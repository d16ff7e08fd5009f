"""The ablation arms' epoch budgets follow the papers' splits (benchmarks/ablations.py)."""

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
