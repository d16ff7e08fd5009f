"""Cost models of subnets: MACs, BitOPs (QFA section 5), parameters and model size in bits."""

from qcompile.search.cost.bitops import CostReport, bitops, cost_report, layer_costs, model_bits
from qcompile.search.cost.layers import LayerDesc, count_macs, count_params, layers

__all__ = ["CostReport", "LayerDesc", "bitops", "cost_report", "count_macs", "count_params", "layer_costs", "layers",
           "model_bits"]
