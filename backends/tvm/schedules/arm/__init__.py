"""aarch64 kernels (NEON, Armv8.2 dotprod, Armv8.6 i8mm): `strategy` registers them, `gemm` and `depthwise` build
them, `tune` times the GEMM's tiles on the device through TVM RPC. Importing this package registers the strategies."""

from qcompile.backends.tvm.schedules.arm.depthwise import depthwise_conv_arm, pack_depthwise_weights
from qcompile.backends.tvm.schedules.arm.gemm import (
    ARM_MODES,
    CODE_OFFSET,
    ArmGemmKnobs,
    arm_mode,
    fold_code_offset,
    gemm_conv_arm,
)
from qcompile.backends.tvm.schedules.arm.strategy import ArmConv, ArmConvRequant, is_arm

__all__ = [
    "ARM_MODES",
    "CODE_OFFSET",
    "ArmConv",
    "ArmConvRequant",
    "ArmGemmKnobs",
    "arm_mode",
    "depthwise_conv_arm",
    "fold_code_offset",
    "gemm_conv_arm",
    "is_arm",
    "pack_depthwise_weights",
]
