"""Search algorithms, one per module; each returns a `SearchResult` (ARCHITECTURE.md "Public API, second
part"), except `greedy_bits`, which returns one `SubnetConfig` (retraining-free Eq. 9)."""

from qcompile.search.algorithms.coarse_to_fine import CoarseToFineOptions, coarse_to_fine
from qcompile.search.algorithms.evolution import EvolutionOptions, evolution
from qcompile.search.algorithms.greedy_bits import GreedyOptions, greedy_bits
from qcompile.search.algorithms.nsga2 import NSGA2Options, nsga2
from qcompile.search.algorithms.random_search import random_search

__all__ = [
    "nsga2",
    "random_search",
    "evolution",
    "coarse_to_fine",
    "greedy_bits",
    "NSGA2Options",
    "EvolutionOptions",
    "CoarseToFineOptions",
    "GreedyOptions",
]
