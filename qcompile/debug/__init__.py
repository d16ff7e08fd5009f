"""Debugging helpers: code-level comparison of a fake-quant subnet with its IntegerGraph (`compare`)."""
