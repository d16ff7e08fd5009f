"""Search over subnet configs: cost models (`cost`), predictors and algorithms."""
