"""Shared math of the integer lowering passes (passes/fold_bn, fold_batchquant_bias, to_integer).

`fixed_point` (re-exports `qcompile.quant.fixed_point`: multiplier / shift / offset selection),
`elementwise` (activation clamps and lookup tables), `modules` (intermediate folded layers),
`patterns` (fx node recognition), `compare` (code-level comparison of a fake-quant subnet with its
IntegerGraph).
"""
