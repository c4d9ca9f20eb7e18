"""Calibration: measure a machine into a profile of simulator parameters.

`belusim calibrate probe` runs a native C probe (memory paths of the CPU: streaming stores,
cache-line flushes, load-to-use latency, multi-thread bandwidth, a shared-slot RPC) on host
memory, a file or a device-DAX window, and GPU probes (host<->GPU copies, fragmented KV-block
copies, one transformer layer's compute), then fits the results into dotted override paths of
the scenario configuration (see docs/calibration.md).
"""

from belusim.calibration.errors import CalibrationError

__all__ = ["CalibrationError"]
