"""Search over subnet configs: cost models (`cost`), objectives, algorithms and their `SearchResult`.

ARCHITECTURE.md "Public API, second part": `qs.nsga2`, `qs.random_search`, `qs.evolution`,
`qs.coarse_to_fine` take a space and `Objective`s and return a `SearchResult`.
"""

from qcompile.search import cost, objectives
from qcompile.search.algorithms import (
    CoarseToFineOptions,
    EvolutionOptions,
    NSGA2Options,
    coarse_to_fine,
    evolution,
    nsga2,
    random_search,
)
from qcompile.search.objectives import Objective
from qcompile.search.result import SearchResult

__all__ = [
    "cost",
    "objectives",
    "Objective",
    "SearchResult",
    "nsga2",
    "random_search",
    "evolution",
    "coarse_to_fine",
    "NSGA2Options",
    "EvolutionOptions",
    "CoarseToFineOptions",
]
