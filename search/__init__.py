"""Search over subnet configs: cost models (`cost`), predictors and algorithms."""

# SpaceEvo: search the search space (issue 17)
from qcompile.search.space_evolution import (  # noqa: F401
    EvolutionSettings,
    MacLatencyModel,
    QTScorer,
    SpaceSearchResult,
    aging_evolution,
    evolve_space,
    latency_model,
    random_search_spaces,
)
