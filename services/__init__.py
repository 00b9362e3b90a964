"""fedad: federated anomaly detection on IoT edge devices."""

import os

# onnxruntime's Linux wheels ship 1DS usage telemetry that uploads events off the machine; edge sites and this
# project send nothing anywhere but to their own aggregator. Set before onnxruntime is first imported.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
