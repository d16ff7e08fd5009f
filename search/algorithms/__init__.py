"""Search algorithms over subnet configs."""

from qcompile.search.algorithms.greedy_bits import GreedyOptions, greedy_bits

__all__ = ["GreedyOptions", "greedy_bits"]
