"""Tensor intrinsics registered by qcompile (x86 AVX2 / VNNI; ARM uses TVM's sdot / NEON ones)."""
