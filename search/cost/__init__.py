"""Cost models of subnets: MACs, BitOPs (QFA section 5), parameters and model size in bits."""

from qcompile.search.cost.bitops import CostReport, bitops, cost_report, model_bits

__all__ = ["CostReport", "bitops", "cost_report", "model_bits"]
