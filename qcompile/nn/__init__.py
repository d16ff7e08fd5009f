"""Modules of the supernet and of its lowering: elastic layers and blocks (`elastic`, `blocks`), the static
quantized layers a subnet slices into (`static`), zero-code padding (`padding`) and the folded layers the
lowering passes make on the way to the integer program (`folded`)."""
