"""qcompile: quantized-for-all supernets compiled to real integer kernels.

```python
import qcompile as qc
space = qc.spaces.mobilenet_v3(num_classes=10)
net = space.build_supernet()
qnet = qc.quantize(qc.trace(net), weight_bits=(2, 3, 4, 8), act_bits=(2, 3, 4, 8))
sub = qc.extract(qnet, space.sample(seed=0, bits=(2, 3, 4)))
```
"""

from qcompile import spaces
from qcompile.api import (
    calibrate,
    export_onnx,
    extract,
    layer_info,
    layer_names,
    load,
    lower,
    quantize,
    quantize_model,
    set_active,
    to_integer,
    trace,
)
from qcompile.config import QuantPolicy, SubnetConfig
from qcompile.errors import CheckpointError, ConfigError, LoweringError, PassError, QcompileError

__version__ = "0.1.0"

__all__ = [
    "spaces",
    "SubnetConfig",
    "QuantPolicy",
    "ConfigError",
    "LoweringError",
    "CheckpointError",
    "PassError",
    "QcompileError",
    "trace",
    "set_active",
    "quantize",
    "extract",
    "calibrate",
    "to_integer",
    "lower",
    "load",
    "export_onnx",
    "quantize_model",
    "layer_names",
    "layer_info",
]
